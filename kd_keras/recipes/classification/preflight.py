"""`preflight(config)`: the checks of a `kd-keras distill-classifier` run that need no
TensorFlow, before anything is written: the labeled files (each must exist and
its first row must have the text and label columns), the teacher path and the
run folder (creatable)."""

from kd_keras.data import read_labeled_texts
from kd_keras.recipes.preflight import check_new_folder, check_teacher_spec

__all__ = ["preflight"]


def preflight(config):
    """Checks `config`'s files and folders; returns it unchanged.

    Raises:
        DataError: a missing labeled file, or one whose first row lacks a column.
        ConfigError: a missing teacher, a run folder that cannot be created.
    """
    c = config
    for path in (c.train, c.dev, c.test):
        if path is not None:
            read_labeled_texts(path, text=c.text, label=c.label, limit=1)
    check_teacher_spec(c.teacher)
    check_new_folder(c.run_dir, "--run-dir")
    return c
