"""The teacher over a large corpus as an Apache Beam pipeline (`kd-keras label --runner beam`).

`label_files_beam(teacher, patterns, output_dir, ...)` writes the folder that
`kd_keras.labels.label_files` writes, shard for shard: the same
`shard-NNNNN.npz` files over the same rows, the same `manifest.json`
(`kd_keras.labels.v1`, same key), so that either runner resumes or reads the
other's folder. What differs is who runs the teacher:

- the driver (this process) checks the files, fingerprints the teacher and the
  inputs as `label_files` does, exports the teacher once as a raw-text
  SavedModel (`kd_keras.serving.text_model.export_teacher`, cached by the
  teacher's fingerprint) and counts the sentences of each file, which tells
  where every shard's rows are;
- the pipeline has one element per shard still to label. A worker loads the
  SavedModel once (`kd_keras.labels_beam_worker.LabelShard.setup`: the
  workers' own module, which loads TensorFlow only there), reads only its
  shard's rows, runs the `embed` signature over batches of sentences of
  similar length and writes the shard atomically, then a small record of it
  (`.kd-keras-beam/entries/`);
- the driver collects those records and writes the manifest, complete.

A rerun keeps the shards that verify: those of the manifest (written by either
runner) and those a killed Beam run left with their records, so a kill loses at
most the shards in progress. The `.kd-keras-beam` work folder is removed when
the run completes.

Locally the pipeline runs on Beam's DirectRunner with 2 worker processes
(`DEFAULT_PIPELINE_ARGS`); any other runner is a matter of pipeline options
(`--runner=DataflowRunner --project=...`, `--runner=FlinkRunner`,
`--runner=SparkRunner`), as long as the workers can read the input files and
the output folder by the same paths: a shared file system, or an object store
(`gs://...`, read and written through `tf.io.gfile`: `kd_keras.filesystems`).
For an object-store folder, the teacher's SavedModel is exported locally and
copied up into the work folder, where the workers load it.
"""

import os
import pathlib
import shutil
import tempfile
import time

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from kd_keras import filesystems, labels
from kd_keras.data import DataError, read_lines
from kd_keras.labels_beam_worker import LabelShard, read_rows, recorded_entry
from kd_keras.models.teachers import load_teacher
from kd_keras.progress import log
from kd_keras.serving.text_model import export_teacher, verify_text_export
from kd_keras.storage import CacheError, DiskFullError, is_disk_full, write_json_atomic
from kd_keras.teacher_pass import precision_agreement

__all__ = ["DEFAULT_PIPELINE_ARGS", "WORK_DIR", "label_files_beam", "pipeline_args_with_defaults"]

DEFAULT_PIPELINE_ARGS = (
    "--runner=DirectRunner",
    "--direct_running_mode=multi_processing",
    "--direct_num_workers=2",
    "--default_sdk_harness_log_level=WARNING",
)
WORK_DIR = ".kd-keras-beam"


def pipeline_args_with_defaults(pipeline_args):
    """`pipeline_args`, with the local defaults for the DirectRunner options it does not set.

    No `--runner` means Beam's DirectRunner: it then runs in 2 worker processes
    (`DEFAULT_PIPELINE_ARGS`) unless `--direct_running_mode` or
    `--direct_num_workers` say otherwise. Another runner's options are kept as
    they are.
    """

    def name(arg):
        return arg.split("=", 1)[0].lstrip("-").replace("-", "_")

    args = list(pipeline_args or ())
    names = {name(a) for a in args if a.startswith("--")}
    if "runner" in names:
        return args
    return [d for d in DEFAULT_PIPELINE_ARGS if name(d) not in names] + args


# === Driver ===


def _option(args, name):
    """The value of Beam option `--name` in `args` (`--name=value` or `--name value`)."""
    value = None
    for i, arg in enumerate(args):
        key, equals, given = arg.partition("=")
        if key.lstrip("-").replace("-", "_") == name and arg.startswith("--"):
            value = given if equals else (args[i + 1] if i + 1 < len(args) else "")
    return value


def _check_reachable(paths, pipeline_args):
    """`ram://` is this process's memory: only a DirectRunner in this process reaches it."""
    in_memory = [str(p) for p in paths if str(p).startswith("ram://")]
    if not in_memory:
        return
    args = pipeline_args_with_defaults(pipeline_args)
    runner = _option(args, "runner") or "DirectRunner"
    mode = _option(args, "direct_running_mode")
    if runner not in ("DirectRunner", "direct") or mode not in ("in_memory", "multi_threading"):
        raise ValueError(
            f"{in_memory[0]} is in this process's memory (TensorFlow's ram:// file system), "
            "which Beam's worker processes cannot see: run the DirectRunner in this process "
            "(-- --direct_running_mode=in_memory), or use a shared folder or an object store "
            "such as gs://"
        )


