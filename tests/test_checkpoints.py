"""`kd_keras.checkpoints`: an interrupted checkpoint write loses nothing; a damaged checkpoint
is named and never loaded; a NaN stops the run."""

import json

import h5py
import keras
import numpy as np
import pytest

from kd_keras import distribute
from kd_keras.checkpoints import (
    CheckpointError,
    NonFiniteLossError,
    ResumableBackup,
    StopOnNonFiniteLoss,
)


def _model(seed=0):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    return model


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype("float32")
    return x, (x @ np.array([1.0, -2.0, 0.5, 3.0], "float32"))[:, None]


class _Recorder:
    """A stateful callback whose state must travel with the checkpoints."""

    def __init__(self):
        self.seen = []

    def get_state(self):
        return {"seen": self.seen}

    def set_state(self, state):
        self.seen = list(state["seen"])


def test_a_write_interrupted_mid_checkpoint_keeps_the_last_good_one(tmp_path, monkeypatch):
    x, y = _data()
    backup_dir = tmp_path / "backup"
    model = _model()
    recorder = _Recorder()
    backup = ResumableBackup(backup_dir, states={"recorder": recorder})
    log = keras.callbacks.LambdaCallback(on_epoch_end=lambda e, logs: recorder.seen.append(e))

    # Epochs 1 and 2 are saved; the save at the end of epoch 3 dies half-way
    # through writing the weights file (a Ctrl-C or a kill at that instant).
    real_save = keras.Model.save_weights

    def dying_save(self, filepath, *args, **kwargs):
        if backup._current_epoch == 3:
            with open(filepath, "wb") as f:
                f.write(b"\x89HDF\r\n half a file")
            raise KeyboardInterrupt("killed while writing the checkpoint")
        return real_save(self, filepath, *args, **kwargs)

    monkeypatch.setattr(keras.Model, "save_weights", dying_save)
    with pytest.raises(KeyboardInterrupt):
        model.fit(x, y, epochs=5, batch_size=16, callbacks=[log, backup], verbose=0, shuffle=False)
    monkeypatch.setattr(keras.Model, "save_weights", real_save)
    # Only the complete checkpoint of epoch 2 is there: no partial file anywhere.
    assert sorted(p.name for p in backup_dir.iterdir()) == [
        "epoch-000002.json",
        "epoch-000002.weights.h5",
    ]
    saved = _model(seed=1)
    saved.optimizer.build(saved.trainable_variables)
    saved.load_weights(str(backup_dir / "epoch-000002.weights.h5"))

    # The rerun resumes from epoch 2 with its weights, its history and the
    # other callbacks' state, and ends with every epoch's history.
    model = _model(seed=2)
    recorder = _Recorder()
    backup = ResumableBackup(backup_dir, states={"recorder": recorder})
    resumed_weights = []
    probe = keras.callbacks.LambdaCallback(
        on_train_begin=lambda logs: resumed_weights.append(model.get_weights())
    )
    log = keras.callbacks.LambdaCallback(on_epoch_end=lambda e, logs: recorder.seen.append(e))
    fit = model.fit(
        x, y, epochs=5, batch_size=16, callbacks=[backup, probe, log], verbose=0, shuffle=False
    )
    for got, want in zip(resumed_weights[0], saved.get_weights(), strict=True):
        np.testing.assert_array_equal(got, want)
    assert len(fit.history["loss"]) == 3  # epochs 3 to 5 only ...
    assert len(backup.history["loss"]) == 5  # ... but the whole run's history is kept
    assert backup.history["loss"][2:] == pytest.approx(fit.history["loss"])
    assert recorder.seen == [0, 1, 2, 3, 4]
    assert not backup_dir.exists()  # removed once training finished


def test_a_stray_json_without_its_weights_is_not_a_checkpoint(tmp_path):
    backup_dir = tmp_path / "backup"
    backup_dir.mkdir()
    (backup_dir / "epoch-000004.json").write_text(json.dumps({"epoch": 4, "history": {}}))
    backup = ResumableBackup(backup_dir)
    assert backup.checkpoints() == []
    model = _model()
    x, y = _data()
    seen = []
    probe = keras.callbacks.LambdaCallback(
        on_train_begin=lambda logs: seen.append(sorted(p.name for p in backup_dir.iterdir()))
    )
    fit = model.fit(x, y, epochs=2, callbacks=[backup, probe], verbose=0)
    assert seen == [[]]  # the half checkpoint was removed when training began
    assert len(fit.history["loss"]) == 2  # started from epoch 0, not 4


