"""The teacher over a large corpus: sharded, streaming, resumable labels on disk.

`label_sentences(teacher, sentences, output_dir, ...)` reads the sentences
shard by shard (`shard_size` at a time, never all in memory), runs the teacher
over each (`kd_keras.teacher_pass.run_teacher`, length-bucketed within the
shard) and writes the shard atomically as `shard-NNNNN.npz` (`kd_keras.storage`
cache file: the sentences and their embeddings, with a checksum), then
`manifest.json`:

```
{"format": "kd_keras.labels.v1", "complete": true,
 "teacher": {"spec": ..., "fingerprint": ...}, "inputs": {"fingerprint": ..., ...},
 "settings": {"shard_size": ..., "store": "float32", "batch_size": ...,
              "precision": "float32"},
 "rows": N, "dim": D,
 "precision_agreement": null,
 "shards": [{"file": "shard-00000.npz", "rows": [0, 4096], "sha256": ...}, ...]}
```

A rerun with the same teacher, inputs and settings keeps every finished shard
whose checksum verifies and labels only the rest, so a killed run (Ctrl-C or
SIGKILL) loses at most the shard in progress and ends with the same output as
an uninterrupted one; a shard that fails its checksum is labeled again (and
said so), never used. Another teacher, other inputs or other settings make
the folder stale: it is relabeled from the start.

A teacher pass in another precision than float32 (`"bfloat16"`, `"int8"`)
records its agreement with float32 in `precision_agreement`: the mean and
minimum cosine between the two embeddings of the first 256 sentences
(`kd_keras.teacher_pass.precision_agreement`).

`label_files(teacher, patterns, ...)` labels text files (one sentence per
line, `.gz` too, blank lines skipped; `kd_keras.data.iter_corpus`), keyed by
the files' bytes. `read_labels(output_dir)` yields the verified shards back;
`labels_dataset` streams them into `tf.data` for training. The shard files
themselves are `kd_keras.label_shards`' (`read_shard`, also exported here).

The folder, and the input files, may be local or on an object store
(`gs://...`, `ram://...`), read and written through `tf.io.gfile`
(`kd_keras.filesystems`): each shard and each manifest is written aside and
renamed into place, and on a store whose rename is a copy the manifest,
written after the shards it lists, names only finished ones; a reader
trusts only the manifest and each shard's SHA-256.
"""

import dataclasses
import itertools
import json
import pathlib
import time

import tensorflow as tf

from kd_keras import filesystems, teacher_pass
from kd_keras.data import corpus_files, iter_corpus
from kd_keras.label_shards import STORES, read_shard, save_shard
from kd_keras.progress import log, progress_bar
from kd_keras.storage import CacheError, Fingerprint, file_sha256, write_json_atomic

__all__ = [
    "LABELS_FORMAT",
    "MANIFEST",
    "STORES",
    "LabelResult",
    "file_fingerprint",
    "label_files",
    "label_sentences",
    "labels_dataset",
    "read_labels",
    "read_manifest",
    "read_shard",
    "teacher_fingerprint",
]

LABELS_FORMAT = "kd_keras.labels.v1"
MANIFEST = "manifest.json"


@dataclasses.dataclass(frozen=True)
class LabelResult:
    """What a labeling run found and did.

    Attributes:
        directory: `pathlib.Path` of the output folder (the `str` of an
            object-store one).
        rows: int. Sentences labeled in all.
        shards: int. Shard files.
        reused: int. Shards kept from an earlier (interrupted) run.
        seconds: float. Wall time of this call.
        agreement: dict or `None`. The manifest's `precision_agreement`
            (`None` in float32).
    """

    directory: pathlib.Path
    rows: int
    shards: int
    reused: int
    seconds: float
    agreement: dict = None


def file_fingerprint(paths, **settings):
    """A fingerprint of files' bytes (streamed) and of reading settings (a limit)."""
    fingerprint = Fingerprint("kd_keras.labels.files.v1", settings)
    for path in paths:
        fingerprint.update(filesystems.basename(path)).update(file_sha256(path))
    return fingerprint.hexdigest()


def teacher_fingerprint(teacher):
    """The fingerprint of a teacher's weights and config that a manifest records."""
    return Fingerprint("kd_keras.labels.teacher.v1").update_model(teacher).hexdigest()


def read_manifest(output_dir):
    """The manifest of a labels folder, or `None` when it has none.

    Raises:
        CacheError: the manifest is not valid JSON or not of this format.
    """
    path = filesystems.join(output_dir, MANIFEST)
    if not filesystems.exists(path):
        return None
    try:
        manifest = json.loads(filesystems.read_text(path))
    except ValueError:
        raise CacheError(f"{path} is damaged (not valid JSON). Delete it to label again.") from None
    if not isinstance(manifest, dict) or manifest.get("format") != LABELS_FORMAT:
        raise CacheError(f"{path} is not a kd-keras labels manifest. Delete it to label again.")
    return manifest


