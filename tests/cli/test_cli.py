"""The console script: one pattern for every subcommand, quiet, fast help; the quickstart."""

import importlib.util
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import kd_keras
from kd_keras import cli

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _python(code, **env):
    environment = {k: v for k, v in os.environ.items() if not k.startswith("TF_CPP")}
    environment.update(env)
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=environment
    )


@pytest.mark.parametrize("argv", [["--help"], *([name, "--help"] for name in cli.SUBCOMMANDS)])
def test_help_never_imports_tensorflow(argv):
    done = _python(
        "import sys\n"
        "from kd_keras.cli import main\n"
        "try:\n"
        f"    main({argv!r})\n"
        "except SystemExit as e:\n"
        "    assert e.code == 0, e.code\n"
        "heavy = [m for m in ('tensorflow', 'keras', 'keras_hub') if m in sys.modules]\n"
        "print('imported:', heavy)\n"
    )
    assert done.returncode == 0, done.stderr
    assert "imported: []" in done.stdout
    assert "usage: kd-keras" in done.stdout
    assert done.stderr == ""


def test_errors_are_one_line_with_exit_2_and_no_tensorflow_log_lines(tmp_path):
    # `export --teacher` imports TensorFlow (and Keras) before it fails on the path.
    argv = ["export", "--teacher", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]
    done = _python(f"import sys\nfrom kd_keras.cli import main\nsys.exit(main({argv!r}))")
    assert done.returncode == 2, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("kd-keras export: error: Teacher not found")
    # --verbose brings TensorFlow's own lines back.
    loud = _python(
        f"import sys\nfrom kd_keras.cli import main\nsys.exit(main({argv!r} + ['--verbose']))"
    )
    assert loud.returncode == 1  # the error's whole traceback, for a bug report
    assert "Traceback (most recent call last)" in loud.stderr
    assert "Teacher not found" in loud.stderr.splitlines()[-1]
    assert re.search(r"^[IWE]\d{4} ", loud.stderr, re.M)  # TensorFlow's own log lines


def test_every_subcommand_follows_one_pattern():
    for name, (_, run_module, _) in cli.SUBCOMMANDS.items():
        command = cli._subcommand(name)
        assert callable(command.add_arguments) and callable(command.run), name
        assert callable(command.check), name
        assert callable(importlib.import_module(run_module).run), name


# What the parser and the checks import: never TensorFlow (`kd-keras --help`, and the
# checks before it loads). A recipe package's config is its own module.
TENSORFLOW_FREE = [
    "kd_keras.cli",
    *sorted({parser for parser, _, _ in cli.SUBCOMMANDS.values()}),
    "kd_keras.recipes.causal_lm.config",
    "kd_keras.recipes.classification.config",
    "kd_keras.recipes.config",
    "kd_keras.recipes.sentence_pairs.config",
    "kd_keras.correlation",
    "kd_keras.data",
    "kd_keras.fidelity",
    "kd_keras.label_shards",
    "kd_keras.models.packaged",
    "kd_keras.progress",
    "kd_keras.reference",
    "kd_keras.storage",
    "kd_keras.transfer",
]


