"""The sentence-pair recipe, step by step: `run(config)`.

1. the teacher (default: offline all-MiniLM-L6-v2) over a transfer set: the
   training pairs, unlabeled sentences (by default `unlabeled_limit`, 40,000,
   sampled from the data folder's transfer corpus, `transfer-en/*.txt.gz`, or
   `transfer-zh/*.txt.gz` for a Chinese teacher, never from the held-out tails
   of its files) and
   Tang et al. augmentation (`kd_keras.transfer.transfer_parts`). The gold
   pairs' sentences are labeled into one cache file (`kd_keras.teacher_pass`),
   the unlabeled and augmented ones into resumable shards (`kd_keras.labels`,
   the layout of `kd-keras label`), plus any `--labels` folders made by
   `kd-keras label`;
2. a siamese student (by default a BiLSTM with vocabulary-distillation
   embeddings; a static SIF encoder, a tiny BERT from the teacher's layers or
   your own: `students`), trained with `kd_keras.Distiller` on the cached
   teacher outputs, the shards streamed through `tf.data`
   (`training.pair_datasets`) (`embedding`, `score`, `soft_label`,
   `relational` or `contrastive` objective, mixed with the gold score through
   `alpha`), checkpointed `checkpoints_per_epoch` times an epoch;
3. the student saved as `student.keras` (+ its tokenizer sidecar), both
   models exported as raw-text SavedModels (`kd_keras.serving`) and measured
   on the same path, each in a fresh process: test Spearman and Pearson,
   parameters, size on disk, CPU sentences per second; and their agreement on
   unlabeled sentences, per source (`agreement`: by default the held-out
   tails of the transfer corpus files, which training never samples);
4. `metrics.json`, `report.md` and PNG plots in the run folder.

Ctrl-C leaves a resumable run: run the same command with `--output-dir` of
that run to continue from its last checkpoint. A rerun reuses the teacher
cache, the vocabulary distillation and the teacher's export.
"""

import contextlib
import dataclasses
import os
import pathlib
import time

import keras
import numpy as np

from kd_keras import distribute, evaluation
from kd_keras.data import corpus_files, read_pairs, read_sentences
from kd_keras.filesystems import has_scheme
from kd_keras.labels import label_sentences, read_labels, read_manifest, teacher_fingerprint
from kd_keras.models.bert_tokenizer import BertPreprocessor
from kd_keras.models.heads import build_pair_model
from kd_keras.models.teachers import load_teacher
from kd_keras.phases import Phases
from kd_keras.progress import log
from kd_keras.recipes.config import ConfigError
from kd_keras.recipes.sentence_pairs.agreement import fidelity_metrics, fidelity_sets
from kd_keras.recipes.sentence_pairs.config import DistillConfig
from kd_keras.recipes.sentence_pairs.objectives import check_objective
from kd_keras.recipes.sentence_pairs.preflight import preflight
from kd_keras.recipes.sentence_pairs.report import data_files, write_report
from kd_keras.recipes.sentence_pairs.students import (
    build_student,
    student_function,
    student_module,
    student_name,
)
from kd_keras.recipes.sentence_pairs.training import train
from kd_keras.serving import (
    export_teacher,
    export_text_model,
    load_student,
    preprocessor_sidecar_path,
    save_student,
    verify_text_export,
)
from kd_keras.storage import (
    cached_arrays,
    digest,
    directory_size,
    file_sha256,
    folder_lock,
    phase,
    write_json_atomic,
)
from kd_keras.teacher_pass import cache_teacher_outputs
from kd_keras.transfer import split_heldout, transfer_parts

