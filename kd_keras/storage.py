"""What kd-keras writes to disk: atomic writes, fingerprints and cache files.

The one home of three ideas that every cache and every export shares:

- **Atomic writes.** A file is written beside its destination and renamed into
  place (`atomic_path`, `atomic_file`, `write_text_atomic`, `write_json_atomic`,
  `save_npy_atomic`); a folder is written as a temporary folder and renamed
  (`atomic_directory`). A reader sees the old content or the whole new one,
  never a partial write, and a failed write leaves no temporary file behind.
- **Fingerprints.** `Fingerprint` is an incremental SHA-256 over JSON values,
  strings, arrays and a model's config and weights; `digest(...)` is its short
  form for file names.
- **Cache files.** `write_arrays` / `read_arrays` store named NumPy arrays
  with a JSON header (format, fingerprint, checksum) in one `.npz`;
  `cached_arrays` reuses a file whose fingerprint matches, recomputes a stale
  one, and stops at a damaged one with a `CacheError` that names the file and
  says what to delete.

- **Object stores.** A path with a scheme (`gs://...`, `ram://...`) is read
  and written through `tf.io.gfile` (`kd_keras.filesystems`): `atomic_file`
  and `atomic_path` write aside and rename over it, `write_arrays`,
  `read_arrays` and `file_sha256` take one too. Local paths are written as
  before.
- **A full disk.** A write that fails for want of space (`ENOSPC`, `EDQUOT`,
  or a TensorFlow error saying "No space left on device") removes its
  temporary file or folder and raises `DiskFullError`, one line naming the
  destination and the phase of the run (`phase("teacher pass")`); the old
  content, if any, is left as it was.
- **Folder locks.** `folder_lock(path, command)` keeps a second process off a
  cache or output folder that one is writing: it refuses with
  `FolderInUseError`, naming the holder, or waits.

Only the standard library and NumPy are imported here (and kd-keras' own
`filesystems` and `disk`, the same), so the command line and the scripts can use
this module without TensorFlow, which `kd_keras.filesystems` imports only for a
path with a scheme.
"""

import contextlib
import glob
import hashlib
import io
import json
import os
import pathlib
import shutil
import tempfile
import uuid
import zipfile

import numpy as np

from kd_keras import filesystems
from kd_keras.disk import (
    LOCK_FILE,
    DiskFullError,
    FolderInUseError,
    current_phase,
    folder_lock,
    is_disk_full,
    phase,
    raise_if_full,
)
from kd_keras.filesystems import has_scheme

__all__ = [
    "CACHE_FORMAT",
    "LOCK_FILE",
    "CacheError",
    "DiskFullError",
    "Fingerprint",
    "FolderInUseError",
    "atomic_directory",
    "atomic_file",
    "atomic_path",
    "cached_arrays",
    "current_phase",
    "digest",
    "directory_size",
    "file_sha256",
    "folder_lock",
    "format_size",
    "is_disk_full",
    "phase",
    "read_arrays",
    "remove_stale_temporaries",
    "save_npy_atomic",
    "write_arrays",
    "write_json_atomic",
    "write_text_atomic",
]

CACHE_FORMAT = "kd_keras.cache.v1"
_META_KEY = "__meta__"


# === Atomic writes ===


