"""benchmarks/students.py: its table and plot from given rows, and its argument checks."""

import importlib.util
import pathlib

import pytest

SCRIPT = pathlib.Path(__file__).resolve().parents[2] / "benchmarks" / "students.py"


@pytest.fixture(scope="module")
def students():
    spec = importlib.util.spec_from_file_location("students_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ROWS = [
    dict(
        model="teacher",
        test_spearman=82.0,
        dev_spearman=86.7,
        sentences_per_second=220.0,
        p50_ms=9.5,
        size_mib=89.6,
        speedup=1.0,
    ),
    dict(
        model="static",
        test_spearman=74.1,
        dev_spearman=80.2,
        sentences_per_second=40000.0,
        p50_ms=0.4,
        size_mib=30.1,
        speedup=181.8,
    ),
]


def test_table_and_plot(students, tmp_path, capsys):
    students.print_table(ROWS)
    out = capsys.readouterr().out
    assert "static" in out and "181.8" in out and "74.10" in out
    students.plot(ROWS, tmp_path / "frontier.png")
    assert (tmp_path / "frontier.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_model_that_is_not_a_saved_model_is_refused(students, tmp_path):
    with pytest.raises(SystemExit, match="expected NAME=FOLDER"):
        students.main(["--model", f"teacher={tmp_path}"])
    with pytest.raises(SystemExit, match="expected NAME=FOLDER"):
        students.main(["--model", "no-equals-sign"])
