"""`kd_keras.storage`: atomic writes, fingerprints, cache files that name their damage."""

import errno
import json
import os
import pickle

import numpy as np
import pytest

from kd_keras import storage
from kd_keras.storage import (
    CacheError,
    Fingerprint,
    atomic_directory,
    cached_arrays,
    digest,
    read_arrays,
    write_arrays,
    write_text_atomic,
)


def test_atomic_file_leaves_the_old_content_on_failure(tmp_path):
    path = tmp_path / "a.txt"
    write_text_atomic(path, "old\n")
    with pytest.raises(RuntimeError), storage.atomic_file(path, "w") as f:
        f.write("half a new")
        raise RuntimeError("killed mid-write")
    assert path.read_text() == "old\n"
    assert os.listdir(tmp_path) == ["a.txt"]  # no temporary left behind
    write_text_atomic(path, "new\n")
    assert path.read_text() == "new\n"
    assert (path.stat().st_mode & 0o777) == 0o644


def test_atomic_directory_replaces_only_when_asked(tmp_path):
    target = tmp_path / "out"

    def write(content):
        return lambda d: (d / "f.txt").write_text(content)

    atomic_directory(target, write("one"))
    with pytest.raises(FileExistsError):
        atomic_directory(target, write("two"))
    assert (target / "f.txt").read_text() == "one"

    def failing(d):
        (d / "f.txt").write_text("partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_directory(target, failing, replace=True)
    assert (target / "f.txt").read_text() == "one"
    atomic_directory(target, write("three"), replace=True)
    assert (target / "f.txt").read_text() == "three"
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_fingerprints_tell_inputs_apart():
    assert Fingerprint().update_texts(["ab", "c"]).hexdigest() != (
        Fingerprint().update_texts(["a", "bc"]).hexdigest()
    )
    assert digest("x", 1) == digest("x", 1) != digest("x", 2)
    assert digest(np.zeros(3, np.float32)) != digest(np.zeros(3, np.float64))
    assert digest("1") != digest(1)
    assert len(digest("x")) == 16


def test_cache_files_round_trip_and_refuse_damage(tmp_path):
    path = tmp_path / "c.npz"
    arrays = {"a": np.arange(6.0).reshape(2, 3), "b": np.array([1, 2], np.int64)}
    write_arrays(path, arrays, {"fingerprint": "f1"})
    meta, back = read_arrays(path)
    assert meta["fingerprint"] == "f1"
    for key in arrays:
        np.testing.assert_array_equal(back[key], arrays[key])

    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CacheError, match=r"c\.npz is truncated or corrupted.*Delete it"):
        read_arrays(path)
    np.savez(path, a=np.zeros(2))
    with pytest.raises(CacheError, match="not a kd-keras cache file"):
        read_arrays(path)


def test_cached_arrays_reuses_recomputes_and_stops_at_damage(tmp_path):
    path = tmp_path / "c.npz"
    calls = []

    def compute():
        calls.append(1)
        return {"x": np.full(3, len(calls), np.float32)}

    first = cached_arrays(path, "k1", compute)
    again = cached_arrays(path, "k1", compute)
    assert len(calls) == 1
    np.testing.assert_array_equal(again["x"], first["x"])
    other = cached_arrays(path, "k2", compute)  # stale: recomputed and replaced
    assert len(calls) == 2 and other["x"][0] == 2
    rebuilt = cached_arrays(path, "k2", compute, rebuild=True)
    assert len(calls) == 3 and rebuilt["x"][0] == 3
    path.write_bytes(b"garbage")
    with pytest.raises(CacheError, match=r"c\.npz"):
        cached_arrays(path, "k2", compute)
    assert len(calls) == 3 and path.read_bytes() == b"garbage"


def test_atomic_path_keeps_the_suffix_for_picky_writers(tmp_path):
    with storage.atomic_path(tmp_path / "student.keras") as tmp:
        assert tmp.suffix == ".keras" and tmp.parent == tmp_path
        tmp.write_text("model")
    assert (tmp_path / "student.keras").read_text() == "model"
    with pytest.raises(ValueError), storage.atomic_path(tmp_path / "student.keras") as tmp:
        tmp.write_text("half")
        raise ValueError("interrupted")
    assert (tmp_path / "student.keras").read_text() == "model"
    assert os.listdir(tmp_path) == ["student.keras"]


def test_leftovers_of_killed_writes_are_removed_live_ones_kept(tmp_path):
    import subprocess
    import sys

    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True
    )
    dead_pid = int(dead.stdout)
    target = tmp_path / "export"
    killed_dir = tmp_path / f".export.tmp-{dead_pid}-abcd"
    killed_dir.mkdir()
    (killed_dir / "big.bin").write_bytes(b"x" * 100)
    killed_file = tmp_path / f".export.old-{dead_pid}-1234"
    killed_file.write_text("old")
    live = tmp_path / f".export.tmp-{os.getpid()}-efgh"  # a write in progress
    live.mkdir()
    other = tmp_path / ".exported.tmp-1-x"  # another target's name
    other.mkdir()
    atomic_directory(target, lambda d: (d / "f.txt").write_text("new"))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["export", live.name, other.name])
    # Files written through `atomic_path` are cleaned the same way.
    stale = tmp_path / f".c.npz.tmp-{dead_pid}-zz.npz"
    stale.write_bytes(b"half")
    write_arrays(tmp_path / "c.npz", {"a": np.zeros(1)})
    assert not stale.exists()


# === A full disk ===


