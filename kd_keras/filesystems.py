"""Local paths and object-store paths (`gs://`, `s3://`, `hdfs://`, `ram://`) alike.

The labels folders, their manifests and the corpus files of `kd-keras label`
may live on the object store that a Dataflow, Flink or Spark cluster shares.
A path with a scheme (`has_scheme`: `NAME://...`) goes through TensorFlow's
`tf.io.gfile`, which knows those file systems (`ram://` is TensorFlow's own
in-memory one: one process's memory, for tests); any other path is a local
one and goes through Python's own file functions, exactly as before. Every
function here takes both kinds.

TensorFlow is imported only when a path has a scheme (`gfile()`), so that the
command line's checks, which import this module, stay free of it for local
paths. TensorFlow's errors are raised as `OSError`s (`FileNotFoundError` for a
missing file) carrying TensorFlow's message, so that callers catch one family.

Writes to an object store are atomic in the way the store allows:
`write_bytes_atomic` writes a temporary object beside the destination and
renames it over the destination (`tf.io.gfile.rename(..., overwrite=True)`).
On stores without an atomic rename (GCS and S3 copy, then delete) the object
appears whole (an object is written in one piece), and the labels folder
trusts only what its manifest, written last, names, each shard verified by
its SHA-256 (`kd_keras.labels`).
"""

import contextlib
import errno
import glob as local_glob
import os
import pathlib
import posixpath
import re
import shutil
import uuid

__all__ = [
    "absolute",
    "basename",
    "copy_tree_up",
    "exists",
    "gfile",
    "glob",
    "has_scheme",
    "is_dir",
    "is_file",
    "iter_lines",
    "join",
    "list_names",
    "makedirs",
    "open_read",
    "parent",
    "read_bytes",
    "read_text",
    "remove",
    "remove_tree",
    "to_path",
    "write_bytes_atomic",
]

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def has_scheme(path):
    """Whether `path` names an object-store location (`gs://bucket/x`, `ram://x`)."""
    return isinstance(path, str) and bool(_SCHEME.match(path))


def gfile():
    """`tf.io.gfile`, TensorFlow imported on first use."""
    # Only for paths with a scheme: the command line imports this module before
    # TensorFlow, and local paths never need it.
    import tensorflow as tf

    return tf.io.gfile


@contextlib.contextmanager
def _os_errors(path):
    """TensorFlow's file errors as `OSError`s (`FileNotFoundError`), message kept."""
    try:
        yield
    except OSError:
        raise
    except Exception as e:
        kind = type(e).__name__
        if kind == "NotFoundError":
            raise FileNotFoundError(errno.ENOENT, f"no such file: {path}") from e
        if kind.endswith("Error") and hasattr(e, "error_code"):  # tf.errors.OpError
            text = getattr(e, "message", str(e))
            code = errno.ENOSPC if "no space left on device" in text.lower() else errno.EIO
            raise OSError(code, f"{text} ({path})") from e
        raise


def to_path(path):
    """`path` as this module's functions want it: a `pathlib.Path` for a local path,
    the `str` itself for one with a scheme (`pathlib` would fold its `//`)."""
    return str(path) if has_scheme(str(path)) else pathlib.Path(path)


def join(path, *parts):
    """`path / parts...`: a `pathlib.Path` locally, a `str` joined with `/` otherwise."""
    if has_scheme(str(path)):
        return posixpath.join(str(path), *parts)
    return pathlib.Path(path).joinpath(*parts)


def parent(path):
    """The folder holding `path`."""
    if has_scheme(str(path)):
        return posixpath.dirname(str(path).rstrip("/"))
    return pathlib.Path(path).parent


def basename(path):
    """The last part of `path`."""
    if has_scheme(str(path)):
        return posixpath.basename(str(path).rstrip("/"))
    return pathlib.Path(path).name


def absolute(path):
    """`path` made absolute, as a `str` (one with a scheme is kept as it is)."""
    return str(path) if has_scheme(str(path)) else os.path.abspath(path)


def exists(path):
    if has_scheme(str(path)):
        with _os_errors(path):
            return gfile().exists(str(path))
    return os.path.exists(path)