# Turns of the side-by-side throughput measurement (`compare_throughput`).
THROUGHPUT_ROUNDS = 5

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
    """`({split: (a, b, scores)}, unlabeled sentences, {file name: sentences sampled},
    {absolute path: held-out sentences})`.

    The held-out tails of the transfer corpus files (`kd_keras.transfer.split_heldout`)
    are never sampled; they are returned for the fidelity step.
    """
    columns = c.pair_columns()
    data = {split: read_pairs(getattr(c, split), **columns) for split in ("train", "dev", "test")}
    unlabeled, mix, heldout = [], {}, {}
    if c.unlabeled and c.unlabeled_limit:
        # Several files or globs, comma-separated, plain or .gz; the first
        # tab-separated field of each line (a plain line is all of it).
        files = corpus_files(p.strip() for p in c.unlabeled.split(",") if p.strip())
        sizes = []
        for path in files:
            sentences, tail = split_heldout(path, read_sentences(path))
            if tail:
                heldout[os.path.abspath(path)] = tail
            sizes.append(len(sentences))
            unlabeled.extend(sentences)
        order = np.random.default_rng(c.seed).permutation(len(unlabeled))[: c.unlabeled_limit]
        unlabeled = [unlabeled[i] for i in order]
        owner = np.searchsorted(np.cumsum(sizes), order, side="right")
        for k, count in zip(*np.unique(owner, return_counts=True), strict=True):
            name = os.path.basename(str(files[k]))
            mix[name] = mix.get(name, 0) + int(count)
    return data, unlabeled, mix, heldout


def _teacher_tables(c, teacher, pairs, dev, cache, progress):
    """The teacher's embeddings of the in-memory pairs' and the dev sentences (cached)."""
    dev_sentences = list(dev[0]) + list(dev[1])
    tables = []
    for sentences in (pairs.sentences, dev_sentences):
        path = cache / f"teacher-{digest(c.teacher, c.teacher_precision, sentences)}.npz"
        tables.append(
            cache_teacher_outputs(
                teacher, sentences, path, progress=progress, precision=c.teacher_precision
            )
        )
    return tables


def _label_folders(c, teacher, free, cache, progress):
    """Labels folders to stream: the free transfer sentences' (labeled into the
    cache, resumable) and those of `--labels` (checked to be this teacher's)."""
    folders = []
    if free:
        folder = cache / f"labels-{digest(c.teacher, c.teacher_precision, c.store, free)}"
        label_sentences(
            teacher,
            free,
            folder,
            input_fingerprint=digest(free),
            total=len(free),
            teacher_spec=c.teacher,
            inputs={"sentences": len(free)},
            progress=progress,
            precision=c.teacher_precision,
            store=c.store,
        )
        folders.append(folder)
    expected = teacher_fingerprint(teacher) if c.labels else None
    for name in filter(None, (p.strip() for p in (c.labels or "").split(","))):
        manifest = read_manifest(name)
        if manifest is None or not manifest.get("complete"):
            raise ConfigError(f"--labels {name} holds no finished labels (run kd-keras label)")
        if manifest["teacher"]["fingerprint"] != expected:
            raise ConfigError(
                f"--labels {name} was labeled by another teacher "
                f"({manifest['teacher']['spec']}) than --teacher {c.teacher}"
            )
        folders.append(name if has_scheme(name) else pathlib.Path(name))
    return folders


def _transfer_sentences(pairs, folders):
    """Every sentence of the transfer set, streamed: the in-memory ones, then the shards'."""
    yield from pairs.sentences
    for folder in folders:
        for sentences, _ in read_labels(folder):
            yield from sentences


def _student_preprocessor(teacher, sequence_length):
    config = {**teacher.preprocessor.get_config(), "sequence_length": sequence_length}
    config.pop("name", None)
    return BertPreprocessor.from_config(config)


def _teacher_export(c, cache, teacher, quantize=None):
    """The teacher as a raw-text SavedModel, exported once per teacher into the cache.

    Done before training, so that a damaged cached export (a `CacheError`
    naming it) stops the run before the expensive part, not after it.
    """
    suffix = f"-{quantize}" if quantize else ""
    key = digest(c.teacher, teacher.count_params())
    teacher_dir = pathlib.Path(cache) / f"teacher-export{suffix}-{key}"
    if teacher_dir.exists():
        verify_text_export(teacher_dir)
    else:
        export_teacher(teacher, teacher_dir, quantize=quantize)
    return teacher_dir


