"""SST-2 text classification: distil a fine-tuned MiniLM into a BiLSTM (Tang et al. 2019).

Steps, each cached under `run_dir/cache/` so that a rerun skips what is done:

1. Teacher: the offline all-MiniLM-L6-v2 encoder (`models.teachers.load_teacher`)
   with a classification head (`models.heads.build_classifier`, mean pooling),
   fine-tuned on (a `--teacher-train-limit` sample of) the 67,349 SST-2
   training phrases; saved as `cache/teacher_classifier.keras`.
2. Transfer set: the SST-2 training phrases (gold labels) plus synthetic ones
   made by masking and n-gram sampling (`kd_keras.transfer.augment_sentences`,
   no label); the teacher's logits on all of them are cached
   (`kd_keras.teacher_pass.cache_teacher_outputs`).
3. Students: two BiLSTM classifiers (`models.classifier`) of the same shape,
   same initial weights apart from the token embeddings, same epochs, same
   optimizer:
   - the labels-only student: cross-entropy on the gold phrases; its token
     embeddings by vocabulary distillation (each token alone through the
     encoder, PCA: `models.student_init.vocabulary_distillation_embeddings`)
     from the encoder *before* fine-tuning, so that it learns nothing from the
     fine-tuned teacher;
   - the distilled student: `alpha * LogitMSE(teacher, student) + (1 - alpha) *
     cross-entropy` over the transfer set (`--objective forward_kl` for the
     temperature KL instead), the cross-entropy only on gold rows (label -100
     elsewhere); its token embeddings by vocabulary distillation through the
     fine-tuned teacher (`fine_tuned_encoder`), which already carry the
     teacher's sentiment ("pathetic", "dull" at one end, "delightful",
     "refreshing" at the other).
   `--embedding-init pca` takes the encoders' input embeddings instead.
   Both take the teacher's WordPiece ids, so all three models share one
   tokenizer.
4. Export and evaluation: each model is exported as a raw-text SavedModel
   with a `classify` signature (`kd_keras.export.export_student(...,
   kind="classifier")`), and its SST-2 dev and test accuracy and CPU
   throughput (sentences/s, batch 64) are measured through that export.

The run directory gets `teacher_export/`, `baseline_export/`,
`student_export/` (the distilled student), `metrics.json` and `report.md`.
A cold run spends most of its time on the teacher fine-tune and the
teacher's pass over the 168,967 transfer sentences, both cached; a rerun
that reuses them took 15.6 minutes on 2 CPU cores (SST-2 dev: teacher 89.56,
labels-only BiLSTM 84.63, distilled BiLSTM 88.30):

    .venv/bin/python examples/distill_sst2.py --run-dir runs/sst2

A smoke test in a minute or two:

    .venv/bin/python examples/distill_sst2.py --run-dir /tmp/sst2 --teacher-train-limit 64 \\
        --train-limit 128 --augment-per-sentence 1 --epochs 1 --eval-limit 64 \\
        --throughput-seconds 0.2
"""

import argparse
import json
import os
import pathlib
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

ROOT = pathlib.Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from kd_keras import Distiller  # noqa: E402
from kd_keras import losses as kd_losses  # noqa: E402
from kd_keras.data import SST2_DIR, DataError, read_lines  # noqa: E402
from kd_keras.evaluation import throughput  # noqa: E402
from kd_keras.export import export_student, write_text_atomic  # noqa: E402
from kd_keras.teacher_pass import cache_teacher_outputs  # noqa: E402
from kd_keras.transfer import augment_sentences  # noqa: E402
from models.classifier import build_bilstm_classifier  # noqa: E402
from models.heads import build_classifier  # noqa: E402
from models.teachers import Teacher, load_teacher  # noqa: E402

__all__ = [
    "BucketedBatches",
    "fine_tuned_encoder",
    "load_export",
    "main",
    "parse_args",
    "read_sst2",
]

TARGET_DEV_ACCURACY = 88.0
TARGET_GAIN = 1.5