def is_dir(path):
    if has_scheme(str(path)):
        with _os_errors(path):
            return gfile().isdir(str(path))
    return os.path.isdir(path)


def is_file(path):
    if has_scheme(str(path)):
        with _os_errors(path):
            return gfile().exists(str(path)) and not gfile().isdir(str(path))
    return os.path.isfile(path)


def makedirs(path):
    """Creates the folder `path` and its parents, if missing."""
    if has_scheme(str(path)):
        with _os_errors(path):
            gfile().makedirs(str(path))
    else:
        pathlib.Path(path).mkdir(parents=True, exist_ok=True)


def glob(pattern):
    """The paths that match a glob `pattern`, sorted."""
    if has_scheme(str(pattern)):
        with _os_errors(pattern):
            return sorted(gfile().glob(str(pattern)))
    return sorted(local_glob.glob(str(pattern)))


def list_names(directory, pattern):
    """The names of the entries of `directory` that match `pattern` (`shard-*.npz`)."""
    if has_scheme(str(directory)):
        return sorted(basename(p) for p in glob(join(directory, pattern)))
    return sorted(p.name for p in pathlib.Path(directory).glob(pattern))


@contextlib.contextmanager
def open_read(path):
    """The file `path` opened for reading bytes."""
    if not has_scheme(str(path)):
        with open(path, "rb") as f:
            yield f
        return
    with _os_errors(path):
        if not gfile().exists(str(path)):
            raise FileNotFoundError(errno.ENOENT, f"no such file: {path}")
        with gfile().GFile(str(path), "rb") as f:
            yield f


def iter_lines(f, block=1 << 20):
    """The lines of a binary file object, each with its `\\n`, read in blocks.

    For `tf.io.gfile.GFile`, whose own line reading drops the `\\r` of `\\r\\n`.
    """
    rest = b""
    while True:
        data = f.read(block)
        if not data:
            break
        lines = (rest + data).split(b"\n")
        rest = lines.pop()
        for line in lines:
            yield line + b"\n"
    if rest:
        yield rest


def read_bytes(path):
    with open_read(path) as f:
        return f.read()


def read_text(path):
    """The UTF-8 text of the file `path`."""
    return read_bytes(path).decode("utf-8")


def remove(path):
    """Deletes the file `path`, if there."""
    if has_scheme(str(path)):
        with _os_errors(path):
            if gfile().exists(str(path)):
                gfile().remove(str(path))
    else:
        pathlib.Path(path).unlink(missing_ok=True)


def remove_tree(path):
    """Deletes the folder `path` and everything in it, if there; errors ignored."""
    if has_scheme(str(path)):
        with contextlib.suppress(Exception):
            if gfile().exists(str(path)):
                gfile().rmtree(str(path))
    else:
        shutil.rmtree(path, ignore_errors=True)


def write_bytes_atomic(path, data):
    """Writes `data` to the object-store path `path`: a temporary object, then a rename.

    The temporary object (`.NAME.tmp-PID-XXXXXXXX` beside `path`) is removed
    when anything fails; `path` keeps its old content until the rename.
    """
    path = str(path)
    folder, name = posixpath.split(path)
    tmp = posixpath.join(folder, f".{name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        with _os_errors(path):
            with gfile().GFile(tmp, "wb") as f:
                f.write(data)
            gfile().rename(tmp, path, overwrite=True)
    except BaseException:
        with contextlib.suppress(Exception):
            gfile().remove(tmp)
        raise


def copy_tree_up(local, target):
    """Copies the local folder `local` to the object-store folder `target` (replaced).

    File by file; the caller checks the copy before trusting it (a copy that
    was killed is partial).
    """
    remove_tree(target)
    local = pathlib.Path(local)
    with _os_errors(target):
        for root, _, files in os.walk(local):
            relative = pathlib.Path(root).relative_to(local).as_posix()
            folder = target if relative == "." else join(target, relative)
            gfile().makedirs(folder)
            for file_name in files:
                gfile().copy(str(pathlib.Path(root) / file_name), join(folder, file_name), True)