@contextlib.contextmanager
def atomic_path(path):
    """Yields a temporary path beside `path` to write; renames it to `path` on success.

    The temporary name keeps the suffixes
    (`.latest.weights.h5.tmp-PID-XXXX.weights.h5`), for writers that insist on
    them, such as `keras.Model.save` and `save_weights`; leftovers of killed
    writes (their process is gone) are removed first. The parent folder
    must exist. The file gets mode 0644; on any error it is removed and `path`
    is left as it was; a full disk is a `DiskFullError`.

    For an object-store `path` (`gs://...`), the temporary file is local (in
    the system's temporary folder), copied up on success
    (`kd_keras.filesystems.write_bytes_atomic`).

    Yields:
        `pathlib.Path` of the temporary file (created empty).
    """
    if has_scheme(str(path)):
        with _remote_path(str(path)) as tmp:
            yield tmp
        return
    path = pathlib.Path(path)
    remove_stale_temporaries(path)
    _, dot, suffixes = path.name.partition(".")
    try:
        fd, tmp = tempfile.mkstemp(
            prefix=f".{path.name}.tmp-{os.getpid()}-", suffix=f"{dot}{suffixes}", dir=path.parent
        )
    except OSError as e:
        raise_if_full(e, path)
        raise
    os.close(fd)
    try:
        yield pathlib.Path(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException as e:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise_if_full(e, path)
        raise


@contextlib.contextmanager
def _remote_path(path):
    """`atomic_path` for an object-store `path`: a local temporary file, copied up."""
    name = filesystems.basename(path)
    _, dot, suffixes = name.partition(".")
    fd, tmp = tempfile.mkstemp(prefix=f"kd-keras-{os.getpid()}-", suffix=f"{dot}{suffixes}")
    os.close(fd)
    try:
        yield pathlib.Path(tmp)
        filesystems.write_bytes_atomic(path, pathlib.Path(tmp).read_bytes())
    except BaseException as e:
        raise_if_full(e, path)
        raise
    finally:
        pathlib.Path(tmp).unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_file(path, mode="wb"):
    """Opens a temporary file beside `path`; renames it to `path` on success.

    `atomic_path`, opened: the data is flushed to disk before the rename. For
    an object-store `path`, the file is a buffer in memory, written as one
    object on success (`kd_keras.filesystems.write_bytes_atomic`).

    Args:
        path: the destination.
        mode: `"wb"` or `"w"` (UTF-8 text).

    Yields:
        The open file object.
    """
    if has_scheme(str(path)):
        buffer = io.BytesIO() if "b" in mode else io.StringIO()
        yield buffer
        data = buffer.getvalue()
        try:
            filesystems.write_bytes_atomic(path, data if "b" in mode else data.encode("utf-8"))
        except OSError as e:
            raise_if_full(e, path)
            raise
        return
    with atomic_path(path) as tmp:
        with open(tmp, mode, encoding=None if "b" in mode else "utf-8") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())


def write_text_atomic(path, text):
    """Writes `text` (UTF-8) to `path` atomically; returns the `pathlib.Path`
    (the `str` of an object-store path)."""
    with atomic_file(path, "w") as f:
        f.write(text)
    return filesystems.to_path(path)


def write_json_atomic(path, value, indent=2):
    """Writes `value` as JSON (and a final newline) to `path` atomically."""
    return write_text_atomic(path, json.dumps(value, indent=indent, ensure_ascii=False) + "\n")


def save_npy_atomic(path, array):
    """`np.save(path, array)`, atomically; returns the `pathlib.Path`."""
    with atomic_file(path, "wb") as f:
        np.save(f, array)
    return filesystems.to_path(path)


def atomic_directory(path, write, replace=False):
    """Runs `write(tmp_dir)`, then renames the temporary folder to `path`.

    The temporary folder is created beside `path` (same file system, so the
    rename is atomic) and named after this process
    (`.NAME.tmp-PID-XXXX`): leftovers of earlier attempts that were killed
    (their process is gone) are removed first. An existing `path` is replaced
    only with `replace=True`: it is first renamed aside and deleted once the
    new folder is in place; if anything fails, the temporary folder is
    removed and `path` restored. A full disk (also inside `write`, a
    SavedModel's own writes included) is a `DiskFullError` naming `path`.
    Local folders only.

    Args:
        path: the destination folder.
        write: `fn(pathlib.Path)` that fills the temporary folder.
        replace: bool. Replace an existing `path`.

    Returns:
        `path`, as a `pathlib.Path`.
    """
    path = pathlib.Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(path)
        tmp = pathlib.Path(
            tempfile.mkdtemp(prefix=f".{path.name}.tmp-{os.getpid()}-", dir=path.parent)
        )
    except OSError as e:
        raise_if_full(e, path)
        raise
    try:
        write(tmp)
        if path.exists() or path.is_symlink():
            if not replace:
                raise FileExistsError(f"{path} already exists.")
            backup = path.parent / f".{path.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            os.rename(path, backup)
            try:
                os.rename(tmp, path)
            except BaseException:
                os.rename(backup, path)
                raise
            shutil.rmtree(backup, ignore_errors=True)
        else:
            os.rename(tmp, path)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise_if_full(e, path)
        raise
    return path