def _teacher_quality(c, teacher_dir, test, dev):
    """The teacher export's test and dev figures, as `evaluate_text_export` gives them.

    Cached beside the export: they depend only on the export (its
    `fingerprint.pb`, TensorFlow's hash of the graph and the weights) and on
    the pairs, so a rerun on the same cache reads them instead of running
    the teacher over both splits again.
    """
    key = digest(file_sha256(teacher_dir / "fingerprint.pb"), *map(list, test), *map(list, dev))
    names = ("spearman", "pearson", "dev_spearman", "dev_pearson")

    def compute():
        r = evaluation.evaluate_text_export_in_subprocess(
            teacher_dir, *test, [], None, other_sets={"dev": dev}
        )
        dev_figures = r["sets"]["dev"]
        figures = [r["spearman"], r["pearson"], dev_figures["spearman"], dev_figures["pearson"]]
        return {"scores": np.asarray(r["scores"]), "figures": np.asarray(figures)}

    arrays = cached_arrays(
        pathlib.Path(c.cache_dir) / f"teacher-scores-{key}.npz", key, compute, {"figures": names}
    )
    figures = dict(zip(names, arrays["figures"].tolist(), strict=True))
    return {
        "scores": arrays["scores"].tolist(),
        "spearman": figures["spearman"],
        "pearson": figures["pearson"],
        "sets": {"dev": {"spearman": figures["dev_spearman"], "pearson": figures["dev_pearson"]}},
    }


def _export(c, out, teacher, encoder, preprocessor):
    """Exports the student (and with `quantize="int8"` int8 copies of both models,
    the teacher's cached): `([(name, export folder, parameters or None)], seconds)`."""
    t0 = time.perf_counter()
    student_dir = out / "student"
    pair = build_pair_model(encoder, name="student")
    export_text_model(pair, preprocessor, student_dir, kind="pair", overwrite=True)
    rows = [("student", str(student_dir), encoder.count_params())]
    if c.quantize != "none":  # an int8 copy of each beside them (`quantize_copy`)
        quantized_dir = out / f"student-{c.quantize}"
        export_text_model(
            pair, preprocessor, quantized_dir, kind="pair", overwrite=True, quantize=c.quantize
        )
        teacher_quantized = _teacher_export(c, c.cache_dir, teacher, c.quantize)
        rows += [
            (f"teacher {c.quantize}", str(teacher_quantized), None),
            (f"student {c.quantize}", str(quantized_dir), None),
        ]
    return rows, time.perf_counter() - t0


def _measure(c, rows, test, dev):
    """Measures every export of `rows` (the teacher's first) on the same path:
    test and dev correlations, size, sentences/s timed in turns."""
    speed_sentences = list(test[0]) + list(test[1])
    # All models timed in turns in one process, THROUGHPUT_ROUNDS rounds
    # sharing --throughput-seconds each (`compare_throughput`).
    speeds = evaluation.compare_throughput_in_subprocess(
        [pathlib.Path(path) for _, path, _ in rows],
        speed_sentences,
        rounds=THROUGHPUT_ROUNDS,
        seconds=c.throughput_seconds / THROUGHPUT_ROUNDS,
    )
    models = {}
    for (name, path, params), speed in zip(rows, speeds, strict=True):
        if name.startswith("teacher"):  # cached beside the export
            r = _teacher_quality(c, pathlib.Path(path), test, dev)
        else:
            r = evaluation.evaluate_text_export_in_subprocess(
                path, *test, [], None, other_sets={"dev": dev}
            )
        _log(
            f"{name}: dev Spearman {r['sets']['dev']['spearman']:.2f}, test Spearman "
            f"{r['spearman']:.2f}, {speed['sentences_per_second']:.1f} sentences/s"
        )
        models[name] = {
            "spearman": r["spearman"],
            "pearson": r["pearson"],
            "dev_spearman": r["sets"]["dev"]["spearman"],
            "dev_pearson": r["sets"]["dev"]["pearson"],
            "parameters": int(params or models[name.split()[0]]["parameters"]),
            "size_bytes": directory_size(path),
            "sentences_per_second": speed["sentences_per_second"],
            "speed_rounds": speed["rounds"],
            "speedup": speed["ratio"],
            "export": str(path),
            "scores": r["scores"],
        }
    return models