def test_the_parser_modules_and_what_they_import_stay_free_of_tensorflow():
    done = _python(
        "import importlib, sys\n"
        f"for name in {TENSORFLOW_FREE!r}:\n"
        "    importlib.import_module(name)\n"
        "    heavy = [m for m in ('tensorflow', 'keras', 'keras_hub') if m in sys.modules]\n"
        "    assert not heavy, (name, heavy)\n"
        "print('ok')\n"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "ok\n"


def test_bad_inputs_are_one_line_errors_before_tensorflow_loads(tmp_path):
    text = tmp_path / "sentences.txt"
    text.write_text("a sentence\n", encoding="utf-8")
    missing, out = str(tmp_path / "missing.txt"), str(tmp_path / "out")
    no_score = tmp_path / "no_score.csv"
    no_score.write_text("sentence1,sentence2\na,b\n", encoding="utf-8")
    (tmp_path / "a_file").write_text("", encoding="utf-8")
    finished = tmp_path / "finished"
    finished.mkdir()
    (finished / "metrics.json").write_text("{}", encoding="utf-8")
    cases = [
        (["label", "--input", missing, "--output", out], "no such file"),
        (["label", "--input", str(text), "--output", out, "--shard-size", "0"], "--shard-size"),
        (["label", "--input", str(text), "--output", out, "--bogus"], "need --runner beam"),
        (["embed", "--input", missing, "--output", out + ".npy"], "missing.txt"),
        (["embed", "--input", str(text), "--output", out + "/x.npy"], "does not exist"),
        (["export", "--teacher", "default", "--cased", "--out", out], "only apply to --student"),
        (["export", "--student", "s.keras", "--cased", "--out", out], "only applies with"),
        (["distill", "--epochs", "0"], "--epochs must be at least 1"),
        (["distill", "--train", missing], "missing.txt: no such file"),
        (["distill", "--unlabeled", str(tmp_path / "none-*.txt.gz")], "no file matches"),
        (["distill", "--fidelity", str(tmp_path / "none-*.txt")], "no file matches"),
        (["distill", "--dev", str(no_score)], "no_score.csv:1: missing column 'score'"),
        (["distill", "--labels", str(tmp_path)], "holds no labels"),
        (["distill", "--teacher", str(tmp_path / "bert")], "no such file or folder"),
        (["distill", "--output-dir", str(tmp_path / "a_file" / "run")], "a_file is a file"),
        (["distill", "--cache-dir", str(tmp_path / "a_file")], "exists and is not a folder"),
        (["distill", "--output-dir", str(finished)], "holds a finished run"),
        (["distill-classifier", "--train", missing, "--dev", missing], "missing.txt"),
        (["distill-classifier", "--run-dir", str(tmp_path / "a_file" / "r")], "a_file is a file"),
        (["distill-classifier", "--config", missing], "no such config file"),
        (["distill-lm", "--config", missing], "no such config file"),
    ]
    done = _python(
        "import contextlib, io, json, os, sys\n"
        "from kd_keras.cli import main\n"
        f"os.chdir({str(tmp_path)!r})\n"
        f"for argv, _ in {cases!r}:\n"
        "    err = io.StringIO()\n"
        "    with contextlib.redirect_stderr(err):\n"
        "        code = main(argv)\n"
        "    print(json.dumps([code, 'tensorflow' in sys.modules, err.getvalue()]))\n"
    )
    assert done.returncode == 0, done.stderr
    for (argv, message), line in zip(cases, done.stdout.splitlines(), strict=True):
        code, tensorflow, err = json.loads(line)
        assert (code, tensorflow) == (2, False), (argv, line)
        assert err.startswith(f"kd-keras {argv[0]}: error: ") and err.count("\n") == 1, err
        assert message in err, (argv, err)
    # A run that fails its checks leaves no run folder, nor any other file.
    assert not (tmp_path / "runs").exists() and not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "a_file",
        "finished",
        "no_score.csv",
        "sentences.txt",
    ]
    assert [p.name for p in finished.iterdir()] == ["metrics.json"]


def test_the_export_flag_takes_the_quantize_modes():
    from kd_keras.cli import export
    from kd_keras.quantize import QUANTIZE_MODES

    assert export.QUANTIZE_CHOICES == QUANTIZE_MODES


def test_console_script_reports_version():
    out = subprocess.run(
        [sys.executable, "-m", "kd_keras", "--version"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"kd-keras {kd_keras.__version__}"


def test_quickstart_trains_and_reports_fit_metrics(capsys):
    spec = importlib.util.spec_from_file_location(
        "quickstart", os.path.join(ROOT, "examples", "quickstart.py")
    )
    quickstart = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(quickstart)
    history = quickstart.main(["--pairs", "96", "--epochs", "2", "--batch-size", "32"])
    logs = history.history
    for key in ("loss", "student_loss", "distillation_loss", "pearson", "val_loss"):
        assert key in logs and len(logs[key]) == 2 and all(np.isfinite(logs[key]))
    # The total is the alpha mix of the two terms (alpha=0.5, no regularizers),
    # up to the averaging over batches.
    np.testing.assert_allclose(
        logs["val_loss"],
        0.5 * np.add(logs["val_student_loss"], logs["val_distillation_loss"]),
        rtol=1e-4,
    )
    printed = capsys.readouterr().out
    assert "metrics reported by fit()" in printed and "distillation_loss" in printed
