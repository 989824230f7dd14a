"""The main job: distill a sentence-similarity teacher into a fast student.

`kd-keras distill` (or `python -m kd_keras distill`, or `run(DistillConfig())`)
runs, with no arguments:

1. the teacher `default` (offline all-MiniLM-L6-v2) over a transfer set: the
   STS-B training pairs shipped in `data/stsb`, SST-2 training phrases
   (`data/sst2`) as unlabeled sentences, and Tang et al. augmentation; the
   teacher's embeddings are cached on disk, keyed by a fingerprint;
2. a siamese BiLSTM student, its embeddings initialized by vocabulary
   distillation from the teacher, trained with `kd_keras.Distiller` on the
   cached teacher outputs (`embedding`, `score` or `soft_label` objective,
   mixed with the gold STS-B score through `alpha`);
3. the student saved as `student.keras` (with its tokenizer in
   `student.preprocessor.json`), both models exported as raw-text
   SavedModels (`kd_keras.export`), and
   measured on the same path: STS-B test Spearman and Pearson, parameters,
   size on disk, CPU sentences per second;
4. `metrics.json`, `report.md` and PNG plots in `runs/<timestamp>/`.

Ctrl-C leaves a resumable run: run the same command with `--output-dir` of
that run to continue from its last checkpoint. A rerun reuses the teacher
cache, the vocabulary distillation and the teacher's export.
"""

import argparse
import dataclasses
import datetime
import hashlib
import json
import os
import pathlib
import sys
import time

__all__ = ["DistillConfig", "run", "add_arguments", "main", "load_config"]

PROJECT_ROOT = pathlib.Path(__file__).resolve().parent.parent
# Upper bounds (exclusive) of the training batches' length buckets, in tokens.
TRAIN_BUCKETS = [*range(6, 34, 2), 36, 40, 48, 56]