def _sentence_counts(files, limit):
    """Sentences (stripped, non-blank lines) of each file, read as `iter_corpus` reads them.

    Stops where `iter_corpus(files, limit)` stops, with the same errors; the
    list may be shorter than `files` when `limit` ends the reading early.
    """
    counts, total = [], 0
    for path in files:
        count = 0
        for _, line in read_lines(path):
            if limit is not None and total >= limit:
                return counts + [count]
            if line.strip():
                count += 1
                total += 1
        if not count:
            raise DataError(f"{path}: no sentences found")
        counts.append(count)
    return counts


def _plan(files, counts, shard_size):
    """`[(index, start, segments)]`: each shard's first row and `(file, skip, take)` parts."""
    shards, segments, start, row = [], [], 0, 0
    for path, count in zip(files, counts, strict=False):  # counts may stop early
        skip = 0
        while skip < count:
            take = min(count - skip, shard_size - (row - start))
            segments.append((filesystems.absolute(path), skip, take))
            skip += take
            row += take
            if row - start == shard_size:
                shards.append((len(shards), start, segments))
                segments, start = [], row
    if segments:
        shards.append((len(shards), start, segments))
    return shards


def _rows(start, segments):
    return [start, start + sum(take for _, _, take in segments)]


def _export(teacher, teacher_key, export_root, prune, quantize=None):
    """The teacher's raw-text SavedModel under `export_root`, exported once per fingerprint
    (and `quantize`: `None` or `"int8"`, an int8 export for the int8 precision).

    With `prune`, the exports of other teachers there are removed. Under an
    object-store `export_root`, it is exported into a local temporary folder and
    copied up, every run (`_export_up`).
    """
    name = f"teacher-{teacher_key[:16]}{'-' + quantize if quantize else ''}"
    if filesystems.has_scheme(str(export_root)):
        return _export_up(teacher, filesystems.join(export_root, name), quantize)
    export_root = pathlib.Path(export_root)
    path = export_root / name
    try:
        verify_text_export(path)
        return path
    except CacheError:
        pass
    for old in export_root.glob("teacher-*") if prune else ():
        if old != path and old.is_dir():
            shutil.rmtree(old, ignore_errors=True)  # another teacher's
    export_teacher(teacher, path, overwrite=True, quantize=quantize)
    return path


def _export_up(teacher, target, quantize):
    """The teacher's SavedModel, exported locally and copied to the object-store `target`."""
    with tempfile.TemporaryDirectory(prefix="kd-keras-export-") as local:
        path = pathlib.Path(local) / "teacher"
        export_teacher(teacher, path, quantize=quantize)
        filesystems.copy_tree_up(path, target)
    return target


def _run_pipeline(todo, export_path, directory, work, key, settings, pipeline_args):
    fn = LabelShard(
        str(export_path),
        filesystems.absolute(directory),
        filesystems.absolute(work),
        key,
        settings["store"],
        settings["batch_size"],
        settings["precision"],
    )
    options = PipelineOptions(pipeline_args_with_defaults(pipeline_args))
    try:
        with beam.Pipeline(options=options) as pipeline:
            _ = (
                pipeline
                | "Shards" >> beam.Create(todo, reshuffle=False)
                | "Spread" >> beam.Reshuffle()
                | "Label" >> beam.ParDo(fn)
            )
    except Exception as e:  # a worker's full disk, relayed in an error of Beam's making
        code = is_disk_full(e)
        if code is None:
            raise
        raise DiskFullError(directory, code=code) from e


