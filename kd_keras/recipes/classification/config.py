"""Settings of the classification recipe (`kd-keras distill-classifier`)."""

import dataclasses

from kd_keras.recipes.config import ConfigError, check_bounds, check_config

__all__ = ["CHOICES", "HELP", "ClassificationConfig"]

CHOICES = {
    "fit_verbose": (0, 1, 2),
    "objective": ("logit_mse", "forward_kl"),
    "pooling": ("max", "mean", "last"),
    "embedding_init": ("vocab", "pca", "random"),
    "teacher_kind": ("auto", "encoder", "classifier"),
}


@dataclasses.dataclass
class ClassificationConfig:
    """Settings of a `kd-keras distill-classifier` run; the flags mirror the fields (`HELP`).

    Data: the user's labeled files (`train`, `dev`, optional `test`: CSV or
    TSV with a header row, or JSON lines; columns `text` and `label`,
    `kd_keras.data.read_labeled_texts`), else the shipped SST-2 files of the
    data folder (`data_dir`, see `kd_keras.data.data_dir`). The classes are
    the training file's labels, sorted.

    Teacher: an encoder fine-tuned here with a classification head
    (`teacher_kind="encoder"`), or a classifier that is already fine-tuned
    and is used as it is (`"classifier"`: a Hugging Face
    `BertForSequenceClassification` folder or a `.keras` classifier);
    `"auto"` tells them apart (`kd_keras.recipes.classification.teacher`).
    """

    run_dir: str = "runs/sst2"
    data_dir: str = None
    train: str = None
    dev: str = None
    test: str = None
    text: str = "text"
    label: str = "label"
    teacher: str = "default"
    teacher_kind: str = "auto"
    teacher_classes: str = None
    sequence_length: int = 64
    teacher_train_limit: int = None
    teacher_epochs: int = 1
    teacher_batch_size: int = 32
    teacher_learning_rate: float = 1e-4
    train_limit: int = None
    augment_per_sentence: int = 3
    transfer_limit: int = None
    epochs: int = 3
    batch_size: int = 64
    learning_rate: float = 2e-3
    objective: str = "logit_mse"
    alpha: float = 0.5
    temperature: float = 2.0
    embedding_dim: int = 256
    hidden_dim: int = 150
    dense_dim: int = 200
    pooling: str = "max"
    dropout: float = 0.2
    embedding_init: str = "vocab"
    eval_limit: int = None
    throughput_seconds: float = 3.0
    seed: int = 0
    fit_verbose: int = 2

    def validate(self):
        """Checks every setting; raises `ConfigError` naming the first bad one."""
        check_config(self, CHOICES)
        if self.train is None and (self.dev or self.test):
            given = "--dev" if self.dev else "--test"
            raise ConfigError(
                f"{given} needs --train (without --train the shipped SST-2 files are used)."
            )
        if self.train is not None and not self.dev:
            raise ConfigError("--train needs --dev (the held-out file accuracy is measured on).")
        for name in ("text", "label"):
            if not getattr(self, name).strip():
                raise ConfigError(f"--{name} must name a column; got {getattr(self, name)!r}.")
        if self.teacher_classes is not None and not all(
            name.strip() for name in self.teacher_classes.split(",")
        ):
            raise ConfigError(
                f"--teacher-classes must be comma-separated class names; got "
                f"{self.teacher_classes!r}."
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"--dropout must be in [0, 1); got {self.dropout}.")
        check_bounds(
            self,
            at_least={
                **dict.fromkeys(_AT_LEAST_ONE, 1),
                **dict.fromkeys(("augment_per_sentence", "dense_dim", "throughput_seconds"), 0),
            },
            positive=("teacher_learning_rate", "learning_rate", "temperature"),
            within={"alpha": (0.0, 1.0)},
        )


_AT_LEAST_ONE = (
    "sequence_length",
    "teacher_epochs",
    "teacher_batch_size",
    "epochs",
    "batch_size",
    "embedding_dim",
    "hidden_dim",
    "teacher_train_limit",
    "train_limit",
    "transfer_limit",
    "eval_limit",
)

HELP = {
    "run_dir": "output folder (created); its cache/ keeps the teacher and its logits for reruns",
    "data_dir": "folder of the shipped data (default: $KD_KERAS_DATA, else the checkout's data/)",
    "train": "labeled training file: CSV or TSV with a header row, or JSON lines (.jsonl); "
    "its labels (strings or integers) are the classes (default: the shipped SST-2)",
    "dev": "labeled dev file, same format (needed with --train)",
    "test": "labeled test file, same format (optional)",
    "text": "column (JSON key) of the texts in --train/--dev/--test",
    "label": "column (JSON key) of the labels in --train/--dev/--test",
    "teacher": "'default' (offline all-MiniLM-L6-v2), a teacher spec of "
    "kd_keras.models.teachers.load_teacher (fine-tuned here), or an already fine-tuned "
    "classifier used as it is: a Hugging Face BertForSequenceClassification folder or a "
    ".keras classifier",
    "teacher_kind": "auto (a BertForSequenceClassification folder or a .keras model that is "
    "not an encoder is a classifier), encoder (fine-tune it with a new head) or classifier "
    "(use it as it is)",
    "teacher_classes": "comma-separated classes of a given classifier's outputs, in order "
    "(default: the folder's id2label; for a .keras classifier, the training classes sorted)",
    "sequence_length": "maximum tokens per text",
    "teacher_train_limit": "training examples (a random sample) the teacher is fine-tuned on "
    "(default: all)",
    "teacher_epochs": "epochs of the teacher's fine-tuning",
    "teacher_batch_size": "phrases per step of the teacher's fine-tuning",
    "teacher_learning_rate": "peak AdamW learning rate of the teacher's fine-tuning "
    "(warmup, then cosine decay)",
    "train_limit": "training examples used (the first ones; default: all)",
    "augment_per_sentence": "synthetic transfer sentences drawn per training text (Tang et al.)",
    "transfer_limit": "cap on the transfer set (gold first)",
    "epochs": "student epochs (both students)",
    "batch_size": "sentences per student step",
    "learning_rate": "Adam learning rate of the students (cosine decay)",
    "objective": "distillation loss: logit_mse or forward_kl (temperature KL)",
    "alpha": "weight of the distillation term (1 - alpha weights the cross-entropy)",
    "temperature": "temperature of --objective forward_kl",
    "embedding_dim": "BiLSTM token embedding width",
    "hidden_dim": "BiLSTM units per direction",
    "dense_dim": "width of the ReLU layer before the logits (0: none)",
    "pooling": "BiLSTM pooling: max, mean or last",
    "dropout": "dropout on the embeddings and before the logits",
    "embedding_init": "student token embeddings: vocab (vocabulary distillation: each token "
    "alone through the encoder, PCA), pca (the encoder's input embeddings by PCA) or random; "
    "the distilled student's come from the fine-tuned teacher, the labels-only student's from "
    "the encoder before fine-tuning (from the given classifier's encoder when it is already "
    "fine-tuned)",
    "eval_limit": "dev and test examples scored (the first ones; default: all)",
    "throughput_seconds": "seconds of the CPU throughput measurement per model",
    "seed": "random seed",
    "fit_verbose": "Keras fit verbosity (0 silent, 1 progress bar, 2 one line per epoch); "
    "1 also shows the teacher passes' progress",
}