def _metrics(c, transfer, test, models, history, step_loss, steps, stopping, timings):
    t, s = models["teacher"], models["student"]
    every = stopping["steps_per_evaluation"]
    dev_curve = [[(i + 1) * every, v] for i, v in enumerate(history.get("dev_spearman", []))]
    return {
        "config": c.as_dict(),
        "data": {**transfer, "test_pairs": len(test[0])},
        "models": {
            name: {k: v for k, v in m.items() if k != "scores"} for name, m in models.items()
        },
        "training": {
            "history": {k: [float(v) for v in vs] for k, vs in history.items()},
            "step_loss": step_loss,
            "steps": steps,
            "dev_curve": dev_curve,  # [step, dev Spearman x100 of the student]
            "early_stopping": stopping,
        },
        "timings": timings,
        "summary": {
            "spearman_kept_pct": 100 * s["spearman"] / t["spearman"],
            "speedup": s["speedup"],
        },
    }


def _transfer_data(c, data, unlabeled, teacher):
    """`(in-memory pairs, free sentences)` of the transfer set (`transfer_parts`)."""
    pairs, free = transfer_parts(
        *data["train"],
        unlabeled=unlabeled,
        augment_per_sentence=c.augment,
        repaired_pairs=c.repaired_pairs,
        seed=c.seed,
        mask_token=teacher.preprocessor.mask_token or "[MASK]",
    )
    if c.max_pairs is not None:  # gold pairs first, then re-pairings, then free pairs
        if len(pairs) > c.max_pairs:
            keep = slice(0, c.max_pairs)
            pairs = dataclasses.replace(
                pairs, first=pairs.first[keep], second=pairs.second[keep], gold=pairs.gold[keep]
            )
        free = free[: 2 * max(0, c.max_pairs - len(pairs))]
    return pairs, free


def _transfer_summary(pairs, folders, given=()):
    """Sizes of the transfer set, and each labels folder streamed: its rows, its
    store dtype (from its manifest) and whether it came from `--labels` (`given`)."""
    manifests = [read_manifest(f) for f in folders]
    streamed = sum(m["rows"] for m in manifests)
    given = {os.path.abspath(g) for g in given}
    return {
        "transfer_pairs": len(pairs) + streamed // 2,
        "labeled_pairs": int(pairs.labeled.sum()),
        "transfer_sentences": len(pairs.sentences) + streamed,
        "memory_pairs": len(pairs),
        "streamed_sentences": streamed,
        "label_folders": [str(f) for f in folders],
        "label_streams": [
            {
                "folder": str(f),
                "rows": m["rows"],
                "store": m["settings"]["store"],
                "given": os.path.abspath(f) in given,
            }
            for f, m in zip(folders, manifests, strict=True)
        ],
    }


def _teacher_side(c, cache, progress, chief):
    """Data, teacher and its labels: `(data, teacher, pairs, tables, folders, teacher_dir,
    transfer summary, fidelity sentences, seconds of the teacher pass)`."""
    data, unlabeled, mix, heldout = _load_data(c)
    fidelity = fidelity_sets(c, heldout)
    teacher = load_teacher(c.teacher)
    pairs, free = _transfer_data(c, data, unlabeled, teacher)
    t0 = time.perf_counter()
    tables = _teacher_tables(c, teacher, pairs, data["dev"], cache, progress)
    folders = _label_folders(c, teacher, free, cache, progress)
    teacher_dir = _teacher_export(c, cache, teacher) if chief else None
    seconds = time.perf_counter() - t0
    given = [p.strip() for p in (c.labels or "").split(",") if p.strip()]
    transfer = {
        **_transfer_summary(pairs, folders, given),
        "unlabeled_mix": mix,
        "files": data_files(c),  # their bytes: the report tells STS-B from the user's files
    }
    _log(
        f"transfer set: {transfer['transfer_pairs']} pairs ({transfer['labeled_pairs']} with gold "
        f"scores), {transfer['transfer_sentences']} sentences, "
        f"{transfer['streamed_sentences']} of them streamed from labels shards"
    )
    _log(f"teacher pass: {seconds:.0f} s (cached in {cache})")
    return data, teacher, pairs, tables, folders, teacher_dir, transfer, fidelity, seconds


