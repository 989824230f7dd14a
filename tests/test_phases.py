"""Phase markers (`kd_keras.phases`): reused only for the same settings and outputs."""

import json

import numpy as np

from kd_keras.phases import Phases, output_digest


def test_a_phase_is_reused_with_the_same_settings_and_outputs(tmp_path):
    (tmp_path / "student.keras").write_bytes(b"weights")
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "saved_model.pb").write_bytes(b"graph")
    lines = []
    phases = Phases(tmp_path, {"epochs": 4}, lines.append)
    value = phases.mark("train", {"loss": np.float32(0.5), "steps": (1, 2)}, ["student.keras"])
    assert value == {"loss": 0.5, "steps": [1, 2]}  # as a rerun will read it back
    phases.mark("export", {"seconds": 3.0}, ["export"])

    again = Phases(tmp_path, {"epochs": 4}, lines.append)
    assert again.reused("train", ["student.keras"]) == value
    assert again.reused("export", ["export"]) == {"seconds": 3.0}
    assert len(lines) == 2 and "train: reused" in lines[0]
    marker = json.loads((tmp_path / "phases" / "train.json").read_text())
    assert marker["outputs"] == {"student.keras": output_digest(tmp_path / "student.keras")}


def test_another_setting_or_a_changed_output_runs_the_phase_and_every_later_one(tmp_path):
    (tmp_path / "student.keras").write_bytes(b"weights")
    phases = Phases(tmp_path, {"epochs": 4})
    phases.mark("train", 1, ["student.keras"])
    phases.mark("evaluate", 2)
    assert Phases(tmp_path, {"epochs": 5}).reused("train", ["student.keras"]) is None

    (tmp_path / "student.keras").write_bytes(b"weightz")  # damaged or replaced
    again = Phases(tmp_path, {"epochs": 4})
    assert again.reused("train", ["student.keras"]) is None
    assert again.reused("evaluate") is None  # a later phase follows an earlier one

    (tmp_path / "student.keras").unlink()
    assert Phases(tmp_path, {"epochs": 4}).reused("train", ["student.keras"]) is None
    # A marker asked for other outputs than it recorded, or a damaged marker.
    assert Phases(tmp_path, {"epochs": 4}).reused("evaluate", ["student.keras"]) is None
    (tmp_path / "phases" / "evaluate.json").write_text('{"format": ')
    assert Phases(tmp_path, {"epochs": 4}).reused("evaluate") is None


def test_folder_digest_covers_every_file_and_its_name(tmp_path):
    folder = tmp_path / "export"
    (folder / "variables").mkdir(parents=True)
    (folder / "variables" / "variables.data").write_bytes(b"abc")
    first = output_digest(folder)
    (folder / "variables" / "variables.data").write_bytes(b"abd")
    assert output_digest(folder) != first
    (folder / "variables" / "variables.data").write_bytes(b"abc")
    assert output_digest(folder) == first
    (folder / "variables" / "variables.data").rename(folder / "variables" / "other.data")
    assert output_digest(folder) != first
    assert output_digest(tmp_path / "missing") is None


def test_clear_forgets_every_phase(tmp_path):
    phases = Phases(tmp_path, {})
    phases.mark("evaluate", 1)
    phases.clear()
    assert not (tmp_path / "phases").exists()
    assert Phases(tmp_path, {}).reused("evaluate") is None
