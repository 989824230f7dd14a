"""`preflight(config)`: the checks of a `kd-keras distill` run that need no TensorFlow.

Run by the command line before TensorFlow loads, and first thing by
`job.run`: the data files (each must exist, and its first pair must have the
named columns and a valid score), the `--unlabeled` and `--fidelity` globs
(each must match a file), the `--labels` folders, the teacher path, the output
and cache folders (creatable; a finished run refused without `--overwrite`).
A mistake is one line naming the input, and nothing has been written yet.
"""

import pathlib

from kd_keras.data import corpus_files, read_pairs
from kd_keras.recipes.config import ConfigError
from kd_keras.recipes.preflight import check_new_folder, check_teacher_spec

__all__ = ["preflight"]


def _patterns(text):
    return [p.strip() for p in (text or "").split(",") if p.strip()]


def preflight(config):
    """Checks `config`'s inputs and folders; returns it resolved (`DistillConfig.resolved`).

    Raises:
        DataError: a missing or malformed data file, a glob that matches nothing.
        ConfigError: a missing teacher or labels folder, an output or cache
            folder that cannot be created, a finished run without `--overwrite`.
    """
    c = config.resolved()
    for split in ("train", "dev", "test"):
        read_pairs(getattr(c, split), limit=1, **c.pair_columns())
    if c.unlabeled and c.unlabeled_limit:
        corpus_files(_patterns(c.unlabeled))
    if c.fidelity and c.fidelity != "none":
        corpus_files(_patterns(c.fidelity))
    for folder in _patterns(c.labels):
        if "://" not in folder and not (pathlib.Path(folder) / "manifest.json").is_file():
            raise ConfigError(
                f"--labels {folder} holds no labels (no manifest.json; run kd-keras label)"
            )
    check_teacher_spec(c.teacher)
    check_new_folder(c.output_dir, "--output-dir")
    check_new_folder(c.cache_dir, "--cache-dir")
    if (pathlib.Path(c.output_dir) / "metrics.json").exists() and not c.overwrite:
        raise ConfigError(
            f"--output-dir {c.output_dir} holds a finished run (metrics.json); choose another "
            "folder, or pass --overwrite to train again there"
        )
    return c