def _finish(c, out, phases, teacher_side, encoder, preprocessor, trained, timings):
    """Exports and measures both models, writes the metrics and the report.

    Each phase (export, evaluate, fidelity) is reused from an earlier run of
    the same settings when its marker and outputs are there (`phases`).
    """
    data, teacher, _, _, _, teacher_dir, transfer, fidelity, _ = teacher_side
    outputs = ["student"] + ([f"student-{c.quantize}"] if c.quantize != "none" else [])
    done = phases.reused("export", outputs)
    if done is None:
        with phase("export"):
            rows, seconds = _export(c, out, teacher, encoder, preprocessor)
        done = phases.mark("export", {"rows": rows, "seconds": seconds}, outputs)
    timings["export_s"] = done["seconds"]
    rows = [("teacher", str(teacher_dir), teacher.count_params()), *map(tuple, done["rows"])]
    done = phases.reused("evaluate")
    if done is None:
        t0 = time.perf_counter()
        with phase("evaluation"):
            models = _measure(c, rows, data["test"], data["dev"])
        models["student"]["name"] = student_name(c, encoder)
        done = phases.mark("evaluate", {"models": models, "seconds": time.perf_counter() - t0})
    models, timings["evaluation_s"] = done["models"], done["seconds"]
    done = phases.reused("fidelity")
    if done is None:
        t0 = time.perf_counter()
        with phase("fidelity"):
            figures = fidelity_metrics(c, teacher_dir, out / "student", fidelity, _log)
        done = phases.mark("fidelity", {"fidelity": figures, "seconds": time.perf_counter() - t0})
    fidelity = done["fidelity"]
    if "skipped" not in fidelity:
        timings["fidelity_s"] = done["seconds"]
    timings["total_s"] = time.perf_counter() - timings.pop("start")

    test = data["test"]
    metrics = {**_metrics(c, transfer, test, models, *trained, timings), "fidelity": fidelity}
    scores = {name: m["scores"] for name, m in models.items()}
    with phase("report"):
        gold = test[2].tolist()
        write_json_atomic(out / "test_scores.json", {**scores, "gold": gold}, indent=None)
        write_report(out, metrics, np.asarray(scores["teacher"]), np.asarray(scores["student"]))
        write_json_atomic(out / "metrics.json", metrics)
    _log(
        f"done in {timings['total_s'] / 60:.1f} min: student keeps "
        f"{metrics['summary']['spearman_kept_pct']:.1f}% of the teacher's Spearman at "
        f"{metrics['summary']['speedup']:.1f}x its throughput; report: {out / 'report.md'}"
    )
    return metrics


def _phase_settings(c):
    """What the phase markers are fingerprinted on: every setting but where the run goes."""
    settings = c.as_dict()
    for key in ("output_dir", "overwrite"):
        settings.pop(key, None)
    return settings


def run(config=None, progress=True):
    """Runs the whole recipe; returns the metrics dict also written to `metrics.json`.

    With `distribute="multi-worker"` every worker runs this with the same
    config (`kd_keras.distribute`); the chief exports, measures and reports,
    the others return `None` once training is done.

    Args:
        config: `DistillConfig` (defaults to all defaults).
        progress: bool. Report progress: bars for the teacher pass and
            training on a terminal, plain periodic lines in a log file.
    """
    c = (config or DistillConfig()).resolved()
    c.validate()
    c = preflight(c)  # its files and folders, before anything is written
    check_objective(c)  # the objective's loss rules (Keras), before anything slow
    strategy = distribute.strategy(c.distribute)  # before any other TensorFlow op
    function = student_function(c.student)  # your own student's, before anything slow
    chief = distribute.is_chief(strategy)
    out = _writable_folder(c.output_dir, "--output-dir")
    cache = _writable_folder(c.cache_dir, "--cache-dir")
    with _held_folders(c, out, cache, chief):
        return _run(c, out, cache, chief, strategy, function, progress)