def _process_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_temporaries(path):
    """Removes what killed writes of `path` left beside it.

    Temporary files and folders of `atomic_path`, `atomic_file` and
    `atomic_directory` (`.NAME.tmp-PID-*`, `.NAME.old-PID-*`) whose process no
    longer runs; those of a live process (a write in progress) are kept.

    Returns:
        list of the removed paths.
    """
    path = pathlib.Path(path)
    removed = []
    for leftover in path.parent.glob(f".{glob.escape(path.name)}.*-*-*"):
        kind, _, rest = leftover.name[len(path.name) + 2 :].partition("-")
        pid = rest.partition("-")[0]
        if kind in ("tmp", "old") and pid.isdigit() and not _process_alive(int(pid)):
            if leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)
            removed.append(leftover)
    return removed


# === Sizes ===


def directory_size(path):
    """Total size in bytes of the files under `path` (or of the file `path`)."""
    path = pathlib.Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(
        (pathlib.Path(root) / name).stat().st_size
        for root, _, files in os.walk(path)
        for name in files
    )


def format_size(num_bytes):
    """`num_bytes` for humans, in binary units: `"12.3 MiB"`."""
    size = float(num_bytes)
    for unit in ("B", "KiB", "MiB"):
        if size < 1024:
            return f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


# === Fingerprints ===


class Fingerprint:
    """An incremental SHA-256 of the things a cached result depends on.

    `update` takes JSON-able values, `str`, `bytes` and NumPy arrays (dtype,
    shape and bytes); `update_texts` a sequence of strings (each
    length-prefixed, so `["ab", "c"]` and `["a", "bc"]` differ);
    `update_model` a Keras model's config and every weight. Each update is
    tagged with its kind, so different inputs cannot collide by concatenation.

    Example:

    ```python
    key = Fingerprint("teacher-pass.v1").update({"batch_size": 64}).hexdigest()
    ```
    """

    def __init__(self, *parts):
        self._hash = hashlib.sha256()
        for part in parts:
            self.update(part)

    def _tagged(self, tag, payload):
        self._hash.update(tag + len(payload).to_bytes(8, "little"))
        self._hash.update(payload)

    def update(self, value):
        """Adds one value; returns `self`."""
        if isinstance(value, np.ndarray):
            array = np.ascontiguousarray(value)
            self._tagged(b"a", f"{array.dtype.str}{array.shape}".encode())
            self._hash.update(memoryview(array).cast("B"))
        elif isinstance(value, bytes):
            self._tagged(b"b", value)
        elif isinstance(value, str):
            self._tagged(b"s", value.encode("utf-8"))
        else:
            self._tagged(b"j", json.dumps(value, sort_keys=True, default=repr).encode("utf-8"))
        return self

    def update_texts(self, texts):
        """Adds a sequence of strings, or of tuples of strings; returns `self`."""
        self._tagged(b"t", b"")
        for item in texts:
            parts = item if isinstance(item, (tuple, list)) else (item,)
            for text in parts:
                encoded = text.encode("utf-8")
                self._hash.update(len(encoded).to_bytes(8, "little"))
                self._hash.update(encoded)
            self._hash.update(b"\x00" if isinstance(item, (tuple, list)) else b"\x01")
        return self

    def update_model(self, model):
        """Adds a model's config (or class name) and every weight; returns `self`."""
        try:
            config = model.get_config()
        except (NotImplementedError, AttributeError, TypeError):
            config = type(model).__qualname__
        self.update(config)
        for variable in getattr(model, "weights", ()):
            self.update(str(getattr(variable, "path", "")))
            self.update(np.asarray(variable.numpy()))
        return self

    def hexdigest(self):
        return self._hash.hexdigest()


