"""Settings of the sentence-pair recipe (`kd-keras distill`)."""

import contextlib
import dataclasses
import datetime
import importlib.util
import os
import pathlib
import sys
import typing

from kd_keras.data import DataError, data_path
from kd_keras.recipes.config import ConfigError, check_bounds, check_config
from kd_keras.transfer import HELDOUT_FOLDERS

__all__ = [
    "BUILTIN_STUDENTS",
    "CHOICES",
    "HELP",
    "PRESETS",
    "STUDENT_ARGUMENTS",
    "DistillConfig",
    "check_student",
    "cwd_on_sys_path",
    "student_spec",
]

# `--student` is one of these or `MODULE:FUNCTION` (checked by `check_student`).
BUILTIN_STUDENTS = ("bilstm", "static", "tiny_bert")
# The keyword arguments a student function may take (`students.build_student`):
# the first two always, the others when its signature accepts them.
STUDENT_ARGUMENTS = (
    "vocabulary_size",
    "output_dim",
    "token_embeddings",
    "embedding_dim",
    "preprocessor",
    "sequence_length",
    "teacher",
)

CHOICES = {
    "embedding_init": ("random", "teacher", "vocab"),
    "lr_schedule": ("cosine", "constant"),
    "objective": ("embedding", "score", "soft_label", "relational", "contrastive"),
    "teacher_precision": ("float32", "bfloat16"),
    "hard_loss": ("score", "binary"),
    "store": ("float32", "float16"),
    "distribute": ("none", "multi-worker"),
    "quantize": ("none", "int8"),
    "preset": ("none", "quality"),
    "pooling": ("mean", "attention"),
}

# The shipped transfer corpora (`kd_keras.transfer.HELDOUT_FOLDERS`): the default
# unlabeled sentences, Chinese for the named Chinese teachers.
ENGLISH_CORPUS, CHINESE_CORPUS = HELDOUT_FOLDERS
CHINESE_TEACHERS = ("m3e-small",)

# `--preset NAME`: settings under the config file and the flags (`DistillConfig.from_preset`).
# "quality", chosen on STS-B dev and the held-out fidelity (docs: Training that converges):
# the 2-layer BERT student (dev 85.02 against the BiLSTM's 83.50, fidelity 82.50 against
# 73.11 at 1,600 steps), stopped on dev and kept at its best checkpoint.
PRESETS = {
    "quality": {"student": "tiny_bert", "early_stopping": 4},
}