# === Data ===


def read_sst2(path, limit=None):
    """Reads an SST-2 file of `sentence<TAB>label` lines: `(sentences, int32 labels)`."""
    sentences, labels = [], []
    for number, line in read_lines(path):
        if limit is not None and len(labels) >= limit:
            break
        if not line.strip():
            continue
        text, _, label = line.rpartition("\t")
        if label.strip() not in ("0", "1") or not text.strip():
            raise DataError(f"{path}:{number}: expected 'sentence<TAB>0|1'")
        sentences.append(text.strip())
        labels.append(int(label))
    if not labels:
        raise DataError(f"{path}: no examples found")
    return sentences, np.asarray(labels, np.int32)


def _pack(preprocessor, sentences, chunk=8192):
    """BERT inputs of every sentence, padded to the longest: dict of int32 arrays."""
    parts = []
    for i in range(0, len(sentences), chunk):
        packed = preprocessor.pack(preprocessor.tokenize(sentences[i : i + chunk]))
        parts.append({k: v.numpy() for k, v in packed.items()})
    width = max(p["token_ids"].shape[1] for p in parts)
    return {
        k: np.concatenate(
            [np.pad(p[k], [(0, 0), (0, width - p[k].shape[1])]) for p in parts], axis=0
        )
        for k in parts[0]
    }


