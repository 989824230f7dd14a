"""A full disk at each writer: one line naming the path and the phase, nothing half-written
left where a later run would read it, and a rerun after space is freed goes on.

Each writer is made to fail where a full disk fails it (NumPy's `savez` into the
temporary file, `save_weights`, a SavedModel's own writes, `savefig`), with the
error that layer raises (`OSError(ENOSPC)`, h5py's `OSError`, TensorFlow's
`ResourceExhaustedError`); a slow test fills a real, small tmpfs.
"""

import errno
import gzip
import json
import os
import subprocess

import keras
import numpy as np
import pytest
import tensorflow as tf
from matplotlib.figure import Figure

from kd_keras import cli, storage
from kd_keras.checkpoints import ResumableBackup
from kd_keras.labels import MANIFEST, label_files, read_labels
from kd_keras.recipes.sentence_pairs.report import save_figure
from kd_keras.serving import text_model
from kd_keras.storage import DiskFullError, read_arrays
from kd_keras.teacher_pass import cache_teacher_outputs, run_teacher

WORDS = "the a cat dog sat ran on under mat tree big small red".split()


def _message(path, phase):
    return (
        f"no space left on device writing {path} ({phase}): free space and rerun the same "
        "command; finished work is kept"
    )


def _enospc():
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.fixture(scope="module")
def teacher(make_tiny_teacher):
    return make_tiny_teacher(hidden_dim=8, intermediate_dim=16, sequence_length=32)


@pytest.fixture
def corpus(tmp_path):
    rng = np.random.default_rng(0)
    sentences = [" ".join(rng.choice(WORDS, size=rng.integers(1, 12))) for _ in range(23)]
    plain = tmp_path / "part1.txt"
    plain.write_text("\n".join(sentences[:10]) + "\n", encoding="utf-8")
    packed = tmp_path / "part2.txt.gz"
    with gzip.open(packed, "wt", encoding="utf-8") as f:
        f.write("\n".join(sentences[10:]))
    return [str(plain), str(packed)], sentences


@pytest.fixture
def full_after(monkeypatch):
    """`full_after(n)`: `np.savez` writes `n` files, then fills the disk half-way into the next."""
    real = np.savez
    state = {"left": None}

    def savez(file, *args, **kwargs):
        if state["left"] is not None:
            if state["left"] == 0:
                file.write(b"PK\x03\x04 half a zip")
                raise _enospc()
            state["left"] -= 1
        return real(file, *args, **kwargs)

    monkeypatch.setattr(np, "savez", savez)

    def set_left(n):
        state["left"] = n

    return set_left


def _leftovers(folder):
    return [p.name for p in folder.rglob("*") if ".tmp-" in p.name or ".old-" in p.name]


def test_the_teacher_cache(teacher, tmp_path, full_after):
    sentences = ["a cat", "the dog sat", "a red tree"]
    path = tmp_path / "cache" / "teacher.npz"
    old = cache_teacher_outputs(teacher, sentences[:2], path, progress=False)  # another key
    full_after(0)
    with storage.phase("teacher pass"), pytest.raises(DiskFullError) as caught:
        cache_teacher_outputs(teacher, sentences, path, progress=False)
    assert str(caught.value) == _message(path, "teacher pass")
    assert sorted(os.listdir(path.parent)) == ["teacher.npz"]  # no temporary file
    (stored,) = read_arrays(path)[1].values()
    np.testing.assert_array_equal(stored, old)  # the old cache, whole
    full_after(None)
    got = cache_teacher_outputs(teacher, sentences, path, progress=False)
    np.testing.assert_allclose(got, run_teacher(teacher, sentences), atol=1e-6)


def test_label_shards_then_the_rerun_resumes(teacher, corpus, tmp_path, full_after):
    files, sentences = corpus
    out = tmp_path / "labels"
    full_after(2)  # two shards written, the disk fills in the third
    with storage.phase("labeling"), pytest.raises(DiskFullError) as caught:
        label_files(teacher, files, out, shard_size=5, progress=False)
    assert str(caught.value) == _message(out / "shard-00002.npz", "labeling")
    manifest = json.loads((out / MANIFEST).read_text())
    assert not manifest["complete"] and len(manifest["shards"]) == 2
    assert sorted(os.listdir(out)) == [MANIFEST, "shard-00000.npz", "shard-00001.npz"]
    full_after(None)
    result = label_files(teacher, files, out, shard_size=5, progress=False)
    assert (result.rows, result.reused) == (23, 2)
    assert [s for batch, _ in read_labels(out) for s in batch] == sentences


