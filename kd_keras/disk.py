"""A full disk and a busy folder: `DiskFullError`, `phase`, `folder_lock`.

- **A full disk.** Every atomic writer of `kd_keras.storage` (and so the
  teacher cache, label shards, checkpoints, exports and reports) turns a
  write that fails for want of space into a `DiskFullError` once its
  temporary file or folder is gone: one line naming the destination and the
  phase of the run, which `phase("teacher pass")` sets around a step. A rerun
  after space is freed resumes: finished files are whole, the failed one was
  never put in place.
- **A busy folder.** `folder_lock(path, command)` keeps a second `kd-keras`
  process off a cache or output folder that one is writing (an exclusive
  `fcntl.flock` on `PATH/.kd-keras.lock`, which names the holder): the second
  one refuses with `FolderInUseError`, naming the holder's PID, or waits.

Both are re-exported by `kd_keras.storage`, where they are used. Standard
library only, no TensorFlow: the command line imports it before TensorFlow.
"""

import contextlib
import contextvars
import datetime
import errno
import fcntl
import json
import os
import pathlib
import socket
import threading
import time

from kd_keras.filesystems import has_scheme

__all__ = [
    "LOCK_FILE",
    "DiskFullError",
    "FolderInUseError",
    "current_phase",
    "folder_lock",
    "is_disk_full",
    "phase",
    "raise_if_full",
]

LOCK_FILE = ".kd-keras.lock"


# === A full disk ===

_PHASE = contextvars.ContextVar("kd_keras_storage_phase", default="writing")
_FULL = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded"}


@contextlib.contextmanager
def phase(name):
    """Names the phase of the run that the writes inside belong to, for `DiskFullError`.

    A context variable: it holds in this thread (and in the tasks and threads
    started with a copy of its context), and nests, the innermost phase
    winning. Outside any, the phase is `"writing"`.

    Example:

    ```python
    with storage.phase("teacher pass"):
        cache_teacher_outputs(...)
    ```
    """
    token = _PHASE.set(str(name))
    try:
        yield
    finally:
        _PHASE.reset(token)


def current_phase():
    """The innermost `phase(...)` name, or `"writing"`."""
    return _PHASE.get()


class DiskFullError(OSError):
    """A write failed for want of space (`ENOSPC`) or quota (`EDQUOT`).

    Raised by every atomic writer of `kd_keras.storage` once its temporary
    file or folder is removed; `path` (the destination) holds its old content, if it had
    any. Its message is one line:
    `no space left on device writing PATH (PHASE): free space and rerun the
    same command; finished work is kept`. An `OSError`, so the command line
    reports it as one line with exit 2.

    Attributes:
        path: str, the destination being written.
        phase: str, `current_phase()` when it was raised.
        errno: `errno.ENOSPC` or `errno.EDQUOT`.
    """

    def __init__(self, path, phase=None, code=errno.ENOSPC):
        self.path = str(path)
        self.phase = phase or current_phase()
        super().__init__(
            f"{_FULL.get(code, _FULL[errno.ENOSPC])} writing {self.path} ({self.phase}): "
            "free space and rerun the same command; finished work is kept"
        )
        self.errno = code

    def __reduce__(self):
        return type(self), (self.path, self.phase, self.errno)


