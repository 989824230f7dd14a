"""The `kd-keras` command line: one subcommand per module.

Each subcommand module defines `add_arguments(parser)` and `main(args) -> int`
and is imported only when its subcommand runs, so `kd-keras --help` stays fast.
"""

import argparse
import importlib
import sys

# name -> (module, one-line help)
SUBCOMMANDS = {
    "distill": ("kd_keras.distill", "Distill a sentence-similarity teacher into a fast student."),
    "embed": ("kd_keras.embed", "Write sentence embeddings of a text file to .npy with a teacher."),
    "export": ("kd_keras.export_cli", "Export a student or a teacher as a raw-text SavedModel."),
}


def build_parser():
    from kd_keras import __version__

    parser = argparse.ArgumentParser(
        prog="kd-keras",
        description="Knowledge distillation for Keras: teachers, students, export.",
    )
    parser.add_argument("--version", action="version", version=f"kd-keras {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in SUBCOMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        sub_parser.set_defaults(_module=module)
        importlib.import_module(module).add_arguments(sub_parser)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    module = importlib.import_module(args._module)
    try:
        return module.main(args) or 0
    except KeyboardInterrupt:
        print("kd-keras: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
