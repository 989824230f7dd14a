"""The built wheel: `kd_keras` is its only top-level package, and it runs outside a checkout."""

import pathlib
import subprocess
import sys
import zipfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_installs_kd_keras_alone_and_finds_no_checkout_data(tmp_path):
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = tmp_path.glob("kd_keras-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {
        "kd_keras",
        wheel.name.split("-py3")[0] + ".dist-info",
    }
    assert "kd_keras/models/heads.py" in names and "kd_keras/recipes/sentence_pairs/job.py" in names

    site = tmp_path / "site"
    installed = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "-q",
            "--target",
            str(site),
            str(wheel),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert installed.returncode == 0, installed.stderr
    assert not (site / "models").exists()
    code = (
        "import kd_keras, kd_keras.models.heads as heads, kd_keras.data as data\n"
        "print(kd_keras.__file__)\n"
        "print(heads.__file__)\n"
        "try:\n"
        "    data.data_dir()\n"
        "except data.DataError as e:\n"
        "    print('error:', e)\n"
    )
    env = {"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin", "KERAS_BACKEND": "tensorflow"}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env
    )
    assert done.returncode == 0, done.stderr
    package, heads, error = done.stdout.splitlines()
    assert package.startswith(str(site)) and heads.startswith(str(site / "kd_keras" / "models"))
    assert "--data-dir" in error and "KD_KERAS_DATA" in error