def _usable_shards(directory, manifest, key):
    """`{index: entry}` of the finished shards of a matching manifest whose files verify."""
    if manifest is None or manifest.get("key") != key:
        return {}
    usable = {}
    for index, entry in enumerate(manifest.get("shards", [])):
        path = filesystems.join(directory, entry["file"])
        if filesystems.is_file(path) and file_sha256(path) == entry["sha256"]:
            usable[index] = entry
        else:
            log(f"labels: {path} is missing or fails its checksum; labeling it again")
    return usable


def label_sentences(
    teacher,
    sentences,
    output_dir,
    input_fingerprint,
    shard_size=4096,
    store="float32",
    batch_size=64,
    total=None,
    teacher_spec=None,
    inputs=None,
    progress=True,
    precision="float32",
):
    """Labels an iterable of sentences into a sharded, resumable folder.

    Args:
        teacher: a `Teacher` with a preprocessor (or any model `run_teacher` takes).
        sentences: an iterable of str, read once, in order.
        output_dir: the labels folder (created), local or on an object store.
        input_fingerprint: str, what the sentences depend on (their files' bytes).
        shard_size: int. Sentences per shard.
        store: `"float32"` or `"float16"` (half the disk; read back as float32).
        batch_size: int. Sentences per teacher batch.
        total: int or `None`. The number of sentences, for progress only.
        teacher_spec: str or `None`, recorded in the manifest.
        inputs: JSON-able description of the inputs, recorded in the manifest.
        progress: bool. Report progress (`kd_keras.progress`).
        precision: `"float32"` (exact), `"bfloat16"` (faster on CPUs with
            BF16 support) or `"int8"` (int8 weights;
            `kd_keras.teacher_pass.run_teacher`). Other than float32, the
            agreement with float32 on the first sentences is measured and
            recorded (`precision_agreement`).

    Returns:
        A `LabelResult`.
    """
    settings = _settings(shard_size, store, batch_size, precision)
    start = time.perf_counter()
    directory = filesystems.to_path(output_dir)
    filesystems.makedirs(directory)
    manifest = _new_manifest(teacher, input_fingerprint, settings, teacher_spec, inputs)
    usable = _usable_shards(directory, read_manifest(directory), manifest["key"])
    bar = progress_bar(total or 0, "labels", unit="sent", enabled=progress)
    iterator = iter(sentences)
    index = 0
    while True:
        chunk = list(itertools.islice(iterator, shard_size))
        if not chunk:
            break
        if index == 0 and precision != "float32":
            agreement = teacher_pass.precision_agreement(
                teacher, chunk, precision, batch_size=batch_size
            )
            manifest["precision_agreement"] = agreement
        entry = usable.get(index)
        if entry is None or entry["rows"] != [manifest["rows"], manifest["rows"] + len(chunk)]:
            entry = _write_shard(directory, index, chunk, teacher, settings, manifest)
        else:
            manifest["dim"] = manifest["dim"] or entry.get("dim")
        manifest["shards"].append(entry)
        manifest["rows"] += len(chunk)
        write_json_atomic(filesystems.join(directory, MANIFEST), manifest)  # survives a kill
        bar.update(len(chunk))
        index += 1
    bar.close()
    _finish(directory, manifest)
    reused = sum(1 for i, e in enumerate(manifest["shards"]) if usable.get(i) is e)
    return LabelResult(
        directory,
        manifest["rows"],
        len(manifest["shards"]),
        reused,
        time.perf_counter() - start,
        manifest["precision_agreement"],
    )


def _settings(shard_size, store, batch_size, precision="float32"):
    """The manifest's `settings`, checked."""
    if store not in STORES:
        raise ValueError(f"`store` must be one of {STORES}; received {store!r}.")
    if precision not in teacher_pass.PRECISIONS:
        raise ValueError(
            f"`precision` must be one of {teacher_pass.PRECISIONS}; received {precision!r}."
        )
    if int(shard_size) < 1 or int(batch_size) < 1:
        raise ValueError("`shard_size` and `batch_size` must be at least 1.")
    return {
        "shard_size": int(shard_size),
        "store": store,
        "batch_size": int(batch_size),
        "precision": precision,
    }


def _new_manifest(teacher, input_fingerprint, settings, teacher_spec, inputs):
    """An empty, unfinished manifest; its `key` is what its shards depend on."""
    teacher_key = teacher_fingerprint(teacher)
    return {
        "format": LABELS_FORMAT,
        "complete": False,
        "key": Fingerprint(teacher_key, input_fingerprint, settings).hexdigest(),
        "teacher": {"spec": teacher_spec, "fingerprint": teacher_key},
        "inputs": {"fingerprint": input_fingerprint, "description": inputs},
        "settings": settings,
        "rows": 0,
        "dim": None,
        "precision_agreement": None,
        "shards": [],
    }


def _finish(directory, manifest):
    """Removes the shards the manifest does not list and marks it complete."""
    if not manifest["shards"]:
        raise ValueError("No sentences to label.")
    for stale in filesystems.list_names(directory, "shard-*.npz"):
        if stale not in {e["file"] for e in manifest["shards"]}:
            filesystems.remove(filesystems.join(directory, stale))  # of an older, longer run
    manifest["complete"] = True
    write_json_atomic(filesystems.join(directory, MANIFEST), manifest)


