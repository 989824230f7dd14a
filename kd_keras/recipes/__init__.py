"""Recipes: whole distillation jobs, each a library module of the same shape.

| recipe | module (`kd_keras.recipes.`) | command |
|---|---|---|
| sentence pairs (STS-B; the main job) | `sentence_pairs` | `kd-keras distill` |
| text classification (SST-2, Tang et al. 2019) | `classification` | `kd-keras distill-classifier` |
| causal LM, token-level KL | `causal_lm` | `kd-keras distill-lm` |

Each module has `Config` (a dataclass: the settings and their defaults),
`HELP` (one line per setting) and `CHOICES` (allowed values), `DESCRIPTION`,
and `run(config) -> metrics dict`. The command line builds every recipe's
flags from `Config` and `HELP` the same way (`kd_keras.recipes.config`), and
a YAML or JSON `--config` file takes the same names.
"""