def is_disk_full(error):
    """`errno.ENOSPC` or `errno.EDQUOT` when `error` (or what caused it) says the disk
    is full, else `None`: an `OSError` with that errno, or any error whose message
    says "No space left on device" or "Disk quota exceeded" (TensorFlow's, h5py's)."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in _FULL:
            return error.errno
        text = str(error).lower()
        for code, words in _FULL.items():
            if words in text:
                return code
        error = error.__cause__ or (None if error.__suppress_context__ else error.__context__)
    return None


def raise_if_full(error, path):
    """Raises `DiskFullError(path)` from `error` when the disk is full (see `is_disk_full`)."""
    code = is_disk_full(error)
    if code is None:
        return
    if isinstance(error, DiskFullError) and error.path == str(path):
        raise error
    raise DiskFullError(path, code=code) from error


# === Folder locks ===

_HELD = {}  # real path of a folder -> how many `folder_lock`s of this process hold it
_HELD_GUARD = threading.Lock()
_NO_FLOCK = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS)


class FolderInUseError(OSError):
    """Another process holds `folder_lock` on the folder; the message names it.

    One line: `PATH is in use by PID N (COMMAND, since TIME); wait for it to
    finish, or rerun with a different FLAG`. An `OSError`, so the command
    line reports it as one line with exit 2.

    Attributes:
        path: str, the folder.
        holder: dict, what the lock file says of its holder (`pid`,
            `command`, `since`, `host`), or `{}` when it could not be read.
    """

    def __init__(self, path, holder=None, flag="--output-dir/--cache-dir"):
        self.path = str(path)
        self.holder = dict(holder or {})
        self.flag = flag
        super().__init__(
            f"{self.path} is in use by {self.holder_text()}; wait for it to finish, "
            f"or rerun with a different {flag}"
        )
        self.errno = errno.EBUSY

    def holder_text(self):
        """`PID N (COMMAND, since TIME)`, or `another process`."""
        h = self.holder
        if "pid" not in h:
            return "another process"
        return f"PID {h['pid']} ({h.get('command', '?')}, since {h.get('since', '?')})"

    def __reduce__(self):
        return type(self), (self.path, self.holder, self.flag)


@contextlib.contextmanager
def folder_lock(path, command, flag="--output-dir/--cache-dir", wait=False):
    """Holds the folder `path` for this process while inside: one writer at a time.

    An exclusive `fcntl.flock` on `PATH/.kd-keras.lock` (the folder is
    created), which records the holder's PID, `command`, start time and host.
    When another process holds it: `FolderInUseError` naming that process,
    or, with `wait=True`, one line saying so and a wait until it lets go.
    The kernel lets go of a dead process's lock, so a lock file that a killed
    run left behind is stale by construction: it is taken over without a word.
    The lock file is removed on the way out. Reentrant within one process (a
    nested `folder_lock` of a folder this process holds holds it already).

    Object-store paths (`gs://...`, `ram://...`: `kd_keras.filesystems`) have
    no such lock: nothing is locked there, and two runs writing one folder
    must be kept apart by whoever starts them. A file system without `flock`
    (an NFS mount without its lock daemon) is said so in one line and not
    locked either.

    Args:
        path: the folder.
        command: str, what holds it (`"kd-keras label"`), for the message.
        flag: str, the option that picks another folder, for the message.
        wait: bool. Wait for the holder instead of refusing.

    Yields:
        The lock file's `pathlib.Path` (`None` for an object-store path).

    Raises:
        FolderInUseError: another process holds the folder (and not `wait`).
    """
    if has_scheme(str(path)):
        yield None  # no locks on object stores (see above)
        return
    folder = pathlib.Path(path)
    lock = folder / LOCK_FILE
    key = os.path.realpath(folder)
    with _HELD_GUARD:
        nested = _HELD.get(key, 0) > 0
        if nested:
            _HELD[key] += 1
    if nested:
        try:
            yield lock
        finally:
            with _HELD_GUARD:
                _HELD[key] -= 1
        return
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise_if_full(e, folder)
        raise
    fd = _acquire(lock, folder, flag, wait)
    try:
        _write_holder(fd, lock, command)
        with _HELD_GUARD:
            _HELD[key] = 1
        try:
            yield lock
        finally:
            with _HELD_GUARD:
                _HELD.pop(key, None)
    finally:
        lock.unlink(missing_ok=True)  # still ours: nobody else can hold this file now
        os.close(fd)


def _acquire(lock, folder, flag, wait):
    """An open descriptor of `lock`, flock-held by this process (see `folder_lock`)."""
    announced = False
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise_if_full(e, lock)
            raise
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                busy = FolderInUseError(folder, _read_holder(lock), flag)
                if not wait:
                    raise busy from None
                if not announced:
                    _say(f"{folder} is in use by {busy.holder_text()}; waiting for it to finish")
                    announced = True
                fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError as e:
                if e.errno not in _NO_FLOCK:
                    raise
                _say(f"{folder} cannot be locked ({e.strerror}); going on without a lock")
                return fd
            if _same_file(lock, fd):
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # the holder removed that file as it let go: take the new one


def _say(message):
    """`kd_keras.progress.log`'s line, without importing its progress bars."""
    print(f"[kd-keras] {message}", flush=True)


def _same_file(lock, fd):
    try:
        return os.stat(lock).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def _read_holder(lock, tries=20):
    """What the lock file says of its holder; `{}` if it says nothing readable within
    about a second (the holder may be between taking the lock and writing it)."""
    for _ in range(tries):
        try:
            holder = json.loads(lock.read_text(encoding="utf-8"))
            if isinstance(holder, dict) and "pid" in holder:
                return holder
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    return {}


def _write_holder(fd, lock, command):
    holder = {
        "pid": os.getpid(),
        "command": str(command),
        "since": datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S"),
        "host": socket.gethostname(),
    }
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode("utf-8"), 0)
    except OSError as e:
        raise_if_full(e, lock)
        raise
