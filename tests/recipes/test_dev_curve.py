"""The sentence-pair recipe's dev curve and early stopping (`training.DevCurve`).

- the curve's point is the Spearman of the student's dev cosines against the
  gold scores, checked against a NumPy reference (ranks by `argsort`);
- early stopping stops after `patience` parts without a better point, keeps
  the best part's checkpoint through later ones and restores its weights;
- its state travels with the checkpoints: a run killed after it stopped
  resumes to the same place without training further.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from kd_keras.checkpoints import ResumableBackup
from kd_keras.recipes.sentence_pairs.objectives import pair_training_model
from kd_keras.recipes.sentence_pairs.training import DevCurve


def _numpy_spearman(a, b):
    """Pearson of the ranks; no ties in continuous data."""
    ranks_a = np.argsort(np.argsort(a)).astype(float)
    ranks_b = np.argsort(np.argsort(b)).astype(float)
    return np.corrcoef(ranks_a, ranks_b)[0, 1]


def _encoder(seed=0):
    keras.utils.set_random_seed(seed)
    ids = keras.Input(shape=(None,), dtype="int32")
    x = keras.layers.Embedding(50, 8, mask_zero=True)(ids)
    x = keras.layers.GlobalAveragePooling1D()(x)
    return keras.Model(ids, keras.layers.Dense(6)(x))


def _dev_batches(rng, pairs=40, batch=16):
    a = rng.integers(1, 50, size=(pairs, 7)).astype("int32")
    b = rng.integers(1, 50, size=(pairs, 7)).astype("int32")
    a[:, 5:] = 0  # padding
    gold = rng.uniform(0, 5, size=pairs).astype("float32")
    ds = tf.data.Dataset.from_tensor_slices(
        ({"student": {"sentence_a": a, "sentence_b": b}}, gold)
    ).batch(batch)
    return ds, a, b, gold


def test_a_dev_point_is_the_spearman_of_the_students_cosines_against_gold():
    rng = np.random.default_rng(0)
    encoder = _encoder()
    ds, a, b, gold = _dev_batches(rng)
    curve = DevCurve(pair_training_model(encoder), ds)
    logs = {}
    curve.callback.on_epoch_end(0, logs)

    ea, eb = encoder.predict(a, verbose=0), encoder.predict(b, verbose=0)
    cosines = np.sum(ea * eb, -1) / np.linalg.norm(ea, axis=-1) / np.linalg.norm(eb, axis=-1)
    assert logs["dev_spearman"] == pytest.approx(100 * _numpy_spearman(cosines, gold), abs=1e-6)
    assert curve.best == (1, logs["dev_spearman"])


def _scripted(monkeypatch, values):
    """Makes the dev points follow `values`, one per Keras epoch."""
    points = iter(values)
    monkeypatch.setattr(DevCurve, "measure", staticmethod(lambda *args: next(points)))


def _fit(backup_dir, curve, epochs, snapshots, extra=()):
    """Fits a small model as the job does: dev curve, best restored when it has patience."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    x = np.arange(24, dtype="float32").reshape(8, 3) / 24
    keep = curve.best_epoch if curve.patience else None
    backup = ResumableBackup(backup_dir, states={"dev_curve": curve}, keep=keep)
    snapshot = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: snapshots.__setitem__(epoch + 1, model.get_weights())
    )
    callbacks = [curve.callback, backup, snapshot, *extra]
    if curve.patience:
        callbacks.insert(1, curve.restore_best(backup))
    fit = model.fit(
        x, x.sum(-1, keepdims=True), epochs=epochs, batch_size=4, callbacks=callbacks, verbose=0
    )
    return model, backup, fit


def test_early_stopping_keeps_and_restores_the_best_part(tmp_path, monkeypatch):
    # Best after part 2; parts 3 and 4 are no better: patience 2 stops after 4.
    _scripted(monkeypatch, [10.0, 30.0, 20.0, 30.0, 99.0])
    curve = DevCurve(None, None, patience=2)
    snapshots, kept = {}, []
    backup_dir = tmp_path / "backup"
    probe = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: kept.append(sorted(p.name for p in backup_dir.iterdir()))
    )
    model, _, fit = _fit(backup_dir, curve, 10, snapshots, extra=[probe])
    assert fit.history["dev_spearman"] == [10.0, 30.0, 20.0, 30.0]  # a tie is no better
    assert curve.stopped and curve.best == (2, 30.0)
    # The best part's checkpoint stays beside the newest one until the end.
    assert kept[3] == [
        "epoch-000002.json",
        "epoch-000002.weights.h5",
        "epoch-000004.json",
        "epoch-000004.weights.h5",
    ]
    for got, want in zip(model.get_weights(), snapshots[2], strict=True):
        np.testing.assert_array_equal(got, want)
    assert not np.array_equal(snapshots[2][0], snapshots[4][0])
    assert not backup_dir.exists()


def test_no_patience_records_the_curve_and_keeps_the_last_weights(tmp_path, monkeypatch):
    _scripted(monkeypatch, [10.0, 30.0, 20.0])
    curve = DevCurve(None, None)
    snapshots = {}
    model, _, fit = _fit(tmp_path / "backup", curve, 3, snapshots)
    assert fit.history["dev_spearman"] == [10.0, 30.0, 20.0] and not curve.stopped
    assert curve.best == (2, 30.0)
    for got, want in zip(model.get_weights(), snapshots[3], strict=True):
        np.testing.assert_array_equal(got, want)


def test_nan_is_never_the_best_point(monkeypatch):
    _scripted(monkeypatch, [float("nan"), 5.0, float("nan")])
    curve = DevCurve(None, None, patience=5)
    for epoch in range(3):
        curve.callback.on_epoch_end(epoch, {})
    assert curve.best == (2, 5.0) and curve.since_best == 1


def test_a_run_killed_after_it_stopped_resumes_without_training(tmp_path, monkeypatch):
    backup_dir = tmp_path / "backup"
    _scripted(monkeypatch, [10.0, 30.0, 20.0, 25.0])
    curve = DevCurve(None, None, patience=2)
    # A kill as training ends: the backup survives (its end-of-training never ran).
    monkeypatch.setattr(ResumableBackup, "on_train_end", lambda self, logs=None: None)
    monkeypatch.setattr(DevCurve, "restore_best", lambda self, backup: keras.callbacks.Callback())
    first = {}
    _fit(backup_dir, curve, 10, first)
    assert curve.stopped
    monkeypatch.undo()

    # The rerun reads that it had stopped (as the job does) and trains nothing more.
    backup = ResumableBackup(backup_dir)
    saved = backup.saved_state("dev_curve")
    assert saved == {"best": [2, 30.0], "since_best": 2, "stopped": True}
    assert backup.checkpoints() == [2, 4]
    resumed = DevCurve(None, None, patience=2)
    _scripted(monkeypatch, [])  # any dev measurement would raise StopIteration
    snapshots = {}
    model, backup, fit = _fit(backup_dir, resumed, backup.checkpoints()[-1], snapshots)
    assert snapshots == {} and fit.history == {}
    assert resumed.best == (2, 30.0) and resumed.stopped
    for got, want in zip(model.get_weights(), first[2], strict=True):  # the best part's
        np.testing.assert_array_equal(got, want)
    assert backup.history["dev_spearman"] == [10.0, 30.0, 20.0, 25.0]
    assert not backup_dir.exists()
