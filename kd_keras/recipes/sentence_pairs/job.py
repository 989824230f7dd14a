"""The sentence-pair recipe, step by step: `run(config)`.

1. the teacher (default: offline all-MiniLM-L6-v2) over a transfer set: the
   training pairs, unlabeled sentences (SST-2 phrases by default) and Tang et
   al. augmentation (`kd_keras.transfer`); its embeddings cached on disk
   (`kd_keras.teacher_pass`);
2. a siamese student (BiLSTM with vocabulary-distillation embeddings, or a
   tiny BERT from the teacher's layers), trained with `kd_keras.Distiller` on
   the cached teacher outputs (`embedding`, `score` or `soft_label`
   objective, mixed with the gold score through `alpha`), checkpointed
   `checkpoints_per_epoch` times an epoch;
3. the student saved as `student.keras` (+ its tokenizer sidecar), both
   models exported as raw-text SavedModels (`kd_keras.serving`) and measured
   on the same path, each in a fresh process: test Spearman and Pearson,
   parameters, size on disk, CPU sentences per second;
4. `metrics.json`, `report.md` and PNG plots in the run folder.

Ctrl-C leaves a resumable run: run the same command with `--output-dir` of
that run to continue from its last checkpoint. A rerun reuses the teacher
cache, the vocabulary distillation and the teacher's export.
"""

import dataclasses
import os
import pathlib
import time

from kd_keras.progress import log
from kd_keras.recipes.config import ConfigError
from kd_keras.recipes.sentence_pairs.config import DistillConfig
from kd_keras.storage import digest, directory_size, write_json_atomic

__all__ = ["run"]


def _log(message):
    log(message, prefix="kd-keras distill")


# === Steps ===


def _writable_folder(path, flag):
    """Creates `path` if needed; a clear `ConfigError` if it is a file or not writable."""
    folder = pathlib.Path(path)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{flag} {folder} exists and is not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"{flag} {folder} cannot be created ({e.strerror})") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag} {folder} is not writable")
    return folder.resolve()


def _load_data(c):
    """`({split: (a, b, scores)}, unlabeled sentences)`."""
    import numpy as np

    from kd_keras.data import corpus_files, read_pairs, read_sentences

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
        # Several files or globs, comma-separated, plain or .gz; the first
        # tab-separated field of each line (a plain line is all of it).
        files = corpus_files(p.strip() for p in c.unlabeled.split(",") if p.strip())
        unlabeled = [s for path in files for s in read_sentences(path)]
        order = np.random.default_rng(c.seed).permutation(len(unlabeled))[: c.unlabeled_limit]
        unlabeled = [unlabeled[i] for i in order]
    return data, unlabeled


def _teacher_tables(c, teacher, transfer, dev, cache, progress):
    """The teacher's embeddings of the transfer and dev sentences (cached)."""
    from kd_keras.teacher_pass import cache_teacher_outputs

    dev_sentences = list(dev[0]) + list(dev[1])
    tables = []
    for sentences in (transfer.sentences, dev_sentences):
        path = cache / f"teacher-{digest(c.teacher, sentences)}.npz"
        tables.append(cache_teacher_outputs(teacher, sentences, path, progress=progress))
    return tables


def _build_student(c, teacher, cache, progress):
    """The student's sentence encoder: token inputs to a unit-norm embedding."""
    from kd_keras.models.student_init import student_embeddings
    from kd_keras.teacher_pass import vocabulary_outputs

    width = int(teacher.output.shape[-1])
    vocabulary_size = len(teacher.preprocessor.vocabulary)
    if c.student == "bilstm":
        from kd_keras.models.bilstm import build_bilstm_encoder

        token_outputs = None
        if c.embedding_init == "vocab":
            # Raw per-token teacher outputs, fingerprinted: one file per
            # teacher serves every embedding width.
            path = cache / f"vocabulary-{digest(c.teacher, vocabulary_size)}.npz"
            token_outputs = vocabulary_outputs(teacher, path, progress=progress)
        init = student_embeddings(c.embedding_init, teacher, c.embedding_dim, token_outputs)
        return build_bilstm_encoder(
            vocabulary_size,
            embedding_dim=c.embedding_dim,
            hidden_dim=c.hidden_dim,
            output_dim=width,
            embeddings_initializer="uniform" if init is None else init,
            normalize=True,
            embedding_skip=c.embedding_skip,
        )
    from kd_keras.models.tiny_bert import build_tiny_bert_student

    return build_tiny_bert_student(
        teacher=teacher,
        num_layers=c.bert_layers,
        intermediate_dim=c.bert_intermediate_dim,
        normalize=True,
    )