@dataclasses.dataclass
class DistillConfig:
    """Settings of a `kd-keras distill` run; the flags mirror the fields (`HELP`).

    Data: `train`, `dev`, `test` default to the STS-B splits of the data
    folder (`kd_keras.data.data_dir`); `unlabeled` to its transfer corpus in
    the teacher's language, `transfer-en/*.txt.gz` (`transfer-zh/*.txt.gz`
    for the Chinese `"m3e-small"`; `"none"` for no unlabeled sentences),
    whose held-out tails (`kd_keras.transfer.split_heldout`) are never
    sampled for training; `fidelity` to the held-out tails of the shipped
    corpora that `unlabeled` samples (else of `transfer-en`), `fidelity_limit`
    sentences of each file, when the data folder has the corpus (`"none"`
    for no fidelity table; files or globs for your own sentences).

    Student: `"bilstm"`, `"static"`, `"tiny_bert"`, or your own: a function,
    or `"MODULE:FUNCTION"` naming one (the module importable from the
    current directory or `PYTHONPATH`). It is called with the keyword
    arguments `vocabulary_size` and `output_dim` (the teacher's width), plus
    those of `STUDENT_ARGUMENTS` that its signature accepts (`**kwargs`
    takes them all):

    - `token_embeddings`: float32 `[vocabulary_size, embedding_dim]` initial
      token embeddings as `embedding_init` says (`"vocab"`: vocabulary
      distillation, a teacher pass over the vocabulary, cached, run only
      when this argument is accepted; `"teacher"`: the teacher's own, PCA;
      `"random"`: `None`);
    - `embedding_dim`, `sequence_length`: those settings;
    - `preprocessor`: the student's `BertPreprocessor` (the teacher's
      tokenizer, `sequence_length` tokens);
    - `teacher`: the loaded `Teacher`.

    It returns a `keras.Model` from int32 token ids `[batch, length]` (0 is
    padding; each batch is padded to its longest sentence, so padding must
    not change an embedding: `mask_zero=True` and mask-aware layers; the
    recipe warns when it does) to `[batch, output_dim]`. The recipe appends
    a `UnitNormalization` layer (a no-op on an output that is already unit
    length) and names the student by the model's `name` in the log and the
    report.
    """

    teacher: str = "default"
    teacher_precision: str = "float32"
    store: str = "float32"
    data_dir: str = None
    train: str = None
    dev: str = None
    test: str = None
    format: str = None
    sentence_a: str = "sentence1"
    sentence_b: str = "sentence2"
    score: str = "score"
    max_score: float = 5.0
    unlabeled: str = None
    unlabeled_limit: int = 40000
    labels: str = None
    fidelity: str = None
    fidelity_limit: int = 300
    augment: int = 1
    repaired_pairs: int = 0
    max_pairs: int = None
    student: str | typing.Callable = "bilstm"
    embedding_dim: int = 256
    hidden_dim: int = 128
    bilstm_layers: int = 1
    pooling: str = "attention"
    embedding_skip: bool = True
    dropout: float = 0.1
    bert_layers: int = 2
    bert_intermediate_dim: int = None
    embedding_init: str = "vocab"
    objective: str = "embedding"
    target_pca: int = 0
    distillation_loss: str = None
    alpha: float = 1.0
    hard_loss: str = "score"
    negative_threshold: float = 0.0
    temperature: float = None
    similarity_scale: float = 10.0
    similarity_threshold: float = 0.0
    epochs: int = 4
    steps_per_epoch: int = 400
    batch_size: int = 64
    learning_rate: float = 2e-3
    lr_schedule: str = "constant"
    sequence_length: int = 64
    checkpoints_per_epoch: int = 4
    early_stopping: int = 0
    seed: int = 0
    output_dir: str = None
    cache_dir: str = None
    overwrite: bool = False
    distribute: str = "none"
    throughput_seconds: float = 10.0
    quantize: str = "none"
    preset: str = "none"

    @classmethod
    def from_preset(cls, preset, **settings):
        """The settings of `PRESETS[preset]`, with `settings` over them (`--preset`)."""
        if preset != "none" and preset not in PRESETS:
            raise ConfigError(f"--preset {preset!r}: expected one of none, {', '.join(PRESETS)}")
        config = cls(**{**PRESETS.get(preset, {}), **settings, "preset": preset})
        config._preset_applied = True
        return config

    def resolved(self):
        """A copy with the default data files and folders filled in.

        Data files default to the data folder's STS-B splits and English
        transfer corpus; `output_dir` to `runs/<timestamp>` and `cache_dir` to
        `runs/cache`, both under the current directory.
        """
        c = dataclasses.replace(self)
        c._preset_applied = getattr(self, "_preset_applied", False)
        for split, name in (
            ("train", "sts-train.csv"),
            ("dev", "sts-dev.csv"),
            ("test", "sts-test.csv"),
        ):
            if getattr(c, split) is None:
                setattr(c, split, data_path("stsb", name, override=c.data_dir))
        if c.unlabeled is None:
            corpus = CHINESE_CORPUS if c.teacher in CHINESE_TEACHERS else ENGLISH_CORPUS
            c.unlabeled = data_path(corpus, "*.txt.gz", override=c.data_dir)
        if c.unlabeled == "none":
            c.unlabeled = ""  # none, and stays none when resolved again (`None` is the default)
        if c.fidelity is None:  # the corpus' held-out tails, when the data folder has them
            c.fidelity = _sampled_corpora(c.unlabeled) or _transfer_glob(c.data_dir)
        runs = pathlib.Path.cwd() / "runs"
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        c.output_dir = os.path.abspath(c.output_dir) if c.output_dir else str(runs / stamp)
        c.cache_dir = os.path.abspath(c.cache_dir) if c.cache_dir else str(runs / "cache")
        return c

    def pair_columns(self):
        """How the pair files are read: `read_pairs`'s keyword arguments."""
        return dict(
            format=self.format,
            sentence_a=self.sentence_a,
            sentence_b=self.sentence_b,
            score=self.score,
            max_score=self.max_score,
        )

    def as_dict(self):
        """The settings as a JSON-ready dict: a student function as `module:qualname`."""
        return {**dataclasses.asdict(self), "student": student_spec(self.student)}

    def validate(self):
        """Checks every setting; raises `ConfigError` naming the first bad one.

        Without TensorFlow: the rules that tie `objective`, `distillation_loss`
        and `temperature` together belong to the losses (Keras), and `run`
        checks them first thing (`objectives.check_objective`).
        """
        if self.preset != "none" and not getattr(self, "_preset_applied", False):
            raise ConfigError(
                f"preset={self.preset!r} is applied by DistillConfig.from_preset({self.preset!r}, "
                "...) (or --preset on the command line), not by the constructor"
            )
        check_student(self.student)
        # The student checked above may be a function: the others by the common rules.
        check_config(dataclasses.replace(self, student=BUILTIN_STUDENTS[0]), CHOICES)
        check_bounds(
            self,
            at_least={
                **dict.fromkeys(_AT_LEAST_ONE, 1),
                **dict.fromkeys(
                    (
                        "unlabeled_limit",
                        "fidelity_limit",
                        "augment",
                        "repaired_pairs",
                        "seed",
                        "steps_per_epoch",
                        "early_stopping",
                        "target_pca",
                    ),
                    0,
                ),
                "sequence_length": 3,  # room for [CLS], a token and [SEP]
            },
            positive=(
                "max_score",
                "learning_rate",
                "temperature",
                "similarity_scale",
                "throughput_seconds",
            ),
            within={
                "alpha": (0.0, 1.0),
                "dropout": (0.0, 0.99),
                "similarity_threshold": (-1.0, 1.0),
                "negative_threshold": (-1.0, 1.0),
            },
        )


