"""The SST-2 classification recipe, step by step: `run(config)`.

Distils a fine-tuned MiniLM into a BiLSTM (Tang et al. 2019). Steps, each
cached under `run_dir/cache/` so that a rerun skips what is done:

1. Teacher: the offline all-MiniLM-L6-v2 encoder
   (`kd_keras.models.teachers.load_teacher`) with a classification head
   (`kd_keras.models.heads.build_classifier`, mean pooling), fine-tuned on (a
   `teacher_train_limit` sample of) the 67,349 SST-2 training phrases; saved
   as `cache/teacher_classifier.keras` (its settings in
   `cache/teacher_classifier.json`).
2. Transfer set: the SST-2 training phrases (gold labels) plus synthetic ones
   made by masking and n-gram sampling (`kd_keras.transfer.augment_sentences`,
   no label); the teacher's logits on all of them are cached
   (`kd_keras.teacher_pass.cache_teacher_outputs`).
3. Students: two BiLSTM classifiers (`kd_keras.models.classifier`) of the
   same shape, same initial weights apart from the token embeddings, same
   epochs, same optimizer, trained with `kd_keras.Distiller(None, student)`
   on the cached logits:
   - the labels-only student: cross-entropy on the gold phrases; its token
     embeddings by vocabulary distillation (each token alone through the
     encoder, PCA: `kd_keras.teacher_pass.vocabulary_outputs`, cached as
     `cache/vocabulary_pretrained.npz`, then
     `kd_keras.models.student_init.student_embeddings`) from the encoder
     *before* fine-tuning, so that it learns nothing from the fine-tuned
     teacher;
   - the distilled student: `alpha * LogitMSE(teacher, student) + (1 - alpha) *
     cross-entropy` over the transfer set (`objective="forward_kl"` for the
     temperature KL instead), the cross-entropy only on gold rows (label -100
     elsewhere); its token embeddings by vocabulary distillation through the
     fine-tuned teacher (`fine_tuned_encoder`, cached as
     `cache/vocabulary_fine_tuned.npz`), which already carry the teacher's
     sentiment.
   `embedding_init="pca"` takes the encoders' input embeddings instead. Both
   take the teacher's WordPiece ids, so all three models share one tokenizer.
4. Export and evaluation: each model is exported as a raw-text SavedModel
   with a `classify` signature (`kd_keras.serving.export_student(...,
   kind="classifier")`), and its SST-2 dev and test accuracy and CPU
   throughput (sentences/s, batch 64) are measured through that export.

The run directory gets `teacher_export/`, `baseline_export/`,
`student_export/` (the distilled student), `metrics.json` and `report.md`
(`kd_keras.recipes.classification.report`).
"""

import dataclasses
import json
import pathlib
import time

import keras
import numpy as np
import tensorflow as tf

from kd_keras import Distiller
from kd_keras import losses as kd_losses
from kd_keras.batching import BucketedBatches
from kd_keras.checkpoints import StopOnNonFiniteLoss
from kd_keras.data import data_path, read_sst2
from kd_keras.evaluation import throughput
from kd_keras.models.classifier import build_bilstm_classifier
from kd_keras.models.heads import build_classifier
from kd_keras.models.student_init import student_embeddings
from kd_keras.models.teachers import Teacher, load_teacher
from kd_keras.progress import log
from kd_keras.recipes.classification.config import ClassificationConfig
from kd_keras.recipes.classification.report import report_text
from kd_keras.serving import export_student, load_text_export
from kd_keras.storage import atomic_path, write_json_atomic, write_text_atomic
from kd_keras.teacher_pass import cache_teacher_outputs, vocabulary_outputs
from kd_keras.transfer import augment_sentences

__all__ = ["TARGET_DEV_ACCURACY", "TARGET_GAIN", "evaluate_export", "fine_tuned_encoder", "run"]

TARGET_DEV_ACCURACY = 88.0
TARGET_GAIN = 1.5

# `embedding_init` names -> `kd_keras.models.student_init.student_embeddings` names.
_EMBEDDING_INITS = {"vocab": "vocab", "pca": "teacher", "random": "random"}


def _log(message):
    log(message, prefix="kd-keras distill-classifier")


# === Data ===