def test_the_command_line_says_it_in_one_line(teacher, corpus, tmp_path, full_after, capsys):
    files, _ = corpus
    teacher_path = tmp_path / "teacher.keras"
    teacher.save(teacher_path)
    out = tmp_path / "labels"
    argv = ["label", "--teacher", str(teacher_path), "--input", *files, "--output", str(out)]
    argv += ["--shard-size", "10", "--no-progress"]
    full_after(1)
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [
        f"kd-keras label: error: {_message(out / 'shard-00001.npz', 'labeling')}"
    ]
    assert sorted(os.listdir(out)) == [MANIFEST, "shard-00000.npz"]  # no lock file either
    full_after(None)
    assert cli.main(argv) == 0
    assert "23 sentences in 3 shards (1 kept from an earlier run)" in capsys.readouterr().out


def _model(seed=0):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    return model


def test_a_checkpoint(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 4)).astype("float32")
    y = x.sum(axis=1, keepdims=True)
    backup_dir = tmp_path / "backup"
    backup = ResumableBackup(backup_dir)
    real_save = keras.Model.save_weights

    def full_on_epoch_3(self, filepath, *args, **kwargs):  # as h5py says it
        if backup._current_epoch == 3:
            with open(filepath, "wb") as f:
                f.write(b"\x89HDF\r\n half")
            raise OSError(
                errno.ENOSPC,
                f"Can't synchronously write data (file write failed: filename = '{filepath}', "
                "errno = 28, error message = 'No space left on device')",
            )
        return real_save(self, filepath, *args, **kwargs)

    monkeypatch.setattr(keras.Model, "save_weights", full_on_epoch_3)
    with storage.phase("training"), pytest.raises(DiskFullError) as caught:
        _model().fit(x, y, epochs=4, batch_size=16, callbacks=[backup], verbose=0)
    assert str(caught.value) == _message(backup_dir / "epoch-000003.weights.h5", "training")
    assert sorted(os.listdir(backup_dir)) == ["epoch-000002.json", "epoch-000002.weights.h5"]
    monkeypatch.setattr(keras.Model, "save_weights", real_save)
    backup = ResumableBackup(backup_dir)
    fit = _model(seed=1).fit(x, y, epochs=4, batch_size=16, callbacks=[backup], verbose=0)
    assert len(fit.history["loss"]) == 2 and len(backup.history["loss"]) == 4  # resumed at 2


def test_an_export(teacher, tmp_path, monkeypatch):
    path = tmp_path / "teacher-export"
    text_model.export_teacher(teacher, path)
    before = sorted(p.relative_to(path) for p in path.rglob("*"))
    real_write = text_model._write_saved_model

    def full(module, signatures, directory):  # what tf.saved_model.save raises
        (directory / "variables").mkdir(parents=True)
        (directory / "variables" / "variables.data-00000-of-00001").write_bytes(b"half")
        raise tf.errors.ResourceExhaustedError(
            None, None, f"{directory}/variables/part-00000; No space left on device [Op:SaveV2]"
        )

    monkeypatch.setattr(text_model, "_write_saved_model", full)
    with storage.phase("export"), pytest.raises(DiskFullError) as caught:
        text_model.export_teacher(teacher, path, overwrite=True)
    assert str(caught.value) == _message(path, "export")
    assert os.listdir(tmp_path) == ["teacher-export"]  # no temporary folder
    assert sorted(p.relative_to(path) for p in path.rglob("*")) == before
    text_model.verify_text_export(path)  # the old export, whole
    monkeypatch.setattr(text_model, "_write_saved_model", real_write)
    text_model.export_teacher(teacher, path, overwrite=True)
    embed = text_model.load_text_export(path).signatures["embed"]
    got = embed(sentences=tf.constant(["a cat"]))["embedding"].numpy()
    np.testing.assert_allclose(got, run_teacher(teacher, ["a cat"]), atol=1e-5)