def _sampled_corpora(unlabeled):
    """`<folder>/*.txt.gz` of each shipped transfer corpus that `unlabeled` takes files of
    (comma-separated), or `None`: their held-out tails are the default fidelity sets."""
    folders = []
    for spec in (s.strip() for s in (unlabeled or "").split(",")):
        folder = os.path.dirname(os.path.abspath(spec)) if spec else ""
        if os.path.basename(folder) in HELDOUT_FOLDERS and folder not in folders:
            folders.append(folder)
    return ",".join(os.path.join(f, "*.txt.gz") for f in folders) or None


def _transfer_glob(override):
    """`<data folder>/transfer-en/*.txt.gz`, or `None` without a data folder or that corpus."""
    try:
        folder = data_path(ENGLISH_CORPUS, override=override)
    except DataError:
        return None
    return os.path.join(folder, "*.txt.gz") if os.path.isdir(folder) else None


_AT_LEAST_ONE = (
    "max_pairs",
    "embedding_dim",
    "hidden_dim",
    "bilstm_layers",
    "bert_layers",
    "bert_intermediate_dim",
    "epochs",
    "batch_size",
    "checkpoints_per_epoch",
)


HELP = {
    "teacher": "'default' (offline all-MiniLM-L6-v2) or a checkpoint folder / .keras file",
    "teacher_precision": "teacher pass in float32 (exact) or bfloat16 (oneDNN mixed precision: "
    "faster on CPUs with AVX-512 BF16 or AMX)",
    "store": "precision of the teacher's labels on disk: float32 or float16 (half the disk)",
    "data_dir": "folder of the shipped data (default: $KD_KERAS_DATA, else the checkout's data/)",
    "train": "training pairs (default: STS-B train of the data folder)",
    "dev": "validation pairs (default: STS-B dev)",
    "test": "test pairs for the report (default: STS-B test)",
    "format": "data format: stsb, cnsd, csv, tsv or jsonl (default: from the file)",
    "sentence_a": "column / key of the first sentence (csv, tsv, jsonl)",
    "sentence_b": "column / key of the second sentence",
    "score": "column / key of the gold score",
    "max_score": "largest gold score (scores are divided by it)",
    "unlabeled": "extra unlabeled sentences, one per line (its first tab-separated field): files "
    "or globs, comma-separated, plain or .gz ('none' to skip; default: the data folder's "
    "transfer-en/*.txt.gz, 1.05M sentences of 23 sources; transfer-zh/*.txt.gz, 679k Chinese "
    "sentences of 18 sources, for --teacher m3e-small)",
    "unlabeled_limit": "how many unlabeled sentences to sample (at random, seeded) from them all "
    "(never the last 500 of a transfer-en or transfer-zh file: held out for --fidelity)",
    "fidelity": "sentences to measure the student's fidelity to the teacher on, without labels "
    "(per file: Spearman of the two models' cosines of 2,000 random pairs, nearest-neighbour "
    "recall@10), through both exports after training: files or globs, comma-separated, one "
    "sentence per line, plain or .gz ('none' to skip; default: the held-out last 500 sentences of "
    "each file of the transfer corpus --unlabeled samples, transfer-en or transfer-zh, else of "
    "transfer-en, when the data folder has them; a file of those corpora given here also gives "
    "only its held-out tail)",
    "fidelity_limit": "sentences per --fidelity file (a seeded sample; 0: all)",
    "labels": "labels folders made by `kd-keras label` with the same teacher (comma-separated), "
    "streamed as more unlabeled pairs",
    "augment": "Tang et al. augmented variants per sentence",
    "repaired_pairs": "random re-pairings of transfer sentences to add",
    "max_pairs": "cap on transfer pairs (gold pairs kept first)",
    "student": "bilstm, static (a SIF-weighted mean of token embeddings and a projection: "
    "Model2Vec/tokenlearn trained here), tiny_bert, or your own as MODULE:FUNCTION (importable "
    "from the current directory or PYTHONPATH), called with vocabulary_size and output_dim and "
    "those it accepts of token_embeddings (--embedding-init's matrix; vocab costs a cached teacher "
    "pass over the vocabulary), embedding_dim, preprocessor, sequence_length and teacher; it "
    "returns a keras.Model from int32 token ids [batch, length] (0 = padding: mask it) to "
    "[batch, output_dim], L2-normalized by the recipe (example: examples/gru_student.py)",
    "embedding_dim": "token embedding width (BiLSTM, static, your own student's token_embeddings)",
    "hidden_dim": "BiLSTM units per direction",
    "bilstm_layers": "stacked BiLSTM layers",
    "pooling": "BiLSTM pooling of the last layer's states: attention (learned weights per "
    "token, AttentionPooling; chosen on dev) or mean",
    "embedding_skip": "also pool the token embeddings beside the BiLSTM (true/false)",
    "dropout": "BiLSTM dropout on the token embeddings (0 makes training deterministic, e.g. "
    "for comparing a multi-worker run with one process)",
    "bert_layers": "tiny-BERT layers (taken from the teacher's)",
    "bert_intermediate_dim": "tiny-BERT feedforward units per layer (the teacher's strongest; "
    "default: all)",
    "embedding_init": "token embeddings of the BiLSTM, static and your own student: random, "
    "teacher (PCA of the teacher's) or vocab (vocabulary distillation: each token alone "
    "through the teacher, cached, then PCA)",
    "objective": "embedding, score, soft_label, relational (embedding MSE plus the MSE of the "
    "cosines between every two sentences of the batch) or contrastive (each sentence picks its "
    "own teacher embedding among the batch's, InfoNCE at scale 20)",
    "target_pca": "center the teacher's embeddings and keep their N strongest principal "
    "directions before the student imitates them (tokenlearn's PCA of the targets; 0: off)",
    "distillation_loss": "override the objective's loss (a kd_keras.losses name)",
    "alpha": "weight of the distillation term (1 - alpha weights the gold score)",
    "hard_loss": "the gold term: score (MSE of the cosine to gold / max-score) or binary (0/1 "
    "labels, the BERT-to-DSSM hard loss y (1 - s)^2 / 4 + (1 - y) s^2 [s > negative threshold]; "
    "use --max-score 1)",
    "negative_threshold": "binary hard loss: cosine above which a 0-labeled pair is pushed apart",
    "temperature": "temperature of the soft_label losses",
    "similarity_scale": "scale of the two-class similarity logits",
    "similarity_threshold": "cosine at which the two-class soft labels are 50/50 (a teacher whose "
    "cosines all sit high, as unnormalized mean-pooled ones do, needs it near their middle)",
    "epochs": "passes over the transfer set (of --steps-per-epoch steps each, when given)",
    "steps_per_epoch": "training steps per epoch, fixing the training time whatever the corpus "
    "size (0: one pass over the transfer set)",
    "batch_size": "pairs per step",
    "learning_rate": "Adam learning rate (the peak, with --lr-schedule cosine)",
    "lr_schedule": "cosine (decay to 0 over the run) or constant",
    "sequence_length": "student's maximum tokens per sentence",
    "checkpoints_per_epoch": "backups per epoch (what Ctrl-C can lose); the student's dev "
    "Spearman is measured at each (the report's dev curve)",
    "early_stopping": "stop once this many dev measurements (one per checkpoint) in a row bring "
    "no better dev Spearman, and keep the best checkpoint's student, as Keras' EarlyStopping("
    "patience=N, restore_best_weights=True) would (0: train every step, keep the last)",
    "seed": "random seed",
    "output_dir": "run folder (default runs/<timestamp>; an unfinished one resumes)",
    "cache_dir": "teacher cache folder (default runs/cache)",
    "distribute": "none, or multi-worker: tf.distribute.MultiWorkerMirroredStrategy over the "
    "machines of TF_CONFIG (run the same command on each; --batch-size is the global batch)",
    "overwrite": "train again in an --output-dir that holds a finished run",
    "preset": "quality: the student chosen on dev for quality over speed (tiny_bert, early "
    "stopping 4; README, Training that converges); the config file and flags override it",
    "quantize": "int8: also export the student with int8 weights (student-int8/, Keras' own "
    "weights-only int8) and measure it and the teacher's int8 export beside the float32 rows",
    "throughput_seconds": "seconds of the CPU throughput measurement per model",
}