def _held_folders(c, out, cache, chief):
    """The run folder (the chief's) and the cache, one kd-keras run at a time in each.

    A second run on either is refused with the holder's PID
    (`kd_keras.storage.folder_lock`); a killed run's lock does not block.
    """
    held = contextlib.ExitStack()
    if chief:  # a non-chief writes only its own backup-worker-N
        held.enter_context(folder_lock(out, "kd-keras distill", flag="--output-dir"))
    if c.distribute != "multi-worker":  # workers sharing a cache take turns (below)
        held.enter_context(folder_lock(cache, "kd-keras distill", flag="--cache-dir"))
    return held


def _run(c, out, cache, chief, strategy, function, progress):
    """The recipe's phases, with the folders held."""
    phases = Phases(out, _phase_settings(c), _log)
    if c.overwrite:
        phases.clear()
    if chief:
        write_json_atomic(out / "config.json", c.as_dict())
    timings = {"start": time.perf_counter()}
    keras.utils.set_random_seed(c.seed)

    _log(f"output: {out}")
    # A no-op when the cache is held already; multi-worker processes take turns here.
    lock = folder_lock(cache, "kd-keras distill", flag="--cache-dir", wait=True)
    with phase("teacher pass"), lock:
        teacher_side = _teacher_side(c, cache, progress, chief)
    timings["teacher_pass_s"] = teacher_side[-1]

    preprocessor = _student_preprocessor(teacher_side[1], c.sequence_length)
    with phase("training"):
        encoder, trained = _trained_student(
            c, out, phases, teacher_side, preprocessor, progress, strategy, function, timings
        )
    if not chief:
        _log("training done; the chief exports the student and writes the report")
        return None
    return _finish(c, out, phases, teacher_side, encoder, preprocessor, trained, timings)


def _trained_student(
    c, out, phases, teacher_side, preprocessor, progress, strategy, function, timings
):
    """`(encoder, trained)`: built and trained, then saved as `student.keras` with the
    `train` phase's marker; or, when that phase is reused, loaded from there."""
    data, teacher, pairs, tables, folders = teacher_side[:5]
    outputs = ["student.keras", preprocessor_sidecar_path(pathlib.Path("student.keras")).name]
    # Under multi-worker every worker trains together: none reuses alone.
    done = phases.reused("train", outputs) if c.distribute == "none" else None
    if done is not None:
        timings.update(done["timings"])
        encoder, _ = load_student(out / "student.keras")
        return encoder, tuple(done["trained"])
    t0 = time.perf_counter()
    encoder, timings["vocabulary_s"] = build_student(
        c,
        teacher,
        preprocessor,
        pathlib.Path(c.cache_dir).resolve(),
        progress,
        strategy,
        _transfer_sentences(pairs, folders),
        function=function,
    )
    timings["setup_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    trained = train(
        c, out, (pairs, tables, folders, data["dev"]), encoder, preprocessor, progress, strategy
    )
    timings["training_s"] = time.perf_counter() - t0
    if distribute.is_chief(strategy):
        # Your own student's module is imported before loading it (its custom layers).
        modules = [m for m in [student_module(c.student)] if m]
        save_student(encoder, out / "student.keras", preprocessor, modules=modules)
        keys = ("teacher_pass_s", "vocabulary_s", "setup_s", "training_s")
        value = {"trained": trained, "timings": {k: timings[k] for k in keys}}
        trained = tuple(phases.mark("train", value, outputs)["trained"])
    return encoder, trained
