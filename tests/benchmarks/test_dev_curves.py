"""benchmarks/dev_curves.py: curves from finished and unfinished runs, best points, outputs."""

import importlib.util
import json
import pathlib

import pytest

SCRIPT = pathlib.Path(__file__).resolve().parents[2] / "benchmarks" / "dev_curves.py"


@pytest.fixture(scope="module")
def dev_curves():
    spec = importlib.util.spec_from_file_location("dev_curves_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_curves_of_a_finished_and_an_unfinished_run(dev_curves, tmp_path, capsys):
    finished = tmp_path / "finished"
    finished.mkdir()
    curve = [[100, 80.0], [200, 83.0], [300, 83.5], [400, 83.4]]
    (finished / "metrics.json").write_text(json.dumps({"training": {"dev_curve": curve}}))
    unfinished = tmp_path / "unfinished"
    (unfinished / "backup").mkdir(parents=True)
    (unfinished / "config.json").write_text(
        json.dumps({"steps_per_epoch": 1600, "checkpoints_per_epoch": 4})
    )
    for epoch, history in ((1, [70.0]), (2, [70.0, 75.5])):
        (unfinished / "backup" / f"epoch-{epoch:06d}.json").write_text(
            json.dumps({"history": {"dev_spearman": history}})
        )
    out = tmp_path / "curves.json"
    argv = ["--run", f"a={finished}", "--run", f"b={unfinished}", "--json", str(out)]
    assert dev_curves.main([*argv, "--plot", str(tmp_path / "curves.png")]) == 0
    curves = json.loads(out.read_text())
    assert curves["a"]["points"] == curve
    assert (curves["a"]["best_step"], curves["a"]["within_0.2_of_best_from"]) == (300, 300)
    assert curves["b"]["points"] == [[400, 70.0], [800, 75.5]]  # newest checkpoint, 400 apart
    assert "a: best 83.50 at step 300" in capsys.readouterr().out
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(SystemExit, match="no metrics.json and no checkpoint"):
        dev_curves.main(["--run", f"c={tmp_path / 'missing'}"])
