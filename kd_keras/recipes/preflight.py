"""Checks of a run's inputs and folders that need no TensorFlow, before anything is written.

Each recipe's `preflight(config)` (the command line calls it before
TensorFlow loads; `run` calls it first too) uses these: a data file that does
not exist or whose first row lacks a column, a glob that matches nothing, a
teacher path that is not there, an output folder that cannot be created, are
one-line errors naming the input, and no run folder is created before they
pass. Only the standard library and the TensorFlow-free readers of
`kd_keras.data`.
"""

import os
import pathlib

from kd_keras.recipes.config import ConfigError

__all__ = ["NAMED_TEACHERS", "check_new_folder", "check_teacher_spec"]

# Teacher specs that are names, not paths (`kd_keras.models.teachers.load_teacher`).
NAMED_TEACHERS = ("default", "m3e-small")


def _has_scheme(path):
    return "://" in str(path)


def check_teacher_spec(spec, flag="--teacher"):
    """A teacher path must exist (a name, a model object or an object-store path pass)."""
    if not isinstance(spec, (str, os.PathLike)) or str(spec) in NAMED_TEACHERS:
        return
    if _has_scheme(spec):
        return
    path = pathlib.Path(spec)
    if not path.exists():
        raise ConfigError(
            f"{flag} {spec}: no such file or folder (expected 'default', 'm3e-small', a model "
            "folder or a .keras file)"
        )


def check_new_folder(path, flag):
    """`path` is a folder, or can be created as one: else a `ConfigError` naming it.

    Creates nothing: the nearest existing ancestor must be a writable folder.
    """
    if _has_scheme(path):
        return
    folder = pathlib.Path(path).absolute()
    if folder.exists():
        if not folder.is_dir():
            raise ConfigError(f"{flag} {folder} exists and is not a folder")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise ConfigError(f"{flag} {folder} is not writable")
        return
    ancestor = folder.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ConfigError(f"{flag} {folder} cannot be created ({ancestor} is a file)")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag} {folder} cannot be created ({ancestor} is not writable)")