@dataclasses.dataclass
class DistillConfig:
    """Settings of a `kd-keras distill` run; the CLI flags mirror the fields.

    Data: `train`, `dev`, `test` default to the STS-B splits shipped in
    `data/stsb`; `unlabeled` to the SST-2 training phrases (`"none"` for no
    unlabeled sentences).
    """

    teacher: str = "default"
    train: str = None
    dev: str = None
    test: str = None
    format: str = None
    sentence_a: str = "sentence1"
    sentence_b: str = "sentence2"
    score: str = "score"
    max_score: float = 5.0
    unlabeled: str = None
    unlabeled_limit: int = 20000
    augment: int = 1
    repaired_pairs: int = 0
    max_pairs: int = None
    student: str = "bilstm"
    embedding_dim: int = 256
    hidden_dim: int = 128
    embedding_skip: bool = True
    bert_layers: int = 2
    bert_intermediate_dim: int = None
    embedding_init: str = "vocab"
    objective: str = "embedding"
    distillation_loss: str = None
    alpha: float = 1.0
    temperature: float = None
    similarity_scale: float = 10.0
    epochs: int = 4
    batch_size: int = 64
    learning_rate: float = 2e-3
    lr_schedule: str = "constant"
    sequence_length: int = 64
    checkpoints_per_epoch: int = 4
    seed: int = 0
    output_dir: str = None
    cache_dir: str = None
    throughput_seconds: float = 10.0

    def resolved(self):
        """A copy with the default data files and directories filled in."""
        from kd_keras.data import SST2_DIR, STSB_DIR

        c = dataclasses.replace(self)
        c.train = c.train or os.path.join(STSB_DIR, "sts-train.csv")
        c.dev = c.dev or os.path.join(STSB_DIR, "sts-dev.csv")
        c.test = c.test or os.path.join(STSB_DIR, "sts-test.csv")
        if c.unlabeled is None:
            c.unlabeled = os.path.join(SST2_DIR, "sentiment-train")
        if c.unlabeled == "none":
            c.unlabeled = None
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        c.output_dir = c.output_dir or str(PROJECT_ROOT / "runs" / stamp)
        c.cache_dir = c.cache_dir or str(PROJECT_ROOT / "runs" / "cache")
        return c

    def validate(self):
        choices = {
            "student": ("bilstm", "tiny_bert"),
            "embedding_init": ("random", "teacher", "vocab"),
            "lr_schedule": ("cosine", "constant"),
            "objective": ("embedding", "score", "soft_label"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"--{name.replace('_', '-')} must be one of {allowed}.")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"--alpha must be in [0, 1]; got {self.alpha}.")
        for name in ("epochs", "batch_size", "sequence_length", "checkpoints_per_epoch"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1.")
        if self.sequence_length < 3:
            raise ValueError("--sequence-length must leave room for [CLS], a token and [SEP].")


def load_config(path):
    """Reads a YAML or JSON config file whose keys are `DistillConfig` fields
    (dashes or underscores)."""
    import yaml

    from kd_keras.data import DataError

    if not os.path.isfile(path):
        raise DataError(f"{path}: no such config file")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        data = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        kind = "JSON" if path.endswith(".json") else "YAML"
        raise DataError(f"{path}: not valid {kind}: {e}") from None
    data = data or {}
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a mapping of settings, got {type(data).__name__}")
    fields = {f.name for f in dataclasses.fields(DistillConfig)}
    out = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in fields:
            raise DataError(f"{path}: unknown setting {key!r}; known: {sorted(fields)}")
        out[name] = value
    return out


# === Steps ===


def _digest(*parts):
    h = hashlib.sha256()
    for part in parts:
        h.update(json.dumps(part, sort_keys=True, default=str).encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()[:16]


def _log(message):
    print(f"[kd-keras distill] {message}", flush=True)


def _load_data(c):
    import numpy as np

    from kd_keras.data import read_pairs, read_sentences

    kwargs = dict(
        format=c.format,
        sentence_a=c.sentence_a,
        sentence_b=c.sentence_b,
        score=c.score,
        max_score=c.max_score,
    )
    data = {split: read_pairs(getattr(c, split), **kwargs) for split in ("train", "dev", "test")}
    unlabeled = []
    if c.unlabeled and c.unlabeled_limit:
        unlabeled = read_sentences(c.unlabeled)
        order = np.random.default_rng(c.seed).permutation(len(unlabeled))[: c.unlabeled_limit]
        unlabeled = [unlabeled[i] for i in order]
    return data, unlabeled


def _student_preprocessor(teacher, sequence_length):
    from models.bert_tokenizer import BertPreprocessor

    config = {**teacher.preprocessor.get_config(), "sequence_length": sequence_length}
    config.pop("name", None)
    return BertPreprocessor.from_config(config)


def _build_student(c, teacher, cache_dir):
    """The student's sentence encoder: token inputs to a unit-norm embedding."""
    width = int(teacher.output.shape[-1])
    vocabulary_size = len(teacher.preprocessor.vocabulary)
    if c.student == "bilstm":
        from models.bilstm import build_bilstm_encoder
        from models.student_init import student_embeddings

        init = student_embeddings(
            c.embedding_init,
            teacher,
            c.embedding_dim,
            # Raw per-token teacher outputs, fingerprinted: one file serves
            # every embedding width.
            cache_path=os.path.join(cache_dir, "vocabulary-outputs.npz"),
        )
        return build_bilstm_encoder(
            vocabulary_size,
            embedding_dim=c.embedding_dim,
            hidden_dim=c.hidden_dim,
            output_dim=width,
            embeddings_initializer="uniform" if init is None else init,
            normalize=True,
            embedding_skip=c.embedding_skip,
        )
    from models.tiny_bert import build_tiny_bert_student

    return build_tiny_bert_student(
        teacher=teacher,
        num_layers=c.bert_layers,
        intermediate_dim=c.bert_intermediate_dim,
        normalize=True,
    )


def _student_inputs_fn(encoder):
    """Maps packed BERT inputs to what the encoder takes (ids alone or the dict)."""
    import keras

    if keras.tree.is_nested(encoder.input):
        return lambda packed: packed
    return lambda packed: packed["token_ids"]


def _datasets(c, transfer, table, preprocessor, encoder, dev, dev_table):
    import numpy as np
    import tensorflow as tf

    from kd_keras.pairs import teacher_pair_outputs

    to_student = _student_inputs_fn(encoder)
    length = c.sequence_length

    def ragged_ids(sentences):
        pieces = preprocessor.tokenize(sentences)
        packed = preprocessor.pack(pieces, sequence_length=length)
        # Keep rows ragged: each batch is padded to its own longest row.
        mask = tf.cast(packed["padding_mask"], tf.bool)
        return {k: tf.ragged.boolean_mask(v, mask) for k, v in packed.items()}

    def make(sentences, table, first, second, gold, shuffle):
        ids = ragged_ids(sentences)
        table = tf.constant(np.asarray(table, np.float32))
        ds = tf.data.Dataset.from_tensor_slices(
            (first.astype(np.int64), second.astype(np.int64), gold.astype(np.float32))
        )
        if shuffle:
            ds = ds.shuffle(len(first), seed=c.seed, reshuffle_each_iteration=True)
            # Length buckets: a pair goes to the bucket of its longer sentence,
            # so a batch pads to about its own rows' length (a BiLSTM steps
            # through every padded position). Random batches of the default
            # transfer set are 3.2x their real tokens; these 1.4x.
            lengths = tf.constant(ids["token_ids"].row_lengths().numpy())
            ds = ds.bucket_by_sequence_length(
                lambda i, j, y: tf.cast(tf.maximum(lengths[i], lengths[j]), tf.int32),
                bucket_boundaries=TRAIN_BUCKETS,
                bucket_batch_sizes=[c.batch_size] * (len(TRAIN_BUCKETS) + 1),
            )
        else:
            ds = ds.batch(c.batch_size)

        def batch(i, j, y):
            side = {}
            for key, rows in (("sentence_a", i), ("sentence_b", j)):
                packed = {k: tf.gather(v, rows).to_tensor() for k, v in ids.items()}
                side[key] = to_student(packed)
            x = {
                "student": side,
                "teacher_outputs": teacher_pair_outputs(table, i, j, scale=c.similarity_scale),
            }
            return x, y

        return ds.map(batch, num_parallel_calls=tf.data.AUTOTUNE)

    train = make(
        transfer.sentences, table, transfer.first, transfer.second, transfer.gold, shuffle=True
    )
    dev_a, dev_b, dev_scores = dev
    n = len(dev_a)
    val = make(
        list(dev_a) + list(dev_b),
        dev_table,
        np.arange(n),
        np.arange(n, 2 * n),
        np.asarray(dev_scores),
        shuffle=False,
    )
    return train.prefetch(2), val.prefetch(2)


class _StepHistory:
    """Records the mean training loss of every `every` steps, for the curves plot.

    Keras logs the running mean of the epoch so far; the loss of batch `k` is
    recovered as `k * mean_k - (k - 1) * mean_(k-1)`.
    """

    def __init__(self, every=10):
        import keras

        history = self

        class Callback(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                history.previous_mean = 0.0

            def on_train_batch_end(self, batch, logs=None):
                if not logs or "loss" not in logs:
                    return
                mean = float(logs["loss"])
                history.window.append((batch + 1) * mean - batch * history.previous_mean)
                history.previous_mean = mean
                history.step += 1
                if len(history.window) == every:
                    history.points.append((history.step, sum(history.window) / every))
                    history.window = []

        self.step = 0
        self.previous_mean = 0.0
        self.window = []
        self.points = []
        self.callback = Callback()


def run(config=None, progress=True):
    """Runs the whole job; returns the metrics dict also written to `metrics.json`.

    Args:
        config: `DistillConfig` (defaults to all defaults).
        progress: bool. Report progress: bars for the teacher pass and
            training on a terminal, plain lines (one per checkpoint chunk)
            in a log file.
    """
    import keras
    import numpy as np

    from kd_keras import Distiller
    from kd_keras.evaluation import evaluate_text_export_in_subprocess
    from kd_keras.export import (
        directory_size,
        export_teacher,
        export_text_model,
        save_student,
        write_text_atomic,
    )
    from kd_keras.pairs import GoldScoreMSE, objective_loss, pair_training_model
    from kd_keras.teacher_pass import cache_teacher_outputs
    from kd_keras.transfer import build_transfer_set
    from models.layers import siamese
    from models.teachers import load_teacher

    c = (config or DistillConfig()).resolved()
    c.validate()
    bars = progress and sys.stderr.isatty()  # a log file gets no carriage-return bars
    out = pathlib.Path(c.output_dir).resolve()
    cache = pathlib.Path(c.cache_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    cache.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(dataclasses.asdict(c), indent=2) + "\n")
    timings = {}
    t_start = time.perf_counter()
    keras.utils.set_random_seed(c.seed)

    # 1. Data and teacher.
    _log(f"output: {out}")
    data, unlabeled = _load_data(c)
    teacher = load_teacher(c.teacher)
    transfer = build_transfer_set(
        *data["train"],
        unlabeled=unlabeled,
        augment_per_sentence=c.augment,
        repaired_pairs=c.repaired_pairs,
        max_pairs=c.max_pairs,
        seed=c.seed,
        mask_token=teacher.preprocessor.mask_token or "[MASK]",
    )
    _log(
        f"transfer set: {len(transfer)} pairs ({int(transfer.labeled.sum())} with gold scores), "
        f"{len(transfer.sentences)} sentences"
    )

    # 2. Teacher pass (cached).
    t0 = time.perf_counter()
    key = _digest(c.teacher, transfer.sentences)
    table = cache_teacher_outputs(
        teacher, transfer.sentences, cache / f"teacher-{key}.npz", progress=bars
    )
    dev_a, dev_b, dev_scores = data["dev"]
    dev_sentences = list(dev_a) + list(dev_b)
    dev_table = cache_teacher_outputs(
        teacher,
        dev_sentences,
        cache / f"teacher-{_digest(c.teacher, dev_sentences)}.npz",
        progress=bars,
    )
    timings["teacher_pass_s"] = time.perf_counter() - t0
    _log(f"teacher pass: {timings['teacher_pass_s']:.0f} s (cached in {cache})")

    # 3. Student and training.
    t0 = time.perf_counter()
    preprocessor = _student_preprocessor(teacher, c.sequence_length)
    encoder = _build_student(c, teacher, cache)
    train_model = pair_training_model(encoder, scale=c.similarity_scale)
    distill_output, loss = objective_loss(c.objective, c.distillation_loss, c.temperature)
    distiller = Distiller(
        _CachedTeacher(), train_model, distill_output=distill_output, label_output="score"
    )
    steps = -(-len(transfer) // c.batch_size)
    chunk = -(-steps // c.checkpoints_per_epoch)
    learning_rate = c.learning_rate
    if c.lr_schedule == "cosine":
        learning_rate = keras.optimizers.schedules.CosineDecay(
            c.learning_rate, decay_steps=c.epochs * c.checkpoints_per_epoch * chunk
        )
    distiller.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        student_loss=GoldScoreMSE(c.max_score),
        distillation_loss=loss,
        alpha=c.alpha,
    )
    train_ds, val_ds = _datasets(c, transfer, table, preprocessor, encoder, data["dev"], dev_table)
    history = _StepHistory()
    backup = keras.callbacks.BackupAndRestore(str(out / "backup"))
    timings["setup_s"] = time.perf_counter() - t0
    _log(
        f"training {c.student} student ({encoder.count_params():,} parameters): "
        f"{c.epochs} epoch(s) of {steps} steps, checkpoint every {chunk} steps"
    )
    t0 = time.perf_counter()
    fit = distiller.fit(
        train_ds.repeat(),
        epochs=c.epochs * c.checkpoints_per_epoch,
        steps_per_epoch=chunk,
        validation_data=val_ds,
        callbacks=[backup, history.callback],
        verbose=1 if progress and sys.stdout.isatty() else 2,
    )
    timings["training_s"] = time.perf_counter() - t0

    # 4. Exports, measured on the same path.
    t0 = time.perf_counter()
    student_dir = out / "student"
    save_student(encoder, out / "student.keras", preprocessor)
    export_text_model(
        siamese(encoder, name="student"), preprocessor, student_dir, kind="pair", overwrite=True
    )
    teacher_dir = cache / f"teacher-export-{_digest(c.teacher, teacher.count_params())}"
    if not (teacher_dir / "saved_model.pb").exists():
        export_teacher(teacher, teacher_dir, overwrite=True)
    timings["export_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    test = data["test"]
    speed_sentences = list(test[0]) + list(test[1])
    results = {}
    for name, path in (("teacher", teacher_dir), ("student", student_dir)):
        results[name] = evaluate_text_export_in_subprocess(
            path, test[0], test[1], test[2], speed_sentences, c.throughput_seconds
        )
        _log(
            f"{name}: STS-B test Spearman {results[name]['spearman']:.2f}, "
            f"{results[name]['sentences_per_second']:.1f} sentences/s"
        )
    timings["evaluation_s"] = time.perf_counter() - t0
    timings["total_s"] = time.perf_counter() - t_start

    metrics = {
        "config": dataclasses.asdict(c),
        "data": {
            "transfer_pairs": len(transfer),
            "labeled_pairs": int(transfer.labeled.sum()),
            "transfer_sentences": len(transfer.sentences),
            "test_pairs": len(test[0]),
        },
        "models": {},
        "training": {
            "history": {k: [float(v) for v in vs] for k, vs in fit.history.items()},
            "step_loss": history.points,
        },
        "timings": timings,
    }
    for name, path, params in (
        ("teacher", teacher_dir, teacher.count_params()),
        ("student", student_dir, encoder.count_params()),
    ):
        r = results[name]
        metrics["models"][name] = {
            "spearman": r["spearman"],
            "pearson": r["pearson"],
            "parameters": int(params),
            "size_bytes": directory_size(path),
            "sentences_per_second": r["sentences_per_second"],
            "export": str(path),
        }
    t, s = metrics["models"]["teacher"], metrics["models"]["student"]
    metrics["summary"] = {
        "spearman_kept_pct": 100 * s["spearman"] / t["spearman"],
        "speedup": s["sentences_per_second"] / t["sentences_per_second"],
    }
    scores = {name: results[name]["scores"] for name in results}
    (out / "test_scores.json").write_text(json.dumps({**scores, "gold": test[2].tolist()}) + "\n")

    from kd_keras.report import write_report

    write_report(out, metrics, np.asarray(scores["teacher"]), np.asarray(scores["student"]))
    write_text_atomic(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    _log(
        f"done in {timings['total_s'] / 60:.1f} min: student keeps "
        f"{metrics['summary']['spearman_kept_pct']:.1f}% of the teacher's Spearman at "
        f"{metrics['summary']['speedup']:.1f}x its throughput; report: {out / 'report.md'}"
    )
    return metrics


class _CachedTeacher:
    """Stands in for the teacher: every batch carries its cached outputs."""

    def __call__(self, *args, **kwargs):
        raise RuntimeError("The teacher's outputs come from the cache; it is never called.")


# === Command line ===


def add_arguments(parser):
    defaults = DistillConfig()
    parser.add_argument("--config", help="YAML or JSON file of settings (flags override it)")
    helps = {
        "teacher": "'default' (offline all-MiniLM-L6-v2) or a checkpoint folder / .keras file",
        "train": "training pairs (default: shipped STS-B train)",
        "dev": "validation pairs (default: shipped STS-B dev)",
        "test": "test pairs for the report (default: shipped STS-B test)",
        "format": "data format: stsb, csv, tsv or jsonl (default: from the file)",
        "sentence_a": "column / key of the first sentence (csv, tsv, jsonl)",
        "sentence_b": "column / key of the second sentence",
        "score": "column / key of the gold score",
        "max_score": "largest gold score (scores are divided by it)",
        "unlabeled": "extra unlabeled sentences, one per line ('none' to skip; default SST-2)",
        "unlabeled_limit": "how many unlabeled sentences to sample",
        "augment": "Tang et al. augmented variants per sentence",
        "repaired_pairs": "random re-pairings of transfer sentences to add",
        "max_pairs": "cap on transfer pairs (gold pairs kept first)",
        "student": "bilstm or tiny_bert",
        "embedding_dim": "BiLSTM token embedding width",
        "hidden_dim": "BiLSTM units per direction",
        "embedding_skip": "also pool the token embeddings beside the BiLSTM (true/false)",
        "bert_layers": "tiny-BERT layers (taken from the teacher's)",
        "bert_intermediate_dim": "tiny-BERT feedforward units per layer (the teacher's strongest; "
        "default: all)",
        "embedding_init": "BiLSTM embeddings: random, teacher (PCA of the teacher's) or vocab",
        "objective": "embedding, score or soft_label",
        "distillation_loss": "override the objective's loss (a kd_keras.losses name)",
        "alpha": "weight of the distillation term (1 - alpha weights the gold score)",
        "temperature": "temperature of the soft_label losses",
        "similarity_scale": "scale of the two-class similarity logits",
        "epochs": "passes over the transfer set",
        "batch_size": "pairs per step",
        "learning_rate": "Adam learning rate (the peak, with --lr-schedule cosine)",
        "lr_schedule": "cosine (decay to 0 over the run) or constant",
        "sequence_length": "student's maximum tokens per sentence",
        "checkpoints_per_epoch": "backups per epoch (what Ctrl-C can lose)",
        "seed": "random seed",
        "output_dir": "run folder (default runs/<timestamp>; an existing one resumes)",
        "cache_dir": "teacher cache folder (default runs/cache)",
        "throughput_seconds": "seconds of the CPU throughput measurement per model",
    }
    for field in dataclasses.fields(DistillConfig):
        default = getattr(defaults, field.name)
        kind = {int: int, float: float, bool: _boolean}.get(field.type, str)
        parser.add_argument(
            "--" + field.name.replace("_", "-"),
            type=kind,
            default=None,
            help=f"{helps[field.name]} (default: {default})",
        )


def _boolean(text):
    value = str(text).strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def config_from_args(args):
    """A `DistillConfig` from `--config` and the flags (flags win)."""
    values = load_config(args.config) if args.config else {}
    for field in dataclasses.fields(DistillConfig):
        value = getattr(args, field.name, None)
        if value is not None:
            values[field.name] = value
    return DistillConfig(**values)


def main(args):
    from kd_keras.data import DataError

    try:
        config = config_from_args(args)
        config.validate()
        run(config)
    except (DataError, ValueError, FileNotFoundError) as e:
        print(f"kd-keras distill: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "kd-keras distill: interrupted; run the same command with --output-dir of this run "
            "to resume from its last checkpoint",
            file=sys.stderr,
        )
        return 130
    return 0
