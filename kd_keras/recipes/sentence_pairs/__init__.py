"""The sentence-pair recipe (`kd-keras distill`): a sentence encoder into a siamese student.

A recipe module has the same shape as every other (`kd_keras.recipes`):
`Config` (a dataclass of settings), `HELP` and `CHOICES` (from which the
command line's parser is built), `DESCRIPTION`, and `run(config)`.
"""

from kd_keras.recipes.sentence_pairs.config import CHOICES, HELP, PRESETS, DistillConfig
from kd_keras.recipes.sentence_pairs.preflight import preflight

Config = DistillConfig
DESCRIPTION = "Distill a sentence-similarity teacher into a fast siamese student."

__all__ = [
    "CHOICES",
    "DESCRIPTION",
    "HELP",
    "PRESETS",
    "Config",
    "DistillConfig",
    "preflight",
    "run",
]


def run(config=None, progress=True):
    """Runs the recipe (`kd_keras.recipes.sentence_pairs.job.run`); returns its metrics."""
    # Here, not at the top: the command line reads this package's flags without TensorFlow.
    from kd_keras.recipes.sentence_pairs.job import run as run_job

    return run_job(config, progress=progress)
