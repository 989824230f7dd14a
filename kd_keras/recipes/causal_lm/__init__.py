"""The causal-LM recipe (`kd-keras distill-lm`): token-level KD across objectives.

A recipe module has the same shape as every other (`kd_keras.recipes`):
`Config` (a dataclass of settings), `HELP` and `CHOICES` (from which the
command line's parser is built), `DESCRIPTION`, and `run(config)`. The steps
are in `kd_keras.recipes.causal_lm.job`.
"""

from kd_keras.recipes.causal_lm.config import CHOICES, HELP, OBJECTIVES, CausalLMConfig

Config = CausalLMConfig
DESCRIPTION = "Distill a causal LM token by token (forward, reverse and skewed KL)."

__all__ = ["CHOICES", "DESCRIPTION", "HELP", "OBJECTIVES", "CausalLMConfig", "Config", "run"]


def run(config=None):
    """Runs the recipe (`kd_keras.recipes.causal_lm.job.run`); returns its metrics."""
    # Here, not at the top: the command line reads this package's flags without TensorFlow.
    from kd_keras.recipes.causal_lm.job import run as run_job

    return run_job(config)
