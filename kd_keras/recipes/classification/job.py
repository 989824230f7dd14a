"""The classification recipe, step by step: `run(config)`.

Distils a fine-tuned BERT classifier into a BiLSTM (Tang et al. 2019), on
the user's labeled files (`--train`, `--dev`, `--test`: CSV, TSV or JSON
lines, `kd_keras.data.read_labeled_texts`; the classes are the training
file's labels, sorted) or, by default, on SST-2. Steps, each cached under
`run_dir/cache/` so that a rerun skips what is done:

1. Teacher (`kd_keras.recipes.classification.teacher`): either an encoder
   (the offline all-MiniLM-L6-v2 by default, any `load_teacher` spec) with a
   classification head (`kd_keras.models.heads.build_classifier`, mean
   pooling), fine-tuned here on (a `teacher_train_limit` sample of) the
   training texts and saved as `cache/teacher_classifier.keras` (its
   settings in `cache/teacher_classifier.json`); or a classifier that is
   already fine-tuned, used as it is: a Hugging Face
   `BertForSequenceClassification` folder or a `.keras` classifier, its
   outputs mapped onto the training classes.
2. Transfer set: the training texts (gold labels) plus synthetic ones made
   by masking and n-gram sampling (`kd_keras.transfer.augment_sentences`,
   no label); the teacher's logits on all of them are cached
   (`kd_keras.teacher_pass.cache_teacher_outputs`).
3. Students: two BiLSTM classifiers (`kd_keras.models.classifier`) of the
   same shape, same initial weights apart from the token embeddings, same
   epochs, same optimizer, trained with `kd_keras.Distiller(None, student)`
   on the cached logits:

   - the labels-only student: cross-entropy on the gold texts; its token
     embeddings by vocabulary distillation (each token alone through the
     encoder, PCA: `kd_keras.teacher_pass.vocabulary_outputs`, cached as
     `cache/vocabulary_pretrained.npz`, then
     `kd_keras.models.student_init.student_embeddings`) from the encoder
     *before* fine-tuning, so that it learns nothing from the fine-tuned
     teacher (with a given classifier there is no such encoder: both
     students start from the given classifier's encoder, and only their
     objectives differ);
   - the distilled student: `alpha * LogitMSE(teacher, student) + (1 - alpha) *
     cross-entropy` over the transfer set (`objective="forward_kl"` for the
     temperature KL instead), the cross-entropy only on gold rows (label -100
     elsewhere); its token embeddings by vocabulary distillation through the
     fine-tuned teacher (`fine_tuned_encoder`, cached as
     `cache/vocabulary_fine_tuned.npz`), which already carry the teacher's
     knowledge.
   `embedding_init="pca"` takes the encoders' input embeddings instead. Both
   take the teacher's WordPiece ids, so all three models share one tokenizer.
4. Export and evaluation: each model is exported as a raw-text SavedModel
   with a `classify` signature (`kd_keras.serving.export_student(...,
   kind="classifier")`: class probabilities in the order of the classes,
   which its `assets.extra/kd_keras_export.json` lists as `classes`), and
   its dev and test accuracy and CPU throughput (sentences/s, batch 64) are
   measured through that export.

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
from kd_keras.data import DataError, data_path, read_labeled_texts, read_sst2
from kd_keras.evaluation import throughput
from kd_keras.models.classifier import build_bilstm_classifier
from kd_keras.models.student_init import student_embeddings
from kd_keras.phases import Phases
from kd_keras.progress import log
from kd_keras.recipes.classification.config import ClassificationConfig
from kd_keras.recipes.classification.preflight import preflight
from kd_keras.recipes.classification.report import report_text
from kd_keras.recipes.classification.teacher import (
    fine_tune_teacher,
    fine_tuned_encoder,
    given_classifier,
    open_teacher,
    pack_texts,
)
from kd_keras.recipes.config import ConfigError
from kd_keras.serving import METADATA_PATH, export_student, load_text_export
from kd_keras.storage import (
    atomic_path,
    folder_lock,
    phase,
    write_json_atomic,
    write_text_atomic,
)
from kd_keras.teacher_pass import cache_teacher_outputs, vocabulary_outputs
from kd_keras.transfer import augment_sentences

__all__ = ["evaluate_export", "fine_tuned_encoder", "run"]

# `embedding_init` names -> `kd_keras.models.student_init.student_embeddings` names.
_EMBEDDING_INITS = {"vocab": "vocab", "pca": "teacher", "random": "random"}


def _log(message):
    log(message, prefix="kd-keras distill-classifier")


# === Data ===


def _load_data(c):
    """`(data, classes, files)`: `data` is `{split: (texts, int32 class indices)}`
    (no `"test"` without a test file), `files` the paths read."""
    if c.train is None:
        names = {"train": "sentiment-train", "dev": "sentiment-dev", "test": "sentiment-test"}
        files = {
            split: data_path("sst2", name, override=c.data_dir) for split, name in names.items()
        }
        limits = {"train": c.train_limit, "dev": c.eval_limit, "test": c.eval_limit}
        data = {split: read_sst2(path, limits[split]) for split, path in files.items()}
        return data, [0, 1], files
    files = {"train": c.train, "dev": c.dev, **({"test": c.test} if c.test else {})}
    columns = {"text": c.text, "label": c.label}
    texts, labels, classes = read_labeled_texts(c.train, **columns, limit=c.train_limit)
    if len(classes) < 2:
        raise DataError(f"{c.train}: one class only ({classes[0]!r}); a classifier needs two")
    data = {"train": (texts, labels)}
    for split in ("dev", "test"):
        if split in files:
            read = read_labeled_texts(files[split], **columns, classes=classes, limit=c.eval_limit)
            data[split] = read[:2]
    return data, classes, files


def _ids_spec(*shape, dtype=tf.int32):
    return tf.TensorSpec(shape, dtype)


# === 1. Teacher ===


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


def _teacher(c, train, classes, cache_dir):
    """The teacher classifier and the students' initial embeddings.

    Returns:
        `(teacher classifier, preprocessor, info, (baseline init, distilled init))`.
    """
    kind, loaded = open_teacher(c)
    if kind == "encoder":
        # The labels-only student's embeddings come from the encoder before
        # fine-tuning (which changes `teacher.encoder` in place), so that it
        # learns nothing from the fine-tuned teacher.
        preprocessor = loaded.preprocessor
        baseline_init = _embeddings(c, loaded, cache_dir / "vocabulary_pretrained.npz")
        model, info = fine_tune_teacher(c, loaded, train, classes, cache_dir)
        info = {"fine_tuned_here": True, "source": c.teacher, **info}
        done = "reused" if info["reused"] else f"{info['train_seconds']:.0f} s"
        _log(f"teacher: {c.teacher} fine-tuned on {info['train_examples']} texts ({done})")
    else:
        model, preprocessor, info = given_classifier(c, loaded, classes)
        _log(f"teacher: {c.teacher}, already fine-tuned, used as it is ({info['outputs']})")
    encoder = None
    if c.embedding_init != "random":
        try:
            encoder = fine_tuned_encoder(model, preprocessor)
        except ValueError:
            raise ConfigError(
                f"--embedding-init {c.embedding_init} needs a BERT encoder inside the teacher "
                f"{c.teacher}; pass --embedding-init random."
            ) from None
    distilled_init = _embeddings(c, encoder, cache_dir / "vocabulary_fine_tuned.npz")
    if kind != "encoder":
        baseline_init = distilled_init
    return model, preprocessor, info, (baseline_init, distilled_init)


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

    num_classes = int(teacher_logits.shape[1])
    keras.utils.set_random_seed(c.seed + 1)  # the same initial weights for both students
    student = build_bilstm_classifier(
        vocabulary_size,
        num_classes=num_classes,
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
            "teacher_outputs": _ids_spec(None, num_classes, dtype=tf.float32),
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


def _students(c, preprocessor, transfer, inits, run_dir, phases):
    """The labels-only and the distilled student: `{key: (model, info)}`.

    Each is a phase of its own (`train_baseline`, `train_distilled`): saved
    as `students/NAME.keras` with its marker, and loaded from there by a rerun
    after a kill instead of trained again.
    """
    ids, lengths, teacher_logits, labels = transfer
    baseline_init, distilled_init = inits
    gold_rows = np.flatnonzero(labels != -100)
    vocabulary_size = len(preprocessor.vocabulary)
    if c.objective == "logit_mse":
        distillation_loss = kd_losses.LogitMSE()
    else:
        distillation_loss = kd_losses.ForwardKL(temperature=c.temperature)
    plans = {
        "baseline": (
            "bilstm_labels_only",
            baseline_init,
            (ids[gold_rows], lengths[gold_rows], teacher_logits[gold_rows], labels[gold_rows]),
            0.0,
            "logit_mse",
        ),
        "distilled": (
            "bilstm_distilled",
            distilled_init,
            (ids, lengths, teacher_logits, labels),
            c.alpha,
            distillation_loss,
        ),
    }
    students = {}
    for key, (name, init, data, alpha, loss) in plans.items():
        path = f"students/{name}.keras"
        info = phases.reused(f"train_{key}", [path])
        if info is None:
            model, info = _train_student(c, name, init, vocabulary_size, data, alpha, loss)
            (run_dir / "students").mkdir(exist_ok=True)
            with atomic_path(run_dir / path) as tmp:
                model.save(tmp)
            info = phases.mark(f"train_{key}", info, [path])
        else:
            model = keras.models.load_model(run_dir / path)
        students[key] = (model, info)
    return students


# === 4. Export and evaluation ===


def evaluate_export(path, sentences, labels, throughput_seconds, batch_size=64, more=()):
    """Accuracy (in %) and CPU throughput of an exported classifier on `sentences`.

    Args:
        path: the export folder (a `classify` signature).
        sentences, labels: list of str and int class indices.
        throughput_seconds: float. Seconds of the throughput measurement.
        batch_size: int.
        more: `(sentences, labels)` sets scored too, through the same load.

    Returns:
        `(accuracy, sentences per second)`, then one more accuracy per `more` set.
    """
    classify = load_text_export(path).signatures["classify"]

    def run_batch(batch):
        return classify(sentences=tf.constant(batch))["label"]

    def accuracy(texts, gold):
        predictions = np.concatenate(
            [run_batch(texts[i : i + batch_size]).numpy() for i in range(0, len(texts), batch_size)]
        )
        return float(100.0 * np.mean(predictions == gold))

    speed = throughput(run_batch, sentences, batch_size=batch_size, min_seconds=throughput_seconds)
    scores = [accuracy(texts, gold) for texts, gold in more]
    return (accuracy(sentences, labels), speed["sentences_per_second"], *scores)


def _record_classes(path, classes):
    """Adds the classes, in the order of the `classify` probabilities, to an export's
    metadata (`assets.extra/kd_keras_export.json`)."""
    metadata_path = pathlib.Path(path) / METADATA_PATH
    metadata = json.loads(metadata_path.read_text(encoding="utf-8"))
    write_json_atomic(metadata_path, {**metadata, "classes": list(classes)})


def _export_and_evaluate(c, run_dir, preprocessor, models, data, classes, phases):
    """Exports each model and scores it through its export: `{key: results}`.

    Each model's export and scores are a phase (`export_KEY`), reused by a
    rerun after a kill.
    """
    results = {}
    for key, (model, info) in models.items():
        path = run_dir / ("student_export" if key == "distilled" else f"{key}_export")
        done = phases.reused(f"export_{key}", [path.name])
        if done is not None:
            results[key] = done
            continue
        export_student(
            model,
            path,
            preprocessor=preprocessor,
            kind="classifier",
            from_logits=True,
            overwrite=True,
        )
        _record_classes(path, classes)
        more = [data["test"]] if "test" in data else []
        dev_accuracy, speed, *test = evaluate_export(
            path, *data["dev"], c.throughput_seconds, more=more
        )
        test_accuracy = test[0] if test else None
        results[key] = {
            **{k: v for k, v in info.items() if k != "settings"},
            "export": path.name,
            "dev_accuracy": dev_accuracy,
            "test_accuracy": test_accuracy,
            "sentences_per_second": speed,
            "params": int(model.count_params()),
        }
        results[key] = phases.mark(f"export_{key}", results[key], [path.name])
        test = "" if test_accuracy is None else f", test {test_accuracy:.2f}"
        _log(f"{key}: dev {dev_accuracy:.2f}{test}, {speed:.0f} sentences/s")
    return results


def _metrics(c, data, classes, files, labels, teacher_pass_seconds, results):
    """The metrics dict of `metrics.json` (and of the report)."""
    gold = int(np.sum(labels != -100))
    return {
        "settings": dataclasses.asdict(c),
        "data": {
            "sst2": c.train is None,
            "files": files,
            "classes": list(classes),
            "train_examples": len(data["train"][1]),
        },
        "dev_examples": len(data["dev"][1]),
        "test_examples": len(data["test"][1]) if "test" in data else None,
        "transfer_set": {
            "gold": gold,
            "augmented": int(len(labels) - gold),
            "teacher_pass_seconds": teacher_pass_seconds,
        },
        **results,
    }


# === The recipe ===

# Settings that change no phase's outcome: where the run goes, Keras' verbosity.
UNFINGERPRINTED = ("run_dir", "fit_verbose")


def run(config=None):
    """Runs the recipe; returns the metrics dict (also in `run_dir/metrics.json`).

    Args:
        config: `ClassificationConfig` (defaults to all defaults).
    """
    c = config or ClassificationConfig()
    c.validate()
    preflight(c)  # its files and folders, before anything is written
    run_dir = pathlib.Path(c.run_dir)
    cache_dir = run_dir / "cache"
    cache_dir.mkdir(parents=True, exist_ok=True)
    with folder_lock(run_dir, "kd-keras distill-classifier", flag="--run-dir"):
        return _run(c, run_dir, cache_dir)


def _run(c, run_dir, cache_dir):
    """The recipe's steps, with the run folder held."""
    _log(f"output: {run_dir}")
    data, classes, files = _load_data(c)
    _log(f"data: {len(data['train'][1])} training texts, {len(classes)} classes")

    # 1. Teacher and the students' initial embeddings.
    with phase("teacher training"):
        teacher_clf, preprocessor, teacher_info, inits = _teacher(
            c, data["train"], classes, cache_dir
        )

    # 2. Transfer set and the teacher's logits.
    sentences, labels = _transfer_set(c, *data["train"])
    with phase("teacher pass"):
        teacher_logits, teacher_pass_seconds = _teacher_logits(
            c, teacher_clf, preprocessor, sentences, cache_dir
        )
    _log(f"transfer set: {len(sentences)} sentences, teacher pass {teacher_pass_seconds:.0f} s")
    ids = pack_texts(preprocessor, sentences)["token_ids"]
    lengths = (ids != 0).sum(axis=1)

    # 3. Students.
    settings = dataclasses.asdict(c)
    phases = Phases(run_dir, {k: settings[k] for k in settings if k not in UNFINGERPRINTED}, _log)
    transfer = (ids, lengths, teacher_logits, labels)
    with phase("training"):
        students = _students(c, preprocessor, transfer, inits, run_dir, phases)

    # 4. Export and evaluate through the exports.
    models = {"teacher": (teacher_clf, teacher_info), **students}
    with phase("export"):
        results = _export_and_evaluate(c, run_dir, preprocessor, models, data, classes, phases)
    metrics = _metrics(c, data, classes, files, labels, teacher_pass_seconds, results)
    report = report_text(metrics)
    with phase("report"):
        write_json_atomic(run_dir / "metrics.json", metrics)
        write_text_atomic(run_dir / "report.md", report)
    print(report)
    return metrics
