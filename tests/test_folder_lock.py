"""`kd_keras.storage.folder_lock`: one writer per folder, a clear refusal, stale locks taken over.

The holders are real processes (a lock that only this process saw would prove
nothing): a small script that takes the lock and waits on its standard input,
and `kd-keras label` itself.
"""

import datetime
import gzip
import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from kd_keras import storage
from kd_keras.storage import LOCK_FILE, FolderInUseError, folder_lock

HOLDER = textwrap.dedent(
    """
    import sys
    from kd_keras.storage import folder_lock

    with folder_lock(sys.argv[1], "the holder"):
        print("held", flush=True)
        sys.stdin.readline()  # until told to go, or killed
    """
)
CLI = "import sys\nfrom kd_keras import cli\nsys.exit(cli.main(sys.argv[1:]))"


def _hold(folder):
    """A process holding `folder_lock(folder)`, once it has said so."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(folder)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    return holder


def _release(holder):
    holder.stdin.write("go\n")
    holder.stdin.close()
    assert holder.wait(timeout=60) == 0


def _dead_pid():
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    return int(done.stdout)


def test_the_lock_file_names_its_holder_and_goes_with_it(tmp_path):
    folder = tmp_path / "run"
    before = datetime.datetime.now().replace(microsecond=0)
    with folder_lock(folder, "kd-keras distill") as lock:
        assert lock == folder / LOCK_FILE
        holder = json.loads(lock.read_text())
        assert holder["pid"] == os.getpid() and holder["command"] == "kd-keras distill"
        assert holder["host"] == socket.gethostname()
        since = datetime.datetime.strptime(holder["since"], "%Y-%m-%d %H:%M:%S")
        assert before <= since <= datetime.datetime.now()
        with folder_lock(folder, "nested"):  # this process holds it already
            assert json.loads(lock.read_text())["command"] == "kd-keras distill"
        assert lock.exists()
    assert os.listdir(folder) == []


def test_a_held_folder_is_refused_naming_the_holder(tmp_path):
    folder = tmp_path / "labels"
    holder = _hold(folder)
    try:
        since = json.loads((folder / LOCK_FILE).read_text())["since"]
        with pytest.raises(FolderInUseError) as caught:
            with folder_lock(folder, "kd-keras label", flag="--output"):
                pass
        assert str(caught.value) == (
            f"{folder} is in use by PID {holder.pid} (the holder, since {since}); wait for it "
            "to finish, or rerun with a different --output"
        )
        assert isinstance(caught.value, OSError)  # the command line's one-line errors
        assert (folder / LOCK_FILE).exists()  # the refused one took nothing away
    finally:
        _release(holder)
    assert not (folder / LOCK_FILE).exists()
    with folder_lock(folder, "kd-keras label"):  # free again
        pass


def test_a_stale_lock_file_does_not_block(tmp_path):
    folder = tmp_path / "cache"
    folder.mkdir()
    stale = {"pid": _dead_pid(), "command": "kd-keras distill", "since": "2026-01-01 00:00:00"}
    (folder / LOCK_FILE).write_text(json.dumps(stale))  # left by a killed run, not flock-held
    with folder_lock(folder, "kd-keras distill") as lock:
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    # A holder killed outright leaves its file behind; it blocks nobody either.
    holder = _hold(folder)
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=60)
    assert json.loads((folder / LOCK_FILE).read_text())["pid"] == holder.pid
    with folder_lock(folder, "kd-keras distill") as lock:
        assert json.loads(lock.read_text())["pid"] == os.getpid()


def test_waiting_for_the_holder(tmp_path, capsys):
    folder = tmp_path / "cache"
    holder = _hold(folder)
    started = time.monotonic()
    release = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time, os, signal, sys; time.sleep(1.5); "
            "os.kill(int(sys.argv[1]), signal.SIGTERM)",
            str(holder.pid),
        ]
    )
    with folder_lock(folder, "kd-keras distill", wait=True) as lock:
        assert time.monotonic() - started >= 1.0
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    release.wait(timeout=60)
    holder.wait(timeout=60)
    assert re.search(
        rf"is in use by PID {holder.pid} \(the holder, since .*\); waiting", capsys.readouterr().out
    )


def test_object_store_folders_are_not_locked():
    with folder_lock("ram://kd-keras-lock-test/folder", "kd-keras label") as lock:
        assert lock is None
    assert storage.filesystems.has_scheme("gs://bucket/x") and not storage.filesystems.has_scheme(
        "/tmp/gs://x"
    )


def test_two_label_commands_on_one_folder(make_tiny_teacher, tmp_path):
    teacher = make_tiny_teacher(hidden_dim=8, intermediate_dim=16, sequence_length=32)
    teacher_path = tmp_path / "teacher.keras"
    teacher.save(teacher_path)
    corpus = tmp_path / "corpus.txt.gz"
    with gzip.open(corpus, "wt", encoding="utf-8") as f:
        f.write("a cat\nthe dog sat\non a mat\n")
    out = tmp_path / "labels"
    argv = [sys.executable, "-c", CLI, "label", "--teacher", str(teacher_path)]
    argv += ["--input", str(corpus), "--output", str(out), "--no-progress"]
    holder = _hold(out)  # another kd-keras process, labeling into `out`
    try:
        since = json.loads((out / LOCK_FILE).read_text())["since"]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    finally:
        holder.send_signal(signal.SIGKILL)  # killed: its lock file stays, stale
        holder.wait(timeout=60)
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [
        f"kd-keras label: error: {out} is in use by PID {holder.pid} (the holder, since "
        f"{since}); wait for it to finish, or rerun with a different --output"
    ]
    assert not list(out.glob("shard-*"))  # the refused command wrote nothing
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "3 sentences in 1 shards (0 kept from an earlier run)" in done.stdout
    assert sorted(os.listdir(out)) == ["manifest.json", "shard-00000.npz"]  # no lock file