def test_the_report_plots(tmp_path, monkeypatch):
    path = tmp_path / "training_curves.png"
    fig = Figure(figsize=(2, 2))
    fig.subplots().plot([0, 1], [1, 0])
    save_figure(fig, path)
    old = path.read_bytes()
    assert old.startswith(b"\x89PNG")
    real = Figure.savefig

    def full(self, fname, *args, **kwargs):
        with open(fname, "wb") as f:
            f.write(b"\x89PNG half")
        raise _enospc()

    monkeypatch.setattr(Figure, "savefig", full)
    with storage.phase("report"), pytest.raises(DiskFullError) as caught:
        save_figure(fig, path)
    assert str(caught.value) == _message(path, "report")
    assert os.listdir(tmp_path) == [path.name] and path.read_bytes() == old
    monkeypatch.setattr(Figure, "savefig", real)
    save_figure(fig, path)
    assert path.read_bytes().startswith(b"\x89PNG")


# === A real full disk: a small tmpfs ===


@pytest.fixture
def small_disk(tmp_path):
    """`(folder, resize)`: a 24 KiB tmpfs at `folder` (skipped where mounting is not allowed);
    `resize("1m")` grows it, as freeing space would."""
    disk = tmp_path / "disk"
    disk.mkdir()
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=24k", "tmpfs", str(disk)],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        pytest.skip(f"cannot mount a tmpfs here: {e}")
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")

    def resize(size):
        subprocess.run(["mount", "-o", f"remount,size={size}", str(disk)], check=True, timeout=30)

    try:
        yield disk, resize
    finally:
        subprocess.run(["umount", str(disk)], timeout=30, check=False)


@pytest.mark.slow
def test_a_real_full_disk(teacher, corpus, small_disk):
    disk, resize = small_disk
    files, sentences = corpus
    cache = disk / "teacher.npz"
    storage.write_arrays(cache, {"x": np.zeros(16)})
    with storage.phase("teacher pass"), pytest.raises(DiskFullError) as caught:
        storage.write_arrays(cache, {"x": np.zeros(1 << 16)})  # 512 KiB
    assert str(caught.value) == _message(cache, "teacher pass")
    assert os.listdir(disk) == ["teacher.npz"]
    np.testing.assert_array_equal(read_arrays(cache)[1]["x"], np.zeros(16))

    out = disk / "labels"
    with storage.phase("labeling"), pytest.raises(DiskFullError) as caught:
        label_files(teacher, files, out, shard_size=2, progress=False)  # 12 shards
    assert "(labeling): free space and rerun" in str(caught.value)
    assert not _leftovers(disk)
    manifest = json.loads((out / MANIFEST).read_text())
    assert not manifest["complete"] and len(manifest["shards"]) >= 1
    resize("1m")
    result = label_files(teacher, files, out, shard_size=2, progress=False)
    assert (result.rows, result.shards, result.reused) == (23, 12, len(manifest["shards"]))
    assert [s for batch, _ in read_labels(out) for s in batch] == sentences
    assert not _leftovers(disk)


@pytest.mark.slow
def test_a_beam_worker_on_a_full_disk(teacher, corpus, tmp_path, full_after):
    pytest.importorskip("apache_beam")
    from kd_keras.labels_beam import WORK_DIR, label_files_beam

    files, sentences = corpus
    out = tmp_path / "labels"
    in_process = ["--direct_running_mode=in_memory", "--direct_num_workers=1"]
    settings = dict(shard_size=5, progress=False, pipeline_args=in_process)
    full_after(2)  # the worker writes two shards, the disk fills in the third
    with storage.phase("labeling"), pytest.raises(DiskFullError) as caught:
        label_files_beam(teacher, files, out, **settings)
    assert str(caught.value) == _message(out, "labeling")
    assert not _leftovers(out)
    full_after(None)
    result = label_files_beam(teacher, files, out, **settings)
    assert (result.rows, result.shards, result.reused) == (23, 5, 2)
    assert [s for batch, _ in read_labels(out) for s in batch] == sentences
    assert not (out / WORK_DIR).exists()