def label_files_beam(
    teacher,
    patterns,
    output_dir,
    limit=None,
    shard_size=4096,
    store="float32",
    batch_size=64,
    teacher_spec=None,
    pipeline_args=None,
    export_dir=None,
    progress=True,
    precision="float32",
):
    """Labels text files into `output_dir` with an Apache Beam pipeline.

    The same folder as `kd_keras.labels.label_files(teacher, patterns,
    output_dir, limit=limit, shard_size=..., store=..., batch_size=...,
    teacher_spec=...)`, and resumable the same way.

    Args:
        teacher: a `Teacher` (with a preprocessor), or a spec for
            `kd_keras.models.teachers.load_teacher` (`"default"` or a path).
        patterns: paths or glob patterns (`kd_keras.data.corpus_files`).
        output_dir: the labels folder (created), local or on an object store.
        limit: int or `None`. At most this many sentences, in file order.
        shard_size: int. Sentences per shard.
        store: `"float32"` or `"float16"`.
        batch_size: int. Sentences per teacher batch.
        teacher_spec: str or `None`, recorded in the manifest.
        pipeline_args: list of str, Beam pipeline options
            (`pipeline_args_with_defaults` fills in the local ones).
        export_dir: folder that keeps the teacher's SavedModel between runs
            (one per teacher fingerprint); default: inside the work folder,
            removed at the end.
        progress: bool. Report what is done.
        precision: `"float32"`, `"bfloat16"` (each worker turns on TensorFlow's
            oneDNN bfloat16 rewrite, as `kd_keras.teacher_pass.run_teacher` does)
            or `"int8"` (the workers serve an int8 export of the teacher); other
            than float32, the agreement with float32 is recorded as
            `kd_keras.labels.label_sentences` records it.

    Returns:
        A `kd_keras.labels.LabelResult`.
    """
    settings = labels._settings(shard_size, store, batch_size, precision)
    start_time = time.perf_counter()
    files, fingerprint, description = labels._corpus_inputs(patterns, limit)
    _check_reachable([*files, output_dir, export_dir or ""], pipeline_args)
    counts = _sentence_counts(files, limit)
    if isinstance(teacher, (str, os.PathLike)):
        teacher = load_teacher(str(teacher))
    directory = filesystems.to_path(output_dir)
    filesystems.makedirs(directory)
    work = filesystems.join(directory, WORK_DIR)
    manifest = labels._new_manifest(teacher, fingerprint, settings, teacher_spec, description)
    key = manifest["key"]
    plan = _plan(files, counts, settings["shard_size"])
    old = labels._usable_shards(directory, labels.read_manifest(directory), key)
    entries = {}
    for index, start, segments in plan:
        rows = _rows(start, segments)
        entry = old.get(index) if old.get(index, {}).get("rows") == rows else None
        entries[index] = entry or recorded_entry(directory, work, index, key, rows)
    if not plan:
        raise ValueError("No sentences to label.")
    reused = sum(1 for entry in entries.values() if entry is not None)
    _write_progress(directory, manifest, [entries[i] for i, _, _ in plan])
    todo = [shard for shard in plan if entries[shard[0]] is None]
    if todo:
        if progress:
            log(f"labels: {len(todo)} of {len(plan)} shards to label with Apache Beam")
        teacher_key = manifest["teacher"]["fingerprint"]
        quantize = "int8" if settings["precision"] == "int8" else None
        export_path = _export(
            teacher, teacher_key, export_dir or work, prune=export_dir is None, quantize=quantize
        )
        _run_pipeline(todo, export_path, directory, work, key, settings, pipeline_args)
        for index, start, segments in todo:
            entries[index] = recorded_entry(directory, work, index, key, _rows(start, segments))
            if entries[index] is None:
                raise RuntimeError(f"The Beam pipeline did not write shard {index} of {directory}.")
    manifest["shards"] = [entries[i] for i, _, _ in plan]
    manifest["rows"] = manifest["shards"][-1]["rows"][1]
    manifest["dim"] = manifest["shards"][0]["dim"]
    if settings["precision"] != "float32":  # measured here, with the in-memory teacher
        manifest["precision_agreement"] = precision_agreement(
            teacher, read_rows(plan[0][2]), settings["precision"], batch_size=batch_size
        )
    labels._finish(directory, manifest)
    filesystems.remove_tree(work)
    return labels.LabelResult(
        directory,
        manifest["rows"],
        len(plan),
        reused,
        time.perf_counter() - start_time,
        manifest["precision_agreement"],
    )


def _write_progress(directory, manifest, entries):
    """An unfinished manifest listing the leading shards already done (as `label_sentences`
    keeps it), so that a stale finished manifest never outlives the shards it lists."""
    done = []
    for entry in entries:
        if entry is None:
            break
        done.append(entry)
    progress = {**manifest, "shards": done, "rows": done[-1]["rows"][1] if done else 0}
    progress["dim"] = done[0]["dim"] if done else None
    write_json_atomic(filesystems.join(directory, labels.MANIFEST), progress)