def _full(code=errno.ENOSPC):
    return OSError(code, os.strerror(code))


def _message(path, phase, words="no space left on device"):
    return (
        f"{words} writing {path} ({phase}): free space and rerun the same command; "
        "finished work is kept"
    )


def _write_npz(path, content):
    return write_arrays(path, {"x": np.frombuffer(content.encode(), np.uint8)})


def _read_npz(path):
    return read_arrays(path)[1]["x"].tobytes().decode()


def _keras_like(path, content):  # writes its own file to the path it is given
    with storage.atomic_path(path) as tmp:
        tmp.write_text(content[:3])
        if _keras_like.fail:
            raise _full()
        tmp.write_text(content)


_keras_like.fail = False

WRITERS = {  # name -> (write(path, content), read(path), file name)
    "write_text_atomic": (write_text_atomic, lambda p: p.read_text(), "report.md"),
    "write_json_atomic": (
        lambda p, c: storage.write_json_atomic(p, {"c": c}),
        lambda p: json.loads(p.read_text())["c"],
        "metrics.json",
    ),
    "save_npy_atomic": (
        lambda p, c: storage.save_npy_atomic(p, np.array([c])),
        lambda p: str(np.load(p)[0]),
        "embeddings.npy",
    ),
    "write_arrays": (_write_npz, _read_npz, "teacher-outputs.npz"),
}


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_a_full_disk_leaves_the_old_file_and_names_the_path_and_phase(name, tmp_path, monkeypatch):
    write, read, file_name = WRITERS[name]
    path = tmp_path / file_name
    write(path, "old")
    real_fsync = os.fsync

    def full_fsync(fd):  # the data is in the temporary file, the disk is full
        raise _full()

    monkeypatch.setattr(os, "fsync", full_fsync)
    with storage.phase("teacher pass"), pytest.raises(storage.DiskFullError) as caught:
        write(path, "new content")
    assert str(caught.value) == _message(path, "teacher pass")
    assert caught.value.path == str(path) and caught.value.errno == errno.ENOSPC
    assert isinstance(caught.value, OSError)
    assert os.listdir(tmp_path) == [file_name]  # no temporary file left
    assert read(path) == "old"
    monkeypatch.setattr(os, "fsync", real_fsync)
    write(path, "new content")  # space freed: the same call succeeds
    assert read(path) == "new content"


def test_a_full_disk_in_a_picky_writer_or_a_folder_write(tmp_path, monkeypatch):
    path = tmp_path / "student.keras"
    _keras_like(path, "model one")
    monkeypatch.setattr(_keras_like, "fail", True)
    with pytest.raises(storage.DiskFullError) as caught:
        _keras_like(path, "model two")
    assert str(caught.value) == _message(path, "writing")  # outside any phase
    assert os.listdir(tmp_path) == ["student.keras"] and path.read_text() == "model one"
    monkeypatch.setattr(_keras_like, "fail", False)
    _keras_like(path, "model two")
    assert path.read_text() == "model two"

    # A SavedModel's own writes fail with TensorFlow's error, a message and no errno;
    # an atomic write inside the folder names the folder, not its temporary path.
    target = tmp_path / "export"
    atomic_directory(target, lambda d: (d / "f.txt").write_text("one"))

    def tensorflow_full(d):
        (d / "variables").mkdir()
        (d / "variables" / "part").write_bytes(b"half")
        raise RuntimeError(f"{d}/variables/part.tempstate1; No space left on device [Op:SaveV2]")

    def nested_full(d):
        monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(_full(errno.EDQUOT)))
        write_text_atomic(d / "metadata.json", "{}")

    with storage.phase("export"):
        with pytest.raises(storage.DiskFullError) as caught:
            atomic_directory(target, tensorflow_full, replace=True)
        assert str(caught.value) == _message(target, "export")
        with pytest.raises(storage.DiskFullError) as caught:
            atomic_directory(target, nested_full, replace=True)
        assert str(caught.value) == _message(target, "export", "disk quota exceeded")
    assert caught.value.errno == errno.EDQUOT
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["export", "student.keras"]
    assert (target / "f.txt").read_text() == "one"
    atomic_directory(target, lambda d: (d / "f.txt").write_text("two"), replace=True)
    assert (target / "f.txt").read_text() == "two"


def test_other_errors_stay_what_they_were(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(_full(errno.EIO)))
    with pytest.raises(OSError) as caught:
        write_text_atomic(tmp_path / "a.txt", "x")
    assert type(caught.value) is OSError and caught.value.errno == errno.EIO
    assert os.listdir(tmp_path) == []


def test_phases_nest_and_disk_full_errors_travel():
    assert storage.current_phase() == "writing"
    with storage.phase("teacher pass"):
        with storage.phase("export"):
            assert storage.current_phase() == "export"
        assert storage.current_phase() == "teacher pass"
    assert storage.current_phase() == "writing"
    try:
        try:
            raise _full()
        except OSError as inner:
            raise RuntimeError("the pipeline failed") from inner
    except RuntimeError as outer:
        assert storage.is_disk_full(outer) == errno.ENOSPC
    assert storage.is_disk_full(ValueError("Disk quota exceeded")) == errno.EDQUOT
    assert storage.is_disk_full(OSError(errno.EACCES, "denied")) is None
    error = pickle.loads(pickle.dumps(storage.DiskFullError("/x/y.npz", "labeling")))
    assert str(error) == _message("/x/y.npz", "labeling") and error.errno == errno.ENOSPC