def file_sha256(path):
    """SHA-256 (hex) of a file's bytes (local or object store), read in 1 MiB blocks."""
    sha = hashlib.sha256()
    with filesystems.open_read(path) as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def digest(*parts, length=16):
    """A short fingerprint of `parts` (JSON values, strings, arrays), for file names."""
    return Fingerprint(*parts).hexdigest()[:length]


# === Cache files ===


class CacheError(ValueError):
    """A cache file that cannot be trusted (truncated, corrupted, foreign)."""


def _checksum(arrays):
    fingerprint = Fingerprint()
    for key in sorted(arrays):
        fingerprint.update(key).update(np.asarray(arrays[key]))
    return fingerprint.hexdigest()


def write_arrays(path, arrays, meta=None):
    """Writes named arrays and a JSON header to one `.npz` file, atomically.

    The header holds `meta`, the format and a checksum of the arrays, which
    `read_arrays` verifies. The parent folder is created if needed. A full
    disk is a `DiskFullError` (no partial file left).

    Args:
        path: the `.npz` file (local or object store).
        arrays: dict of str -> array-like.
        meta: JSON-able dict (for example the fingerprint).
    """
    path = filesystems.to_path(path)
    try:
        filesystems.makedirs(filesystems.parent(path))
    except OSError as e:
        raise_if_full(e, path)
        raise
    arrays = {key: np.asarray(value) for key, value in arrays.items()}
    header = {**(meta or {}), "format": CACHE_FORMAT, "checksum": _checksum(arrays)}
    with atomic_file(path, "wb") as f:
        np.savez(f, **arrays, **{_META_KEY: np.array(json.dumps(header))})
    return path


def _damaged(path, why):
    return CacheError(f"Cache file {path} is {why}. Delete it to compute it again.")


def read_arrays(path):
    """Reads a file written by `write_arrays`: `(meta, arrays)`.

    Raises:
        CacheError: naming the file, when it is truncated, corrupted, not a
            kd-keras cache file, or its arrays do not match their checksum.
    """
    path = filesystems.to_path(path)
    try:
        source = io.BytesIO(filesystems.read_bytes(path)) if has_scheme(path) else path
        with np.load(source, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except (zipfile.BadZipFile, ValueError, EOFError, OSError, KeyError) as e:
        raise _damaged(path, f"truncated or corrupted ({type(e).__name__}: {e})") from None
    if _META_KEY not in arrays:
        raise _damaged(path, "not a kd-keras cache file (it has no header)")
    try:
        meta = json.loads(str(arrays.pop(_META_KEY)))
    except ValueError:
        raise _damaged(path, "damaged (its header is not valid JSON)") from None
    if not isinstance(meta, dict) or meta.get("format") != CACHE_FORMAT:
        raise _damaged(path, f"of an unknown format ({meta!r:.80})")
    if _checksum(arrays) != meta.get("checksum"):
        raise _damaged(path, "corrupted (its arrays do not match their checksum)")
    return meta, arrays


def cached_arrays(path, fingerprint, compute, meta=None, rebuild=False):
    """The arrays cached at `path` for `fingerprint`, computed on a miss.

    A file with the same fingerprint is returned as it is; a file with
    another fingerprint is stale and replaced; a damaged file raises
    `CacheError` (never silently recomputed over, never silently used).

    Args:
        path: the `.npz` cache file.
        fingerprint: str, what the arrays depend on.
        compute: `fn() -> dict of arrays`, run on a miss.
        meta: JSON-able dict stored with a new file.
        rebuild: bool. Recompute and replace whatever is at `path`.

    Returns:
        The dict of arrays.
    """
    path = filesystems.to_path(path)
    if filesystems.exists(path) and not rebuild:
        stored_meta, arrays = read_arrays(path)
        if stored_meta.get("fingerprint") == fingerprint:
            return arrays
    arrays = compute()
    write_arrays(path, arrays, {**(meta or {}), "fingerprint": fingerprint})
    return arrays