# === The student setting ===


def student_spec(student):
    """The student setting as text: a name, `MODULE:FUNCTION`, or a function's `module:qualname`."""
    if isinstance(student, str):
        return student
    module = getattr(student, "__module__", None) or "?"
    name = getattr(student, "__qualname__", None) or type(student).__qualname__
    return f"{module}:{name}"


@contextlib.contextmanager
def cwd_on_sys_path():
    """Puts the current directory first on `sys.path` for a while, as `python -m` does."""
    cwd = os.getcwd()
    added = cwd not in sys.path and "" not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        yield
    finally:
        if added and cwd in sys.path:
            sys.path.remove(cwd)


def check_student(student):
    """Checks `--student` without importing the user's module (nor TensorFlow).

    A built-in name or a function passes; `MODULE:FUNCTION` needs both parts
    and a module that `importlib` finds from the current directory or
    `PYTHONPATH`. Whether the module has the function is checked when it
    is imported (`students.student_function`).

    Raises:
        ConfigError: one line naming the setting.
    """
    if callable(student) or student in BUILTIN_STUDENTS:
        return
    if not isinstance(student, str):
        raise ConfigError(
            f"--student: expected a name, MODULE:FUNCTION or a function, got {student!r} "
            f"({type(student).__name__})"
        )
    module, _, function = student.partition(":")
    parts = module.split(".")
    if not function or not all(p.isidentifier() for p in parts + function.split(".")):
        raise ConfigError(
            f"--student must be one of {', '.join(BUILTIN_STUDENTS)} or MODULE:FUNCTION "
            f"(e.g. my_students:build_gru); got {student!r}"
        )
    with cwd_on_sys_path():
        try:
            found = importlib.util.find_spec(module)
        except (ImportError, ValueError):  # a parent package is missing, no __spec__
            found = None
    if found is None:
        raise ConfigError(
            f"--student {student}: no module named {module!r} in the current directory "
            f"({os.getcwd()}) or on PYTHONPATH"
        )