def test_a_non_finite_loss_stops_the_run_before_any_checkpoint(tmp_path):
    x, y = _data()
    y[5] = np.nan  # one bad score
    backup_dir = tmp_path / "backup"
    model = _model()
    with pytest.raises(NonFiniteLossError, match=r"loss became nan at step 1 of Keras epoch 1"):
        model.fit(
            x,
            y,
            epochs=2,
            batch_size=16,
            callbacks=[StopOnNonFiniteLoss(), ResumableBackup(backup_dir)],
            verbose=0,
            shuffle=False,
        )
    assert not backup_dir.exists() or not any(backup_dir.iterdir())


# === A damaged checkpoint: named, never loaded ===


def _wide_model(seed=0):
    """A model whose weights file is mostly weights (a kernel of 2,048 floats)."""
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(512), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    return model


class _StopAfter(keras.callbacks.Callback):
    """Records the weights at each epoch's end; interrupts after `epochs` epochs."""

    def __init__(self, epochs):
        super().__init__()
        self.epochs, self.weights = epochs, []

    def on_epoch_end(self, epoch, logs=None):
        self.weights.append(self.model.get_weights())
        if epoch + 1 == self.epochs:
            raise KeyboardInterrupt("interrupted after a checkpoint")


def _interrupted(backup_dir, epochs=2, keep=None):
    """Trains until interrupted after `epochs` epochs (each checkpointed); their weights."""
    x, y = _data()
    model = _wide_model()
    stop = _StopAfter(epochs)
    with pytest.raises(KeyboardInterrupt):
        model.fit(
            x,
            y,
            epochs=5,
            batch_size=16,
            callbacks=[ResumableBackup(backup_dir, keep=keep), stop],
            verbose=0,
            shuffle=False,
        )
    return stop.weights


def _flip_in_kernel(path):
    """Flips one bit in the middle of the first Dense kernel's data inside the HDF5 file."""
    with h5py.File(path, "r") as f:
        kernels = []
        f.visititems(lambda name, obj: kernels.append(obj) if _is_big(obj) else None)
        offset = kernels[0].id.get_offset() + kernels[0].id.get_storage_size() // 2
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def _is_big(obj):
    return isinstance(obj, h5py.Dataset) and obj.size >= 2048


def _damage(path, how):
    if how == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    else:
        _flip_in_kernel(path)


def _resume(backup_dir, **kwargs):
    """`(model, weights at the start of training, fit)` of a rerun of the training."""
    x, y = _data()
    model = _wide_model(seed=5)
    start = []
    probe = keras.callbacks.LambdaCallback(
        on_train_begin=lambda logs: start.append(model.get_weights())
    )
    backup = ResumableBackup(backup_dir, **kwargs)
    fit = model.fit(
        x, y, epochs=5, batch_size=16, callbacks=[backup, probe], verbose=0, shuffle=False
    )
    return backup, start[0], fit


def test_a_bit_flipped_in_a_kernel_loads_silently_without_the_checksum(tmp_path):
    # The reference the next test is measured against: Keras alone reads the flipped
    # bit as data, without a word.
    backup_dir = tmp_path / "backup"
    saved = _interrupted(backup_dir)[-1]
    weights = backup_dir / "epoch-000002.weights.h5"
    _flip_in_kernel(weights)
    model = _wide_model(seed=5)
    model.optimizer.build(model.trainable_variables)
    model.load_weights(str(weights))
    loaded = model.get_weights()
    changed = [not np.array_equal(a, b) for a, b in zip(loaded, saved, strict=True)]
    assert changed == [True, False, False, False]  # the one kernel, nothing said


