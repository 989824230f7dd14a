"""`kd_keras.storage`: atomic writes, fingerprints, cache files that name their damage."""

import os

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