def _load_sst2(c):
    """`{split: (sentences, int32 labels)}` of the SST-2 train, dev and test files."""
    files = {"train": "sentiment-train", "dev": "sentiment-dev", "test": "sentiment-test"}
    limits = {"train": c.train_limit, "dev": c.eval_limit, "test": c.eval_limit}
    return {
        split: read_sst2(data_path("sst2", name, override=c.data_dir), limits[split])
        for split, name in files.items()
    }


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


def _ids_spec(*shape, dtype=tf.int32):
    return tf.TensorSpec(shape, dtype)


# === 1. Teacher ===


def _teacher_settings(c):
    """What the cached teacher classifier depends on."""
    return {
        "teacher": c.teacher,
        "train_limit": c.teacher_train_limit,
        "epochs": c.teacher_epochs,
        "batch_size": c.teacher_batch_size,
        "learning_rate": c.teacher_learning_rate,
        "sequence_length": c.sequence_length,
        "seed": c.seed,
    }


def _teacher_classifier(c, teacher, train_sentences, train_labels, cache_dir):
    """Fine-tunes (or reloads) the teacher classifier; returns `(model, info)`."""
    settings = _teacher_settings(c)
    path = cache_dir / "teacher_classifier.keras"
    info_path = cache_dir / "teacher_classifier.json"
    if path.is_file() and info_path.is_file():
        info = json.loads(info_path.read_text())
        if info.get("settings") == settings:
            return keras.saving.load_model(str(path)), {**info, "reused": True}
    rng = np.random.default_rng(c.seed)
    n = len(train_labels)
    limit = min(c.teacher_train_limit or n, n)
    rows = np.sort(rng.choice(n, size=limit, replace=False))
    packed = _pack(teacher.preprocessor, [train_sentences[i] for i in rows])
    labels = train_labels[rows]
    lengths = packed["padding_mask"].sum(axis=1)

    def make_batch(index, width):
        return {k: v[index, :width] for k, v in packed.items()}, labels[index]

    batches = BucketedBatches(make_batch, lengths, c.teacher_batch_size, seed=c.seed)
    signature = ({k: _ids_spec(None, None) for k in packed}, _ids_spec(None))
    keras.utils.set_random_seed(c.seed)
    model = build_classifier(teacher.encoder, 2, pooling="mean", name="teacher_classifier")
    steps = len(batches) * c.teacher_epochs
    warmup = max(1, steps // 10)
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0,
        decay_steps=max(1, steps - warmup),
        alpha=0.0,
        warmup_target=c.teacher_learning_rate,
        warmup_steps=warmup,
    )
    model.compile(
        optimizer=keras.optimizers.AdamW(schedule, weight_decay=0.01),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    start = time.perf_counter()
    model.fit(
        batches.dataset(signature),
        epochs=c.teacher_epochs,
        verbose=c.fit_verbose,
        callbacks=[StopOnNonFiniteLoss()],
        shuffle=False,  # the batches shuffle themselves (Keras would warn that it ignores this)
    )
    seconds = time.perf_counter() - start
    with atomic_path(path) as tmp:
        model.save(str(tmp))
    info = {"settings": settings, "train_examples": int(limit), "train_seconds": seconds}
    write_json_atomic(info_path, info)
    return model, {**info, "reused": False}


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


def _embeddings(c, encoder_teacher, cache_path):
    """Initial student token embeddings from `encoder_teacher` (`embedding_init`).

    `"vocab"`: vocabulary distillation (Model2Vec), the raw per-token outputs
    cached at `cache_path`; `"pca"`: the encoder's input token embeddings,
    PCA-reduced; `"random"`: Keras' default initializer.
    """
    init = _EMBEDDING_INITS[c.embedding_init]
    token_outputs = None
    if init == "vocab":
        token_outputs = vocabulary_outputs(encoder_teacher, cache_path, progress=c.fit_verbose == 1)
    embeddings = student_embeddings(init, encoder_teacher, c.embedding_dim, token_outputs)
    return "uniform" if embeddings is None else embeddings


# === 2. Transfer set ===


def _transfer_set(c, train_sentences, train_labels):
    """Gold phrases then augmented ones: `(sentences, labels)`, label -100 for augmented."""
    gold = list(train_sentences)
    augmented = augment_sentences(gold, c.augment_per_sentence, seed=c.seed)
    sentences = gold + augmented
    labels = np.concatenate([train_labels, np.full(len(augmented), -100, np.int32)])
    if c.transfer_limit is not None:
        sentences, labels = sentences[: c.transfer_limit], labels[: c.transfer_limit]
    return sentences, labels


def _teacher_logits(c, teacher_clf, preprocessor, sentences, cache_dir):
    """The teacher's logits on the transfer set (cached): `(float32 logits, seconds)`."""
    start = time.perf_counter()
    logits = cache_teacher_outputs(
        teacher_clf,
        sentences,
        cache_dir / "teacher_logits.npz",
        preprocessor=preprocessor,
        batch_size=128,
        progress=c.fit_verbose == 1,
    ).astype(np.float32)
    return logits, time.perf_counter() - start


# === 3. Students ===


def _train_student(c, name, initializer, vocabulary_size, data, alpha, distillation_loss):
    """Builds and trains one BiLSTM student with the Distiller; returns `(model, info)`."""
    ids, lengths, teacher_logits, labels = data

    def make_batch(index, width):
        x = {"student": ids[index, :width], "teacher_outputs": teacher_logits[index]}
        return x, labels[index]

    keras.utils.set_random_seed(c.seed + 1)  # the same initial weights for both students
    student = build_bilstm_classifier(
        vocabulary_size,
        num_classes=2,
        embedding_dim=c.embedding_dim,
        hidden_dim=c.hidden_dim,
        dense_dim=c.dense_dim,
        pooling=c.pooling,
        dropout=c.dropout,
        embeddings_initializer=initializer,
        name=name,
    )
    # No teacher object: every batch carries the teacher's cached logits.
    distiller = Distiller(None, student)
    batches = BucketedBatches(make_batch, lengths, c.batch_size, seed=c.seed + 2)
    steps = len(batches) * c.epochs
    distiller.compile(
        optimizer=keras.optimizers.Adam(
            keras.optimizers.schedules.CosineDecay(c.learning_rate, max(1, steps), alpha=0.05),
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
    distiller.fit(
        batches.dataset(signature),
        epochs=c.epochs,
        verbose=c.fit_verbose,
        callbacks=[StopOnNonFiniteLoss()],
        shuffle=False,  # the batches shuffle themselves (Keras would warn that it ignores this)
    )
    seconds = time.perf_counter() - start
    return student, {"train_examples": int(len(lengths)), "steps": steps, "train_seconds": seconds}


def _students(c, preprocessor, transfer, inits):
    """The labels-only and the distilled student: `{key: (model, info)}`."""
    ids, lengths, teacher_logits, labels = transfer
    baseline_init, distilled_init = inits
    gold_rows = np.flatnonzero(labels != -100)
    vocabulary_size = len(preprocessor.vocabulary)
    baseline = _train_student(
        c,
        "bilstm_labels_only",
        baseline_init,
        vocabulary_size,
        (ids[gold_rows], lengths[gold_rows], teacher_logits[gold_rows], labels[gold_rows]),
        alpha=0.0,
        distillation_loss="logit_mse",
    )
    if c.objective == "logit_mse":
        distillation_loss = kd_losses.LogitMSE()
    else:
        distillation_loss = kd_losses.ForwardKL(temperature=c.temperature)
    distilled = _train_student(
        c,
        "bilstm_distilled",
        distilled_init,
        vocabulary_size,
        (ids, lengths, teacher_logits, labels),
        alpha=c.alpha,
        distillation_loss=distillation_loss,
    )
    return {"baseline": baseline, "distilled": distilled}


# === 4. Export and evaluation ===


def evaluate_export(path, sentences, labels, throughput_seconds, batch_size=64):
    """Accuracy (in %) and CPU throughput of an exported classifier on `sentences`."""
    classify = load_text_export(path).signatures["classify"]

    def run_batch(batch):
        return classify(sentences=tf.constant(batch))["label"]

    predictions = np.concatenate(
        [
            run_batch(sentences[i : i + batch_size]).numpy()
            for i in range(0, len(sentences), batch_size)
        ]
    )
    accuracy = float(100.0 * np.mean(predictions == labels))
    speed = throughput(run_batch, sentences, batch_size=batch_size, min_seconds=throughput_seconds)
    return accuracy, speed["sentences_per_second"]


def _export_and_evaluate(c, run_dir, preprocessor, models, dev, test):
    """Exports each model and scores it through its export: `{key: results}`."""
    results = {}
    for key, (model, info) in models.items():
        path = run_dir / ("student_export" if key == "distilled" else f"{key}_export")
        export_student(
            model,
            path,
            preprocessor=preprocessor,
            kind="classifier",
            from_logits=True,
            overwrite=True,
        )
        dev_accuracy, speed = evaluate_export(path, *dev, c.throughput_seconds)
        test_accuracy, _ = evaluate_export(path, *test, 0.0)
        results[key] = {
            **{k: v for k, v in info.items() if k != "settings"},
            "export": path.name,
            "dev_accuracy": dev_accuracy,
            "test_accuracy": test_accuracy,
            "sentences_per_second": speed,
            "params": int(model.count_params()),
        }
        _log(f"{key}: dev {dev_accuracy:.2f}, test {test_accuracy:.2f}, {speed:.0f} sentences/s")
    return results


def _metrics(c, data, labels, teacher_pass_seconds, results):
    """The metrics dict of `metrics.json` (and of the report)."""
    gold = int(np.sum(labels != -100))
    gain = results["distilled"]["dev_accuracy"] - results["baseline"]["dev_accuracy"]
    return {
        "settings": dataclasses.asdict(c),
        "dev_examples": len(data["dev"][1]),
        "test_examples": len(data["test"][1]),
        "transfer_set": {
            "gold": gold,
            "augmented": int(len(labels) - gold),
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


# === The recipe ===


def run(config=None):
    """Runs the recipe; returns the metrics dict (also in `run_dir/metrics.json`).

    Args:
        config: `ClassificationConfig` (defaults to all defaults).
    """
    c = config or ClassificationConfig()
    c.validate()
    run_dir = pathlib.Path(c.run_dir)
    cache_dir = run_dir / "cache"
    cache_dir.mkdir(parents=True, exist_ok=True)
    _log(f"output: {run_dir}")
    data = _load_sst2(c)
    train_sentences, train_labels = data["train"]

    # 1. Teacher. The labels-only student's embeddings come from the encoder
    # before fine-tuning (which changes `teacher.encoder` in place), so that it
    # learns nothing from the fine-tuned teacher.
    teacher = load_teacher(c.teacher, sequence_length=c.sequence_length)
    preprocessor = teacher.preprocessor
    baseline_init = _embeddings(c, teacher, cache_dir / "vocabulary_pretrained.npz")
    teacher_clf, teacher_info = _teacher_classifier(
        c, teacher, train_sentences, train_labels, cache_dir
    )
    done = "reused" if teacher_info["reused"] else f"{teacher_info['train_seconds']:.0f} s"
    _log(f"teacher: fine-tuned on {teacher_info['train_examples']} phrases ({done})")

    # 2. Transfer set and the teacher's logits.
    sentences, labels = _transfer_set(c, train_sentences, train_labels)
    teacher_logits, teacher_pass_seconds = _teacher_logits(
        c, teacher_clf, preprocessor, sentences, cache_dir
    )
    _log(f"transfer set: {len(sentences)} sentences, teacher pass {teacher_pass_seconds:.0f} s")
    ids = _pack(preprocessor, sentences)["token_ids"]
    lengths = (ids != 0).sum(axis=1)

    # 3. Students.
    distilled_init = _embeddings(
        c, fine_tuned_encoder(teacher_clf, preprocessor), cache_dir / "vocabulary_fine_tuned.npz"
    )
    students = _students(
        c, preprocessor, (ids, lengths, teacher_logits, labels), (baseline_init, distilled_init)
    )

    # 4. Export and evaluate through the exports.
    models = {"teacher": (teacher_clf, teacher_info), **students}
    results = _export_and_evaluate(c, run_dir, preprocessor, models, data["dev"], data["test"])
    metrics = _metrics(c, data, labels, teacher_pass_seconds, results)
    write_json_atomic(run_dir / "metrics.json", metrics)
    report = report_text(metrics)
    write_text_atomic(run_dir / "report.md", report)
    print(report)
    return metrics