@pytest.mark.parametrize("how", ["truncated", "one bit flipped"])
def test_a_damaged_checkpoint_is_named_and_never_loaded(tmp_path, how):
    backup_dir = tmp_path / "backup"
    _interrupted(backup_dir)
    weights = backup_dir / "epoch-000002.weights.h5"
    _damage(weights, how)
    files = {p.name: p.read_bytes() for p in backup_dir.iterdir()}
    x, y = _data()
    model = _wide_model(seed=5)
    initial = model.get_weights()
    message = (
        f"checkpoint {weights} is damaged (its SHA-256 does not match the one recorded in "
        f"epoch-000002.json); nothing was restored from it. Delete {backup_dir} to train "
        "again from the start."
    )
    with pytest.raises(CheckpointError) as error:
        model.fit(x, y, epochs=5, callbacks=[ResumableBackup(backup_dir)], verbose=0)
    assert str(error.value) == message
    for got, want in zip(model.get_weights(), initial, strict=True):
        np.testing.assert_array_equal(got, want)  # nothing loaded, nothing trained
    assert {p.name: p.read_bytes() for p in backup_dir.iterdir()} == files  # left for the user


def test_a_damaged_newest_checkpoint_gives_way_to_an_older_one(tmp_path, capsys):
    backup_dir = tmp_path / "backup"
    weights = _interrupted(backup_dir, epochs=3, keep=lambda: 1)  # epochs 1 and 3 kept
    assert ResumableBackup(backup_dir).checkpoints() == [1, 3]
    _damage(backup_dir / "epoch-000003.weights.h5", "one bit flipped")
    backup, start, fit = _resume(backup_dir)
    for got, want in zip(start, weights[0], strict=True):
        np.testing.assert_array_equal(got, want)  # the checkpoint after epoch 1
    assert len(fit.history["loss"]) == 4 and len(backup.history["loss"]) == 5
    out = capsys.readouterr().out
    damaged = backup_dir / "epoch-000003.weights.h5"
    assert f"[kd-keras] checkpoint {damaged} is damaged (its SHA-256 does not match" in out
    assert f"resuming from the older checkpoint {backup_dir / 'epoch-000001.weights.h5'}" in out


def test_a_checkpoint_without_a_recorded_checksum_resumes_or_is_named(tmp_path):
    # Checkpoints of earlier versions: the JSON first, no SHA-256 in it.
    backup_dir = tmp_path / "backup"
    saved = _interrupted(backup_dir)[-1]
    meta = backup_dir / "epoch-000002.json"
    state = json.loads(meta.read_text())
    del state["weights_sha256"]
    meta.write_text(json.dumps(state))
    kept = {p.name: p.read_bytes() for p in backup_dir.iterdir()}
    _, start, _ = _resume(backup_dir)
    for got, want in zip(start, saved, strict=True):
        np.testing.assert_array_equal(got, want)
    assert not backup_dir.exists()  # the finished training removed it: put it back
    backup_dir.mkdir()
    for name, data in kept.items():
        (backup_dir / name).write_bytes(data)
    _damage(backup_dir / "epoch-000002.weights.h5", "truncated")
    with pytest.raises(CheckpointError, match=r"epoch-000002\.weights\.h5 is damaged \(OSError: "):
        _resume(backup_dir)
    meta.write_text(meta.read_text()[:20])  # a truncated JSON
    with pytest.raises(CheckpointError, match=r"damaged \(epoch-000002\.json is not valid JSON"):
        _resume(backup_dir)


def test_workers_keep_two_checkpoints_and_resume_from_one_they_all_have(tmp_path, monkeypatch):
    # Under MultiWorkerMirroredStrategy, a worker killed while saving is one checkpoint
    # behind the others: every worker keeps its previous one, and all resume from the
    # oldest newest (`distribute.smallest`, a collective, here another worker's answer).
    monkeypatch.setattr(distribute, "num_workers", lambda strategy: 2)
    backup_dir = tmp_path / "backup"
    weights = _interrupted(backup_dir, epochs=3)
    assert ResumableBackup(backup_dir).checkpoints() == [2, 3]
    asked = []
    monkeypatch.setattr(distribute, "smallest", lambda s, value: asked.append(value) or 2)
    backup, start, fit = _resume(backup_dir)
    assert asked == [3]
    for got, want in zip(start, weights[1], strict=True):
        np.testing.assert_array_equal(got, want)  # after epoch 2, not this worker's 3
    assert len(fit.history["loss"]) == 3 and len(backup.history["loss"]) == 5
