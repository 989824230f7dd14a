"""The console script and the quickstart example."""

import importlib.util
import os
import subprocess
import sys

import numpy as np

import kd_keras

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
