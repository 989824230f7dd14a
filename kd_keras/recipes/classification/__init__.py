"""The classification recipe (`kd-keras distill-classifier`): a fine-tuned BERT into a BiLSTM.

On the user's labeled files (`--train`, `--dev`, `--test`) or SST-2, with a
teacher fine-tuned here or one already fine-tuned (a Hugging Face
`BertForSequenceClassification` folder, a `.keras` classifier).

A recipe module has the same shape as every other (`kd_keras.recipes`):
`Config` (a dataclass of settings), `HELP` and `CHOICES` (from which the
command line's parser is built), `DESCRIPTION`, and `run(config)`. The steps
are in `kd_keras.recipes.classification.job`.
"""

from kd_keras.recipes.classification.config import CHOICES, HELP, ClassificationConfig
from kd_keras.recipes.classification.preflight import preflight

Config = ClassificationConfig
DESCRIPTION = (
    "Distill a fine-tuned text classifier into a BiLSTM (Tang et al. 2019): your labeled "
    "files (--train/--dev/--test) or SST-2; your already fine-tuned classifier or one "
    "fine-tuned here."
)

__all__ = [
    "CHOICES",
    "DESCRIPTION",
    "HELP",
    "ClassificationConfig",
    "Config",
    "preflight",
    "run",
]


def run(config=None):
    """Runs the recipe (`kd_keras.recipes.classification.job.run`); returns its metrics."""
    # Here, not at the top: the command line reads this package's flags without TensorFlow.
    from kd_keras.recipes.classification.job import run as run_job

    return run_job(config)