def _write_shard(directory, index, chunk, teacher, settings, manifest):
    embeddings = teacher_pass.run_teacher(
        teacher, chunk, batch_size=settings["batch_size"], precision=settings["precision"]
    )
    entry = save_shard(directory, index, manifest["rows"], chunk, embeddings, settings["store"])
    manifest["dim"] = entry["dim"]
    return entry


def label_files(teacher, patterns, output_dir, limit=None, **kwargs):
    """Labels text files (one sentence per line, `.gz` too) into `output_dir`.

    The input fingerprint is the files' bytes and `limit`; see `label_sentences`
    for the rest of the arguments.

    Args:
        teacher: the teacher.
        patterns: paths or glob patterns (`kd_keras.data.corpus_files`).
        output_dir: the labels folder.
        limit: int or `None`. At most this many sentences, in file order.
        **kwargs: passed to `label_sentences`.
    """
    files, fingerprint, description = _corpus_inputs(patterns, limit)
    total = sum(1 for _ in iter_corpus(files, limit)) if kwargs.get("progress", True) else None
    return label_sentences(
        teacher,
        iter_corpus(files, limit),
        output_dir,
        fingerprint,
        total=total,
        inputs=description,
        **kwargs,
    )


def _finished_manifest(directory):
    manifest = read_manifest(directory)
    if manifest is None or not manifest.get("complete"):
        raise CacheError(f"{directory} holds no finished labels (rerun the labeling to finish it).")
    return manifest


def _corpus_inputs(patterns, limit):
    """`(files, input fingerprint, inputs description)` of text files read up to `limit`."""
    files = corpus_files(patterns)
    description = {"files": [str(f) for f in files], "limit": limit}
    return files, file_fingerprint(files, limit=limit), description


def read_labels(output_dir):
    """Yields `(sentences, float32 embeddings)` shard by shard, each verified.

    Raises:
        CacheError: the folder is unfinished or a shard fails its checksum.
    """
    directory = filesystems.to_path(output_dir)
    for entry in _finished_manifest(directory)["shards"]:
        yield read_shard(directory, entry)


def _rows_spec(value):
    """The type spec of `value` with any number of rows."""
    shape = [None, *value.shape[1:]]
    if isinstance(value, tf.RaggedTensor):
        return tf.RaggedTensorSpec(shape, value.dtype, value.ragged_rank, value.row_splits.dtype)
    return tf.TensorSpec(shape, value.dtype)


def labels_dataset(output_dirs, encode, shuffle=True, seed=0, cycle_length=2):
    """The rows of labels folders as a `tf.data.Dataset`, streamed shard by shard.

    Shards are read (and verified) one at a time as the pipeline needs them,
    `cycle_length` at once, interleaved row by row; with `shuffle`, in a new
    order on every pass. Only those shards are ever in memory, however big
    the folders; shuffle the rows further downstream (`Dataset.shuffle`).

    Args:
        output_dirs: labels folders (`label_sentences`), all of one width.
        encode: `fn(list of str) -> tensor or dict of tensors`, each with a
            leading row dimension, ragged or dense (e.g. tokenized ids).
        shuffle: bool. Shuffle the shard order.
        seed: int.
        cycle_length: int. Shards read at once.

    Returns:
        `(dataset, rows)`: a dataset of `(encode(sentence), embedding)` elements
        (embedding float32 `[D]`), and the number of rows.

    Raises:
        CacheError: a folder is unfinished; a shard failing its checksum is
            one when the pipeline reaches it.
        ValueError: the folders' embedding widths differ.
    """
    shards = []
    for directory in map(filesystems.to_path, output_dirs):
        manifest = _finished_manifest(directory)
        shards += [(directory, entry, manifest["dim"]) for entry in manifest["shards"]]
    if not shards:
        raise ValueError("`output_dirs` names no labels folder.")
    dims = {dim for _, _, dim in shards}
    if len(dims) != 1:
        raise ValueError(f"The labels folders hold embeddings of different widths: {sorted(dims)}.")
    dim = dims.pop()
    encoded_spec = tf.nest.map_structure(_rows_spec, encode(["a"]))

    def rows_of(index):
        directory, entry, _ = shards[int(index)]
        sentences, embeddings = read_shard(directory, entry)
        yield encode(sentences), embeddings

    def shard(index):
        return tf.data.Dataset.from_generator(
            rows_of,
            args=(index,),
            output_signature=(encoded_spec, tf.TensorSpec([None, dim], tf.float32)),
        ).unbatch()

    order = tf.data.Dataset.range(len(shards))
    if shuffle:
        order = order.shuffle(len(shards), seed=seed, reshuffle_each_iteration=True)
    dataset = order.interleave(
        shard, cycle_length=cycle_length, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
    )
    return dataset, sum(entry["rows"][1] - entry["rows"][0] for _, entry, _ in shards)
