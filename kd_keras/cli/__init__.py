"""The `kd-keras` command line: parse, check, then dispatch to one subcommand.

Every subcommand is two modules (`SUBCOMMANDS`): its parser module, free of
TensorFlow, with `add_arguments(parser)` and optionally `check(args)` (cheap
checks of its inputs: settings, files that must exist), and its run module,
with `run(args)`. The recipe commands (`distill`, `distill-classifier`,
`distill-lm`) take their flags from the recipe package's `Config` and `HELP`
(`kd_keras.recipes.config`), check the settings (`Config.validate`) and run
the recipe's `job`. A subcommand's parser module is imported only when that
subcommand is named (or its `--help` is asked for); its run module, where
TensorFlow loads, only once the checks have passed (the dispatch's one
deferred import, just after `quiet_tensorflow`). So `kd-keras --help` returns
at once, and a bad flag or a missing file is reported before TensorFlow starts.

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
import re
import sys
import tempfile

from kd_keras import __version__
from kd_keras.data import DataError
from kd_keras.recipes.config import ConfigError, add_config_arguments, config_from_args
from kd_keras.storage import CacheError

__all__ = ["SUBCOMMANDS", "build_parser", "main", "quiet_tensorflow"]

# name -> (parser module, run module, one-line help). A parser module under
# `kd_keras.recipes` is a recipe package: its `Config` gives the flags.
SUBCOMMANDS = {
    "distill": (
        "kd_keras.recipes.sentence_pairs",
        "kd_keras.recipes.sentence_pairs.job",
        "Distill a sentence-similarity teacher into a fast student (the main job).",
    ),
    "distill-classifier": (
        "kd_keras.recipes.classification",
        "kd_keras.recipes.classification.job",
        "Distill a fine-tuned text classifier into a BiLSTM: your labeled files or SST-2.",
    ),
    "distill-lm": (
        "kd_keras.recipes.causal_lm",
        "kd_keras.recipes.causal_lm.job",
        "Distill a causal LM token by token (forward, reverse and skewed KL).",
    ),
    "label": (
        "kd_keras.cli.label",
        "kd_keras.cli.label_run",
        "Label a corpus with a teacher: sharded, resumable.",
    ),
    "embed": (
        "kd_keras.cli.embed",
        "kd_keras.cli.embed_run",
        "Write sentence embeddings of a text file to .npy.",
    ),
    "evaluate": (
        "kd_keras.cli.evaluate",
        "kd_keras.cli.evaluate_run",
        "Measure a student's fidelity to its teacher on unlabeled sentence files.",
    ),
    "export": (
        "kd_keras.cli.export",
        "kd_keras.cli.export_run",
        "Export a student or a teacher as a raw-text SavedModel.",
    ),
}
VERBOSE_ENV = "KD_KERAS_VERBOSE"
# Errors reported as one line with exit 2 (the whole traceback with --verbose).
ERROR_TYPES = (DataError, ConfigError, CacheError, ValueError, TypeError, OSError, ImportError)
_TENSORFLOW_NOISE = re.compile(
    r"^([IWE]\d{4} \d\d:\d\d:\d\d|WARNING: All log messages before absl|To enable the "
    r"following instructions)"
)


class _Command:
    """A subcommand: flags and checks from its parser module, `run` from its run module.

    The parser module is imported here, the run module only by `run`.
    """

    def __init__(self, name):
        parser_module, self.run_module, _ = SUBCOMMANDS[name]
        self.module = importlib.import_module(parser_module)
        self.is_recipe = parser_module.startswith("kd_keras.recipes.")
        self.config = None  # a recipe's settings, once checked

    def add_arguments(self, parser):
        m = self.module
        if self.is_recipe:
            add_config_arguments(parser, m.Config, m.HELP, getattr(m, "CHOICES", None))
        else:
            m.add_arguments(parser)

    def check(self, args):
        """The subcommand's checks, before TensorFlow loads (a recipe's: its settings)."""
        if self.is_recipe:
            self.config = config_from_args(self.module.Config, args)
            self.config.validate()
            # Its files, globs and folders, before any of them is written to.
            preflight = getattr(self.module, "preflight", None)
            if preflight is not None:
                self.config = preflight(self.config)
        elif hasattr(self.module, "check"):
            self.module.check(args)

    def run(self, args):
        """Imports the run module (TensorFlow with it) and runs the subcommand."""
        if self.is_recipe and self.config is None:
            self.check(args)
        run_module = importlib.import_module(self.run_module)
        if self.is_recipe:
            run_module.run(self.config)
            return 0
        return run_module.run(args)


def _subcommand(name):
    return _Command(name)


def build_parser(argv=None):
    """The parser; only the subcommand named in `argv` (if any) adds its flags."""
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
    for name, (_, _, help_text) in SUBCOMMANDS.items():
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
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if "tensorflow" in sys.modules:
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as captured:
        os.dup2(captured.fileno(), 2)
        try:
            # The point of this function: TensorFlow loads here, after the setting
            # and with standard error captured.
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
                if not _TENSORFLOW_NOISE.match(line)
            ]
            sys.stderr.write("".join(kept))


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
        command.check(args)  # before TensorFlow loads
        if not verbose:
            quiet_tensorflow()
        return command.run(args) or 0
    except KeyboardInterrupt:
        hint = ""
        if args.command == "distill":
            hint = "; run the same command with --output-dir of this run to resume"
        print(f"kd-keras {args.command}: interrupted{hint}", file=sys.stderr)
        return 130
    except ERROR_TYPES as e:
        if verbose:  # the whole traceback, for a bug report
            raise
        print(f"kd-keras {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
