"""`kd_keras.checkpoints`: an interrupted checkpoint write loses nothing; a NaN stops the run."""

import json

import keras
import numpy as np
import pytest

from kd_keras.checkpoints import NonFiniteLossError, ResumableBackup, StopOnNonFiniteLoss


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