def _student_preprocessor(teacher, sequence_length):
    from kd_keras.models.bert_tokenizer import BertPreprocessor

    config = {**teacher.preprocessor.get_config(), "sequence_length": sequence_length}
    config.pop("name", None)
    return BertPreprocessor.from_config(config)


def _train(c, out, transfer, tables, dev, encoder, preprocessor, progress):
    """Trains the student's pair model; returns the Keras history and the step curve."""
    import keras

    from kd_keras import Distiller
    from kd_keras.checkpoints import ResumableBackup, StopOnNonFiniteLoss
    from kd_keras.progress import training_progress
    from kd_keras.recipes.sentence_pairs.objectives import (
        GoldScoreMSE,
        objective_loss,
        pair_training_model,
    )
    from kd_keras.recipes.sentence_pairs.training import StepHistory, pair_datasets

    train_model = pair_training_model(encoder, scale=c.similarity_scale)
    distill_output, loss = objective_loss(c.objective, c.distillation_loss, c.temperature)
    # No teacher object: every batch carries the teacher's cached outputs.
    distiller = Distiller(None, train_model, distill_output=distill_output, label_output="score")
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
    train_ds, val_ds = pair_datasets(c, transfer, tables, preprocessor, encoder, dev)
    curve = StepHistory()
    backup = ResumableBackup(out / "backup", states={"step_loss": curve})
    _log(
        f"training {c.student} student ({encoder.count_params():,} parameters): "
        f"{c.epochs} epoch(s) of {steps} steps, checkpoint every {chunk} steps"
    )
    done = backup.checkpoints()
    if done:
        _log(
            f"resuming from the checkpoint after {done[-1]} of "
            f"{c.epochs * c.checkpoints_per_epoch} parts ({done[-1] / c.checkpoints_per_epoch:g} "
            "epochs)"
        )
    # Each epoch runs as `checkpoints_per_epoch` Keras epochs of `chunk` steps
    # over one endless stream, each ending with an atomic checkpoint; the
    # progress the user sees counts the epochs asked for. A non-finite loss
    # stops the run before anything is saved.
    distiller.fit(
        train_ds.repeat(),
        epochs=c.epochs * c.checkpoints_per_epoch,
        steps_per_epoch=chunk,
        validation_data=val_ds,
        callbacks=[
            StopOnNonFiniteLoss(),
            backup,
            curve.callback,
            training_progress(c.epochs, c.checkpoints_per_epoch, chunk, enabled=progress),
        ],
        verbose=0,
        shuffle=False,  # the dataset shuffles itself (Keras would warn that it ignores this)
    )
    return backup.history, curve.points  # the whole run's, resumed parts included


def _teacher_export(c, cache, teacher):
    """The teacher as a raw-text SavedModel, exported once per teacher into the cache.

    Done before training, so that a damaged cached export (a `CacheError`
    naming it) stops the run before the expensive part, not after it.
    """
    from kd_keras.serving import export_teacher, verify_text_export

    teacher_dir = cache / f"teacher-export-{digest(c.teacher, teacher.count_params())}"
    if teacher_dir.exists():
        verify_text_export(teacher_dir)
    else:
        export_teacher(teacher, teacher_dir)
    return teacher_dir


def _export_and_measure(c, out, teacher_dir, teacher, encoder, preprocessor, test):
    """Saves and exports the student, then measures it and the teacher's export."""
    from kd_keras.evaluation import evaluate_text_export_in_subprocess
    from kd_keras.models.heads import build_pair_model
    from kd_keras.serving import export_text_model, save_student

    t0 = time.perf_counter()
    student_dir = out / "student"
    save_student(encoder, out / "student.keras", preprocessor)
    export_text_model(
        build_pair_model(encoder, name="student"),
        preprocessor,
        student_dir,
        kind="pair",
        overwrite=True,
    )
    export_seconds = time.perf_counter() - t0

    speed_sentences = list(test[0]) + list(test[1])
    models = {}
    for name, path, params in (
        ("teacher", teacher_dir, teacher.count_params()),
        ("student", student_dir, encoder.count_params()),
    ):
        r = evaluate_text_export_in_subprocess(
            path, test[0], test[1], test[2], speed_sentences, c.throughput_seconds
        )
        _log(
            f"{name}: test Spearman {r['spearman']:.2f}, "
            f"{r['sentences_per_second']:.1f} sentences/s"
        )
        models[name] = {
            "spearman": r["spearman"],
            "pearson": r["pearson"],
            "parameters": int(params),
            "size_bytes": directory_size(path),
            "sentences_per_second": r["sentences_per_second"],
            "export": str(path),
            "scores": r["scores"],
        }
    return models, export_seconds


