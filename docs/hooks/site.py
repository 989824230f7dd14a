"""MkDocs hooks of the site (mkdocs.yml `hooks:`).

- The command-line page is the parsers' own `--help`, one source for both: a page line
  `<!-- kd-keras-help COMMAND -->` becomes the text `kd-keras COMMAND --help` prints
  (`<!-- kd-keras-help -->` for `kd-keras --help`), at a fixed width of 100 columns. The
  parsers import no TensorFlow, so building the site stays quick.
- The stored benchmark plots (`benchmarks/results/*.png`) are served as
  `assets/results/NAME`: the pages show the very files the benchmark scripts write.
"""

import os
import pathlib
import re

from mkdocs.structure.files import File

from kd_keras.cli import build_parser

MARKER = re.compile(r"^<!-- kd-keras-help ?([a-z-]*) -->$", re.MULTILINE)
ROOT = pathlib.Path(__file__).resolve().parents[2]


def help_text(command=""):
    """What `kd-keras [COMMAND] --help` prints, at 100 columns."""
    previous = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100"
    try:
        parser = build_parser([command] if command else [])
        if command:
            (subparsers,) = [a for a in parser._actions if a.dest == "command"]
            parser = subparsers.choices[command]
        return parser.format_help()
    finally:
        if previous is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = previous


def on_page_markdown(markdown, page, **kwargs):
    def block(match):
        return f"```text\n{help_text(match.group(1)).rstrip()}\n```"

    return MARKER.sub(block, markdown)


def on_files(files, config, **kwargs):
    for png in sorted((ROOT / "benchmarks" / "results").glob("*.png")):
        files.append(File.generated(config, f"assets/results/{png.name}", abs_src_path=str(png)))
    return files
