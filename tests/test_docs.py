"""The documentation cannot drift from the code.

- Every Python block of the site (`docs/`) is an include of a file under
  `examples/` (`--8<-- "examples/FILE.py:SECTION"`), and every included file
  is run by a test: here, or the test named in `RUN_ELSEWHERE`.
- The README's library example is the same text as the one the site
  includes, and the README stays short (at most 200 lines).
- The command-line page is generated from the parsers (`docs/hooks/site.py`);
  its markers name real subcommands.

`mkdocs build --strict` (in `.ci/run`) checks the links, the anchors and the
API reference.
"""

import pathlib
import re
import runpy
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from kd_keras import serving
from kd_keras.cli import SUBCOMMANDS
from kd_keras.models.bert_tokenizer import BertPreprocessor, load_vocabulary
from kd_keras.models.bilstm import build_siamese_bilstm
from kd_keras.models.teachers import default_model_dir

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(p for p in DOCS.rglob("*.md") if "_raw" not in p.parts)
FENCE = re.compile(r"^( *)```python\n(.*?)^\1```", re.MULTILINE | re.DOTALL)
INCLUDE = re.compile(r'^--8<-- "([^":]+)(?::([a-z_]+))?"$')
# Included files run by tests elsewhere.
RUN_ELSEWHERE = {"examples/gru_student.py": "tests/recipes/test_own_student.py"}
# Included files run by this module's tests.
RUN_HERE = {
    "examples/library_distiller.py",
    "examples/from_keras_distillation.py",
    "examples/serve_export.py",
}


def _includes():
    """`[(page, file, section or None)]` of every Python block of the site."""
    found = []
    for page in PAGES:
        for indent, body in FENCE.findall(page.read_text(encoding="utf-8")):
            for line in body.splitlines():
                line = line[len(indent) :].strip()
                match = INCLUDE.match(line)
                assert match, f"{page.relative_to(ROOT)}: inline Python in the docs: {line!r}"
                found.append((page, match.group(1), match.group(2)))
    return found


def _section(path, name):
    text = (ROOT / path).read_text(encoding="utf-8")
    start, end = f"# --8<-- [start:{name}]\n", f"# --8<-- [end:{name}]"
    assert start in text and end in text, f"{path} has no section {name!r}"
    return text.split(start, 1)[1].split(end, 1)[0]


def test_every_python_block_is_an_example_file_that_a_test_runs():
    includes = _includes()
    assert len(includes) >= 5
    for page, path, section in includes:
        assert (ROOT / path).is_file(), f"{page.relative_to(ROOT)} includes a missing {path}"
        if section:
            assert _section(path, section).strip()
        assert path in RUN_HERE or path in RUN_ELSEWHERE, f"{path} is run by no test"
    for path, test in RUN_ELSEWHERE.items():
        assert path.split("/")[-1] in (ROOT / test).read_text(encoding="utf-8")


def test_the_readme_is_short_and_shows_the_sites_library_example():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 200
    assert readme.startswith("# kd-keras\n\n```bash\n./setup.sh ")
    assert ".venv/bin/python -m pytest" in readme.split("```")[1]
    (block,) = re.findall(r"^```python\n(.*?)^```", readme, re.MULTILINE | re.DOTALL)
    assert block == _section("examples/library_distiller.py", "example")
    assert not re.search(r"\bissue\b", readme, re.IGNORECASE)
    for link in re.findall(r"\]\((docs/[^)#]+)", readme):
        assert (ROOT / link).is_file(), f"README links to a missing {link}"


def test_the_command_line_page_names_every_subcommand():
    page = (DOCS / "cli.md").read_text(encoding="utf-8")
    named = re.findall(r"^<!-- kd-keras-help ?([a-z-]*) -->$", page, re.MULTILINE)
    assert sorted(n for n in named if n) == sorted(SUBCOMMANDS)
    assert "" in named


def test_library_example_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runpy.run_path(str(ROOT / "examples" / "library_distiller.py"), run_name="__main__")
    student = keras.models.load_model(tmp_path / "student.keras")
    assert student.output_shape == (None, 10)


def test_from_keras_distillation_example_runs(capsys):
    runpy.run_path(str(ROOT / "examples" / "from_keras_distillation.py"), run_name="__main__")
    printed = capsys.readouterr().out
    theirs, ours = (
        float(re.search(rf"{name}: .*'student_loss': ([0-9.]+)", printed).group(1))
        for name in ("keras.distillation", "kd_keras")
    )
    # The same job from the same start: nearly the same student after one epoch.
    assert ours == pytest.approx(theirs, rel=0.01)


def test_serve_export_example_serves_an_export(tmp_path):
    keras.utils.set_random_seed(0)
    preprocessor = BertPreprocessor(
        load_vocabulary(default_model_dir() / "vocab.txt"), sequence_length=24
    )
    student = build_siamese_bilstm(len(preprocessor.vocabulary), embedding_dim=8, hidden_dim=8)
    export = serving.export_student(student, tmp_path / "student", preprocessor).path
    script = ROOT / "examples" / "serve_export.py"
    done = subprocess.run(
        [sys.executable, str(script), str(export)], capture_output=True, text=True, check=True
    )
    score, width = re.search(r"similarity (-?[0-9.]+), embedding width (\d+)", done.stdout).groups()
    # What the export itself answers, loaded here.
    model = serving.load_text_export(export)
    want = model.signatures["similarity"](
        sentence_a=tf.constant(["A man is playing a guitar."]),
        sentence_b=tf.constant(["Someone plays the guitar."]),
    )["score"]
    embedding = model.signatures["embed"](sentences=tf.constant(["x"]))["embedding"]
    assert int(width) == embedding.shape[-1] == 16
    np.testing.assert_allclose(float(score), float(want[0]), atol=1e-4)