class BucketedBatches:
    """Batches of rows of similar length, each cut to its longest row.

    Rows are shuffled, grouped into pools of 50 batches, sorted by length
    inside a pool and cut into batches, whose order is shuffled again; every
    pass draws a new order (`shuffle=False` keeps the input order).
    `dataset(signature)` serves them as a `tf.data.Dataset` (whose batch
    widths may differ, which `keras.utils.PyDataset` does not allow).

    Args:
        make_batch: `fn(indices, width) -> batch` (a tuple `(x, y)`).
        lengths: int array, the length of each row.
        batch_size: int.
        shuffle: bool.
        seed: int.
    """

    def __init__(self, make_batch, lengths, batch_size, shuffle=True, seed=0):
        self.make_batch = make_batch
        self.lengths = np.asarray(lengths)
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.rng = np.random.default_rng(seed)

    def _plan(self):
        n = len(self.lengths)
        order = self.rng.permutation(n) if self.shuffle else np.arange(n)
        batches = []
        pool = self.batch_size * 50
        for start in range(0, n, pool):
            chunk = order[start : start + pool]
            if self.shuffle:
                chunk = chunk[np.argsort(self.lengths[chunk], kind="stable")]
            batches += [
                chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size)
            ]
        if self.shuffle:
            batches = [batches[i] for i in self.rng.permutation(len(batches))]
        return batches

    def __len__(self):
        return -(-len(self.lengths) // self.batch_size)

    def __iter__(self):
        for rows in self._plan():
            yield self.make_batch(rows, int(self.lengths[rows].max()))

    def dataset(self, output_signature):
        """A `tf.data.Dataset` of the batches (a new order on each pass)."""
        dataset = tf.data.Dataset.from_generator(
            lambda: iter(self), output_signature=output_signature
        )
        return dataset.apply(tf.data.experimental.assert_cardinality(len(self)))


def _ids_spec(*shape, dtype=tf.int32):
    return tf.TensorSpec(shape, dtype)


# === Steps ===


def parse_args(argv=None):
    """The command line; see the module docstring."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run-dir", default="runs/sst2", help="Output folder (created).")
    p.add_argument("--teacher", default="default", help="Spec for models.teachers.load_teacher.")
    p.add_argument("--sequence-length", type=int, default=64, help="Max tokens per sentence.")
    p.add_argument(
        "--teacher-train-limit",
        type=int,
        default=None,
        help="SST-2 training phrases (a random sample) the teacher is fine-tuned on "
        "(default: all 67,349).",
    )
    p.add_argument("--teacher-epochs", type=int, default=1)
    p.add_argument("--teacher-batch-size", type=int, default=32)
    p.add_argument("--teacher-learning-rate", type=float, default=1e-4)
    p.add_argument(
        "--train-limit", type=int, default=None, help="SST-2 training phrases for the students."
    )
    p.add_argument(
        "--augment-per-sentence",
        type=int,
        default=3,
        help="Synthetic transfer sentences drawn per training phrase (Tang et al.).",
    )
    p.add_argument(
        "--transfer-limit", type=int, default=None, help="Cap on the transfer set (gold first)."
    )
    p.add_argument("--epochs", type=int, default=3, help="Student epochs (both students).")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--learning-rate", type=float, default=2e-3)
    p.add_argument("--objective", choices=("logit_mse", "forward_kl"), default="logit_mse")
    p.add_argument("--alpha", type=float, default=0.5, help="Weight of the distillation term.")
    p.add_argument("--temperature", type=float, default=2.0, help="For --objective forward_kl.")
    p.add_argument("--embedding-dim", type=int, default=256)
    p.add_argument("--hidden-dim", type=int, default=150)
    p.add_argument("--dense-dim", type=int, default=200)
    p.add_argument("--pooling", choices=("max", "mean", "last"), default="max")
    p.add_argument("--dropout", type=float, default=0.2)
    p.add_argument(
        "--embedding-init",
        choices=("vocab", "pca", "random"),
        default="vocab",
        help="Student token embeddings: vocabulary distillation (each token alone through "
        "the encoder, PCA), the encoder's input embeddings by PCA, or random. The "
        "distilled student's come from the fine-tuned teacher, the labels-only "
        "student's from the encoder before fine-tuning.",
    )
    p.add_argument("--eval-limit", type=int, default=None, help="Dev/test sentences scored.")
    p.add_argument("--throughput-seconds", type=float, default=3.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--verbose", type=int, default=2, help="Keras fit verbosity.")
    return p.parse_args(argv)


def _teacher_classifier(args, teacher, train_sentences, train_labels, cache_dir):
    """Fine-tunes (or reloads) the teacher classifier; returns `(model, info)`."""
    settings = {
        "teacher": args.teacher,
        "train_limit": args.teacher_train_limit,
        "epochs": args.teacher_epochs,
        "batch_size": args.teacher_batch_size,
        "learning_rate": args.teacher_learning_rate,
        "sequence_length": args.sequence_length,
        "seed": args.seed,
    }
    path = cache_dir / "teacher_classifier.keras"
    info_path = cache_dir / "teacher_classifier.json"
    if path.is_file() and info_path.is_file():
        info = json.loads(info_path.read_text())
        if info.get("settings") == settings:
            return keras.saving.load_model(str(path)), {**info, "reused": True}
    rng = np.random.default_rng(args.seed)
    n = len(train_labels)
    limit = min(args.teacher_train_limit or n, n)
    rows = np.sort(rng.choice(n, size=limit, replace=False))
    packed = _pack(teacher.preprocessor, [train_sentences[i] for i in rows])
    labels = train_labels[rows]
    lengths = packed["padding_mask"].sum(axis=1)

    def make_batch(index, width):
        return {k: v[index, :width] for k, v in packed.items()}, labels[index]

    batches = BucketedBatches(make_batch, lengths, args.teacher_batch_size, seed=args.seed)
    signature = ({k: _ids_spec(None, None) for k in packed}, _ids_spec(None))
    keras.utils.set_random_seed(args.seed)
    model = build_classifier(teacher.encoder, 2, pooling="mean", name="teacher_classifier")
    steps = len(batches) * args.teacher_epochs
    warmup = max(1, steps // 10)
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0,
        decay_steps=max(1, steps - warmup),
        alpha=0.0,
        warmup_target=args.teacher_learning_rate,
        warmup_steps=warmup,
    )
    model.compile(
        optimizer=keras.optimizers.AdamW(schedule, weight_decay=0.01),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    start = time.perf_counter()
    model.fit(batches.dataset(signature), epochs=args.teacher_epochs, verbose=args.verbose)
    seconds = time.perf_counter() - start
    model.save(str(path))
    info = {"settings": settings, "train_examples": int(limit), "train_seconds": seconds}
    info_path.write_text(json.dumps(info, indent=2) + "\n")
    return model, {**info, "reused": False}


# `--embedding-init` names -> `models.student_init.student_embeddings` names.
_EMBEDDING_INITS = {"vocab": "vocab", "pca": "teacher", "random": "random"}


def _embeddings(args, encoder_teacher, cache_path):
    """Initial student token embeddings from `encoder_teacher` (`--embedding-init`).

    `"vocab"`: vocabulary distillation (Model2Vec), the raw per-token outputs
    cached at `cache_path`; `"pca"`: the encoder's input token embeddings,
    PCA-reduced; `"random"`: Keras' default initializer.
    """
    from models.student_init import student_embeddings

    init = student_embeddings(
        _EMBEDDING_INITS[args.embedding_init],
        encoder_teacher,
        args.embedding_dim,
        cache_path=cache_path,
        progress=args.verbose == 1,
    )
    return "uniform" if init is None else init


def fine_tuned_encoder(classifier, preprocessor):
    """The fine-tuned encoder inside `classifier` as a mean-pooled `Teacher`.

    Its output is the classifier's features (the input of its logits layer,
    `build_classifier(..., pooling="mean")`), not normalized.
    """
    encoders = [layer for layer in classifier.layers if hasattr(layer, "token_embedding")]
    if len(encoders) != 1:
        raise ValueError(
            f"Expected one BERT encoder inside {classifier.name!r}; found {len(encoders)}."
        )
    return Teacher(encoders[0], preprocessor, pooling="mean", normalize=False)


def _train_student(args, name, initializer, vocabulary_size, data, alpha, distillation_loss):
    """Builds and trains one BiLSTM student with the Distiller; returns `(model, info)`."""
    ids, lengths, teacher_logits, labels = data

    def make_batch(index, width):
        x = {"student": ids[index, :width], "teacher_outputs": teacher_logits[index]}
        return x, labels[index]

    keras.utils.set_random_seed(args.seed + 1)  # the same initial weights for both students
    student = build_bilstm_classifier(
        vocabulary_size,
        num_classes=2,
        embedding_dim=args.embedding_dim,
        hidden_dim=args.hidden_dim,
        dense_dim=args.dense_dim,
        pooling=args.pooling,
        dropout=args.dropout,
        embeddings_initializer=initializer,
        name=name,
    )
    distiller = Distiller(_NoTeacher(), student)
    batches = BucketedBatches(make_batch, lengths, args.batch_size, seed=args.seed + 2)
    steps = len(batches) * args.epochs
    distiller.compile(
        optimizer=keras.optimizers.Adam(
            keras.optimizers.schedules.CosineDecay(args.learning_rate, max(1, steps), alpha=0.05),
            clipnorm=5.0,
        ),
        student_loss=keras.losses.SparseCategoricalCrossentropy(
            from_logits=True, ignore_class=-100
        ),
        distillation_loss=distillation_loss,
        alpha=alpha,
    )
    start = time.perf_counter()
    signature = (
        {
            "student": _ids_spec(None, None),
            "teacher_outputs": _ids_spec(None, 2, dtype=tf.float32),
        },
        _ids_spec(None),
    )
    distiller.fit(batches.dataset(signature), epochs=args.epochs, verbose=args.verbose)
    seconds = time.perf_counter() - start
    return student, {"train_examples": int(len(lengths)), "steps": steps, "train_seconds": seconds}


class _NoTeacher:
    """Stands in for the teacher when every batch carries cached teacher logits."""

    def __call__(self, *args, **kwargs):
        raise RuntimeError("The teacher's logits must come cached with every batch.")


def load_export(path):
    """Loads a raw-text SavedModel export (registers the `tensorflow_text` ops first)."""
    import tensorflow_text  # noqa: F401

    return tf.saved_model.load(str(path))


def evaluate_export(path, sentences, labels, throughput_seconds, batch_size=64):
    """Accuracy (in %) and CPU throughput of an exported classifier on `sentences`."""
    classify = load_export(path).signatures["classify"]

    def run(batch):
        return classify(sentences=tf.constant(batch))["label"]

    predictions = np.concatenate(
        [run(sentences[i : i + batch_size]).numpy() for i in range(0, len(sentences), batch_size)]
    )
    accuracy = float(100.0 * np.mean(predictions == labels))
    speed = throughput(run, sentences, batch_size=batch_size, min_seconds=throughput_seconds)
    return accuracy, speed["sentences_per_second"]


def _report(metrics):
    rows = [
        ("teacher", "MiniLM-L6 + head, fine-tuned"),
        ("baseline", "BiLSTM, labels only"),
        ("distilled", f"BiLSTM, distilled ({metrics['settings']['objective']})"),
    ]
    init = metrics["settings"]["embedding_init"]
    embeddings = (
        " (random token embeddings)"
        if init == "random"
        else f" apart from the token embeddings ({init}: the labels-only student's from the "
        "encoder before fine-tuning, the distilled student's from the fine-tuned teacher)"
    )
    lines = [
        "# SST-2 distillation",
        "",
        f"Transfer set: {metrics['transfer_set']['gold']} gold phrases + "
        f"{metrics['transfer_set']['augmented']} augmented sentences. Teacher fine-tuned on "
        f"{metrics['teacher']['train_examples']} phrases "
        f"({metrics['teacher']['train_seconds']:.0f} s). Students: "
        f"{metrics['settings']['epochs']} epochs each, same initial weights{embeddings}.",
        "",
        "Accuracy and throughput measured through the exported SavedModels "
        "(`classify` signature, CPU, batch 64).",
        "",
        "| model | what | SST-2 dev acc. | SST-2 test acc. | sentences/s | params |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for key, what in rows:
        m = metrics[key]
        lines.append(
            f"| {key} | {what} | {m['dev_accuracy']:.2f} | {m['test_accuracy']:.2f} | "
            f"{m['sentences_per_second']:.0f} | {m['params']:,} |"
        )
    gain = metrics["distilled"]["dev_accuracy"] - metrics["baseline"]["dev_accuracy"]
    target = metrics["targets"]
    lines += [
        "",
        f"Distilled vs labels-only on dev: {gain:+.2f} points. Targets: dev >= "
        f"{target['dev_accuracy']} ({'met' if target['dev_met'] else 'not met'}), gain >= "
        f"+{target['gain']} ({'met' if target['gain_met'] else 'not met'}).",
    ]
    return "\n".join(lines) + "\n"


def main(argv=None):
    """Runs the recipe; returns the metrics dict (also in `run_dir/metrics.json`)."""
    args = parse_args(argv)
    run_dir = pathlib.Path(args.run_dir)
    cache_dir = run_dir / "cache"
    cache_dir.mkdir(parents=True, exist_ok=True)

    train_sentences, train_labels = read_sst2(
        os.path.join(SST2_DIR, "sentiment-train"), args.train_limit
    )
    dev_sentences, dev_labels = read_sst2(os.path.join(SST2_DIR, "sentiment-dev"), args.eval_limit)
    test_sentences, test_labels = read_sst2(
        os.path.join(SST2_DIR, "sentiment-test"), args.eval_limit
    )

    # 1. Teacher.
    teacher = load_teacher(args.teacher, sequence_length=args.sequence_length)
    preprocessor = teacher.preprocessor
    # The labels-only student's embeddings come from the encoder before
    # fine-tuning (which changes `teacher.encoder` in place), so that it learns
    # nothing from the fine-tuned teacher.
    baseline_init = _embeddings(args, teacher, cache_dir / "vocabulary_pretrained.npz")
    teacher_clf, teacher_info = _teacher_classifier(
        args, teacher, train_sentences, train_labels, cache_dir
    )

    # 2. Transfer set and the teacher's logits.
    gold = list(train_sentences)
    augmented = augment_sentences(gold, args.augment_per_sentence, seed=args.seed)
    sentences = gold + augmented
    labels = np.concatenate([train_labels, np.full(len(augmented), -100, np.int32)])
    if args.transfer_limit is not None:
        sentences, labels = sentences[: args.transfer_limit], labels[: args.transfer_limit]
    start = time.perf_counter()
    teacher_logits = cache_teacher_outputs(
        teacher_clf,
        sentences,
        cache_dir / "teacher_logits.npz",
        preprocessor=preprocessor,
        batch_size=128,
        progress=args.verbose == 1,
    ).astype(np.float32)
    teacher_pass_seconds = time.perf_counter() - start
    ids = _pack(preprocessor, sentences)["token_ids"]
    lengths = (ids != 0).sum(axis=1)
    gold_rows = np.flatnonzero(labels != -100)

    # 3. Students.
    distilled_init = _embeddings(
        args,
        fine_tuned_encoder(teacher_clf, preprocessor),
        cache_dir / "vocabulary_fine_tuned.npz",
    )
    vocabulary_size = len(preprocessor.vocabulary)
    baseline, baseline_info = _train_student(
        args,
        "bilstm_labels_only",
        baseline_init,
        vocabulary_size,
        (ids[gold_rows], lengths[gold_rows], teacher_logits[gold_rows], labels[gold_rows]),
        alpha=0.0,
        distillation_loss="logit_mse",
    )
    if args.objective == "logit_mse":
        distillation_loss = kd_losses.LogitMSE()
    else:
        distillation_loss = kd_losses.ForwardKL(temperature=args.temperature)
    distilled, distilled_info = _train_student(
        args,
        "bilstm_distilled",
        distilled_init,
        vocabulary_size,
        (ids, lengths, teacher_logits, labels),
        alpha=args.alpha,
        distillation_loss=distillation_loss,
    )

    # 4. Export and evaluate through the exports.
    results = {}
    for key, model, info in (
        ("teacher", teacher_clf, teacher_info),
        ("baseline", baseline, baseline_info),
        ("distilled", distilled, distilled_info),
    ):
        path = run_dir / ("student_export" if key == "distilled" else f"{key}_export")
        export_student(
            model,
            path,
            preprocessor=preprocessor,
            kind="classifier",
            from_logits=True,
            overwrite=True,
        )
        dev_accuracy, speed = evaluate_export(
            path, dev_sentences, dev_labels, args.throughput_seconds
        )
        test_accuracy, _ = evaluate_export(path, test_sentences, test_labels, 0.0)
        results[key] = {
            **{k: v for k, v in info.items() if k != "settings"},
            "export": path.name,
            "dev_accuracy": dev_accuracy,
            "test_accuracy": test_accuracy,
            "sentences_per_second": speed,
            "params": int(model.count_params()),
        }
        print(
            f"{key}: dev {dev_accuracy:.2f}, test {test_accuracy:.2f}, {speed:.0f} sentences/s",
            flush=True,
        )

    gain = results["distilled"]["dev_accuracy"] - results["baseline"]["dev_accuracy"]
    metrics = {
        "settings": vars(args),
        "dev_examples": len(dev_labels),
        "test_examples": len(test_labels),
        "transfer_set": {
            "gold": int(len(gold_rows)),
            "augmented": int(len(labels) - len(gold_rows)),
            "teacher_pass_seconds": teacher_pass_seconds,
        },
        **results,
        "targets": {
            "dev_accuracy": TARGET_DEV_ACCURACY,
            "gain": TARGET_GAIN,
            "dev_met": results["distilled"]["dev_accuracy"] >= TARGET_DEV_ACCURACY,
            "gain_met": gain >= TARGET_GAIN,
        },
    }
    write_text_atomic(run_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    report = _report(metrics)
    write_text_atomic(run_dir / "report.md", report)
    print(report)
    return metrics


if __name__ == "__main__":
    main()
