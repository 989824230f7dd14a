"""The `kd-keras` command line: parse, then dispatch to one subcommand.

Every subcommand follows one pattern: `add_arguments(parser)` and
`run(args)`, and optionally `check(args)`: cheap checks of its inputs (files
that must exist), run before TensorFlow is imported. The recipe commands
(`distill`, `distill-classifier`, `distill-lm`) build their flags from the
recipe's `Config` and `HELP` (`kd_keras.recipes.config`); `embed`,
`evaluate` and `export` are modules of this package. A subcommand's module
is imported only when that subcommand runs (or its `--help` is asked for),
and TensorFlow only inside `run`, so `kd-keras --help` returns at once.

Exit codes, the same for every subcommand: 0 done; 2 a usage error or a bad
input (a missing or malformed file, a bad setting), reported as one line
`kd-keras COMMAND: error: ...`; 130 interrupted (Ctrl-C).

Quiet by default: TensorFlow's C++ log lines and CUDA probe errors are held
back (`TF_CPP_MIN_LOG_LEVEL=3`, set before TensorFlow is imported, and its
start-up lines filtered); `--verbose` or `KD_KERAS_VERBOSE=1` brings them
back, and shows the whole traceback of an error.
"""

import argparse
import importlib
import os
import sys

__all__ = ["SUBCOMMANDS", "build_parser", "main"]

# name -> (module, one-line help). Modules under `kd_keras.recipes` are recipes.
SUBCOMMANDS = {
    "distill": (
        "kd_keras.recipes.sentence_pairs",
        "Distill a sentence-similarity teacher into a fast student (the main job).",
    ),
    "distill-classifier": (
        "kd_keras.recipes.classification",
        "Distill a fine-tuned text classifier into a BiLSTM: your labeled files or SST-2.",
    ),
    "distill-lm": (
        "kd_keras.recipes.causal_lm",
        "Distill a causal LM token by token (forward, reverse and skewed KL).",
    ),
    "label": ("kd_keras.cli.label", "Label a corpus with a teacher: sharded, resumable."),
    "embed": ("kd_keras.cli.embed", "Write sentence embeddings of a text file to .npy."),
    "evaluate": (
        "kd_keras.cli.evaluate",
        "Measure a student's fidelity to its teacher on unlabeled sentence files.",
    ),
    "export": ("kd_keras.cli.export", "Export a student or a teacher as a raw-text SavedModel."),
}
VERBOSE_ENV = "KD_KERAS_VERBOSE"


class _Recipe:
    """A recipe module seen as a subcommand: flags from its `Config`, `run(config)`."""

    def __init__(self, module):
        self.module = module

    def add_arguments(self, parser):
        from kd_keras.recipes.config import add_config_arguments

        m = self.module
        add_config_arguments(parser, m.Config, m.HELP, getattr(m, "CHOICES", None))

    def run(self, args):
        from kd_keras.recipes.config import config_from_args

        config = config_from_args(self.module.Config, args)
        config.validate()
        self.module.run(config)


def _subcommand(name):
    module = importlib.import_module(SUBCOMMANDS[name][0])
    return _Recipe(module) if module.__name__.startswith("kd_keras.recipes.") else module


def build_parser(argv=None):
    """The parser; only the subcommand named in `argv` (if any) adds its flags."""
    from kd_keras import __version__

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--verbose",
        action="store_true",
        help=f"show TensorFlow's own log lines (also {VERBOSE_ENV}=1)",
    )
    parser = argparse.ArgumentParser(
        prog="kd-keras",
        description="Knowledge distillation for Keras: teachers, students, export.",
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"kd-keras {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    chosen = next((a for a in (argv or []) if a in SUBCOMMANDS), None)
    for name, (_, help_text) in SUBCOMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text, parents=[common])
        if name == chosen:
            _subcommand(name).add_arguments(sub_parser)
    return parser


def quiet_tensorflow():
    """Imports TensorFlow with its C++ start-up log lines held back.

    Sets `TF_CPP_MIN_LOG_LEVEL=3` (unless already set), which silences its
    later C++ logging, and imports TensorFlow with the standard-error file
    descriptor sent to a temporary file: the lines TensorFlow's C++ code
    writes there before its logging reads that setting (oneDNN, CUDA probe)
    are dropped, anything else is written back.
    """
    import re
    import tempfile

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if "tensorflow" in sys.modules:
        return
    noise = re.compile(
        r"^([IWE]\d{4} \d\d:\d\d:\d\d|WARNING: All log messages before absl|To enable the "
        r"following instructions)"
    )
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow as tf

            tf.get_logger().setLevel("ERROR")
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [
                line
                for line in captured.read().decode("utf-8", "replace").splitlines(keepends=True)
                if not noise.match(line)
            ]
            sys.stderr.write("".join(kept))


def _error_types():
    from kd_keras.data import DataError
    from kd_keras.recipes.config import ConfigError
    from kd_keras.storage import CacheError

    return (DataError, ConfigError, CacheError, ValueError, TypeError, OSError, ImportError)


def main(argv=None):
    """Runs `kd-keras ARGV`; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
    args, extra = parser.parse_known_args(argv)
    if extra:  # only for a subcommand that takes them (`label`: Beam pipeline options)
        if not hasattr(args, "extra_args"):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        if "--" in extra:
            extra.remove("--")
        args.extra_args = extra
    if args.command is None:
        parser.print_help()
        return 0
    verbose = args.verbose or os.environ.get(VERBOSE_ENV, "") not in ("", "0")
    command = _subcommand(args.command)
    try:
        if hasattr(command, "check"):  # before TensorFlow loads
            command.check(args)
        if not verbose:
            quiet_tensorflow()
        return command.run(args) or 0
    except KeyboardInterrupt:
        hint = ""
        if args.command == "distill":
            hint = "; run the same command with --output-dir of this run to resume"
        print(f"kd-keras {args.command}: interrupted{hint}", file=sys.stderr)
        return 130
    except _error_types() as e:
        if verbose:  # the whole traceback, for a bug report
            raise
        print(f"kd-keras {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
