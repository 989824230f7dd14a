"""A `.keras` file checked whole before Keras reads it: a damaged one is named, never loaded.

A `.keras` file is a zip archive (`config.json`, `metadata.json`,
`model.weights.h5`) whose members each carry a CRC-32. Keras reads the
members it needs without telling a damaged archive from a missing file (a
truncated file is "File not found") or with a bare `zipfile.BadZipFile`.
`check_keras_file` reads every member once and compares its CRC-32 first: a
truncated file or one flipped bit is a `DamagedModelFileError` (a
`ValueError`) naming the file and saying what to do.

Only the standard library is imported here.
"""

import pathlib
import zipfile
import zlib

__all__ = ["DamagedModelFileError", "check_keras_file"]


class DamagedModelFileError(ValueError):
    """A `.keras` file that is truncated or corrupted: nothing was loaded from it."""


def _problem(path):
    """Why the archive at `path` cannot be trusted, or `None`."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
            names = set(archive.namelist())
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, ValueError) as e:
        return f"not a whole zip archive: {e}"
    if bad is not None:
        return f"its member {bad} fails its CRC-32 check"
    if "config.json" not in names:
        return "it has no config.json: not a Keras model file"
    return None


def check_keras_file(path, remedy="Save the model again."):
    """Raises `DamagedModelFileError` unless `path` is a whole `.keras` archive.

    Every member is read and its CRC-32 checked (a few hundred MB/s).

    Args:
        path: the `.keras` file (it must exist).
        remedy: str, what the message tells the user to do.

    Raises:
        DamagedModelFileError: one line naming the file, what is wrong and `remedy`.
    """
    path = pathlib.Path(path)
    problem = _problem(path)
    if problem is not None:
        raise DamagedModelFileError(
            f"{path} is damaged ({problem}); nothing was loaded from it. {remedy}"
        )
