"""Settings of the causal-LM recipe (`kd-keras distill-lm`)."""

import dataclasses

from kd_keras.recipes.config import ConfigError, check_bounds, check_config

__all__ = ["CHOICES", "HELP", "OBJECTIVES", "CausalLMConfig", "parse_objectives"]

OBJECTIVES = (
    "student_only",
    "forward_kl",
    "reverse_kl",
    "skewed_forward_kl",
    "skewed_reverse_kl",
    "forward_kl_ce",
)
CHOICES = {"fit_verbose": (0, 1, 2)}


def parse_objectives(text):
    """`"forward_kl, reverse_kl"` -> `["forward_kl", "reverse_kl"]` (blanks dropped)."""
    return [o.strip() for o in text.split(",") if o.strip()]


@dataclasses.dataclass
class CausalLMConfig:
    """Settings of a `kd-keras distill-lm` run; the flags mirror the fields (`HELP`).

    `train_data`, `test_data` and `corpus` default (`None`) to the shipped
    files of the data folder (`data_dir`, see `kd_keras.data.data_dir`):
    `instructions/train.jsonl`, `instructions/test.jsonl`, `lm/corpus.txt`.
    """

    run_dir: str = "runs/lm"
    data_dir: str = None
    train_data: str = None
    test_data: str = None
    corpus: str = None
    train_limit: int = None
    test_limit: int = None
    corpus_limit: int = 4000
    sequence_length: int = 64
    vocabulary_size: int = 1024
    extra_teacher_tokens: int = 8
    teacher_layers: int = 4
    teacher_dim: int = 128
    teacher_heads: int = 4
    teacher_epochs: int = 3
    student_layers: int = 2
    student_dim: int = 64
    student_heads: int = 2
    student_epochs: int = 2
    batch_size: int = 32
    learning_rate: float = 2e-3
    temperature: float = 1.0
    skew: float = 0.1
    alpha: float = 0.5
    objectives: str = ",".join(OBJECTIVES)
    seed: int = 0
    retrain_teacher: bool = False
    write_data: bool = False
    fit_verbose: int = 0

    def validate(self):
        """Checks every setting; raises `ConfigError` naming the first bad one."""
        check_config(self, CHOICES)
        unknown = sorted(set(parse_objectives(self.objectives)) - set(OBJECTIVES))
        if unknown:
            raise ConfigError(
                f"--objectives: unknown objectives {unknown}; choose from {list(OBJECTIVES)}"
            )
        check_bounds(
            self,
            at_least={
                **dict.fromkeys(_AT_LEAST_ONE, 1),
                "corpus_limit": 0,
                "extra_teacher_tokens": 0,
            },
            positive=("learning_rate", "temperature"),
            within={"alpha": (0.0, 1.0), "skew": (0.0, 1.0)},
        )


_AT_LEAST_ONE = (
    "train_limit",
    "test_limit",
    "sequence_length",
    "vocabulary_size",
    "teacher_layers",
    "teacher_dim",
    "teacher_heads",
    "teacher_epochs",
    "student_layers",
    "student_dim",
    "student_heads",
    "student_epochs",
    "batch_size",
)

HELP = {
    "run_dir": "output folder (created); a rerun with the same settings reuses its teacher",
    "data_dir": "folder of the shipped data (default: $KD_KERAS_DATA, else the checkout's data/)",
    "train_data": "instruction training set, JSON lines of instruction, input, output "
    "(default: the data folder's instructions/train.jsonl)",
    "test_data": "held-out instruction set scored by perplexity "
    "(default: the data folder's instructions/test.jsonl)",
    "corpus": "teacher's text corpus, one text per line (default: the data folder's lm/corpus.txt)",
    "train_limit": "instruction examples used (the first ones; default: all)",
    "test_limit": "held-out examples scored (the first ones; default: all)",
    "corpus_limit": "corpus lines used (the first ones)",
    "sequence_length": "maximum tokens per example",
    "vocabulary_size": "student byte-level BPE vocabulary",
    "extra_teacher_tokens": "tokens appended to the teacher's vocabulary (handled by "
    "truncate_teacher_vocab)",
    "teacher_layers": "teacher GPT-2 layers",
    "teacher_dim": "teacher GPT-2 hidden width",
    "teacher_heads": "teacher GPT-2 attention heads",
    "teacher_epochs": "teacher epochs over the corpus and the instruction training set",
    "student_layers": "student GPT-2 layers",
    "student_dim": "student GPT-2 hidden width",
    "student_heads": "student GPT-2 attention heads",
    "student_epochs": "epochs of every student over the instruction training set",
    "batch_size": "examples per step (teacher and students)",
    "learning_rate": "peak AdamW learning rate (cosine decay)",
    "temperature": "temperature of the KL objectives",
    "skew": "skew of the skewed KL objectives",
    "alpha": "KL weight of forward_kl_ce (1 - alpha weights the cross-entropy)",
    "objectives": f"comma-separated subset of {', '.join(OBJECTIVES)}",
    "seed": "random seed",
    "retrain_teacher": "ignore a saved teacher (true/false)",
    "write_data": "rebuild the shipped instruction data and corpus from the data folder's "
    "SST-2 and STS-B files, and stop (true/false)",
    "fit_verbose": "Keras fit verbosity (0 silent, 1 progress bar, 2 one line per epoch)",
}