def _metrics(c, transfer, test, models, history, step_loss, timings):
    t, s = models["teacher"], models["student"]
    return {
        "config": dataclasses.asdict(c),
        "data": {
            "transfer_pairs": len(transfer),
            "labeled_pairs": int(transfer.labeled.sum()),
            "transfer_sentences": len(transfer.sentences),
            "test_pairs": len(test[0]),
        },
        "models": {
            name: {k: v for k, v in m.items() if k != "scores"} for name, m in models.items()
        },
        "training": {
            "history": {k: [float(v) for v in vs] for k, vs in history.items()},
            "step_loss": step_loss,
        },
        "timings": timings,
        "summary": {
            "spearman_kept_pct": 100 * s["spearman"] / t["spearman"],
            "speedup": s["sentences_per_second"] / t["sentences_per_second"],
        },
    }


def run(config=None, progress=True):
    """Runs the whole recipe; returns the metrics dict also written to `metrics.json`.

    Args:
        config: `DistillConfig` (defaults to all defaults).
        progress: bool. Report progress: bars for the teacher pass and
            training on a terminal, plain periodic lines in a log file.
    """
    import keras
    import numpy as np

    from kd_keras.models.teachers import load_teacher
    from kd_keras.recipes.sentence_pairs.report import write_report
    from kd_keras.transfer import build_transfer_set

    c = (config or DistillConfig()).resolved()
    c.validate()
    out = _writable_folder(c.output_dir, "--output-dir")
    cache = _writable_folder(c.cache_dir, "--cache-dir")
    if (out / "metrics.json").exists() and not c.overwrite:
        raise ConfigError(
            f"--output-dir {out} holds a finished run (metrics.json); choose another folder, "
            "or pass --overwrite to train again there"
        )
    write_json_atomic(out / "config.json", dataclasses.asdict(c))
    timings, t_start = {}, time.perf_counter()
    keras.utils.set_random_seed(c.seed)

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
    t0 = time.perf_counter()
    tables = _teacher_tables(c, teacher, transfer, data["dev"], cache, progress)
    teacher_dir = _teacher_export(c, cache, teacher)
    timings["teacher_pass_s"] = time.perf_counter() - t0
    _log(f"teacher pass: {timings['teacher_pass_s']:.0f} s (cached in {cache})")

    t0 = time.perf_counter()
    preprocessor = _student_preprocessor(teacher, c.sequence_length)
    encoder = _build_student(c, teacher, cache, progress)
    timings["setup_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    history, step_loss = _train(
        c, out, transfer, tables, data["dev"], encoder, preprocessor, progress
    )
    timings["training_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    models, timings["export_s"] = _export_and_measure(
        c, out, teacher_dir, teacher, encoder, preprocessor, data["test"]
    )
    timings["evaluation_s"] = time.perf_counter() - t0 - timings["export_s"]
    timings["total_s"] = time.perf_counter() - t_start

    test = data["test"]
    metrics = _metrics(c, transfer, test, models, history, step_loss, timings)
    scores = {name: m["scores"] for name, m in models.items()}
    write_json_atomic(out / "test_scores.json", {**scores, "gold": test[2].tolist()}, indent=None)
    write_report(out, metrics, np.asarray(scores["teacher"]), np.asarray(scores["student"]))
    write_json_atomic(out / "metrics.json", metrics)
    _log(
        f"done in {timings['total_s'] / 60:.1f} min: student keeps "
        f"{metrics['summary']['spearman_kept_pct']:.1f}% of the teacher's Spearman at "
        f"{metrics['summary']['speedup']:.1f}x its throughput; report: {out / 'report.md'}"
    )
    return metrics
