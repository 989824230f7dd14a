"""One pass of a teacher over a data set: length-bucketed batches, cached on disk.

`run_teacher` tokenizes everything once, sorts the sentences by token count
and cuts batches from that order, padding each batch only to its own longest
row (rounded up to a multiple of `pad_multiple`), then puts the outputs back
in input order. `cache_teacher_outputs` stores those outputs in one `.npz`
file keyed by a fingerprint of the teacher's weights and config, the inputs
and the settings: a matching cache is reused, a stale one rebuilt, and a
truncated or corrupted one reported.
"""

import hashlib
import json
import logging
import os
import pathlib
import tempfile
import weakref
import zipfile

import numpy as np

__all__ = [
    "CACHE_FORMAT",
    "CacheError",
    "cache_teacher_outputs",
    "length_batches",
    "run_teacher",
    "teacher_fingerprint",
]

CACHE_FORMAT = "kd_keras.teacher_cache.v1"
_META_KEY = "__meta__"
logger = logging.getLogger(__name__)
_FORWARD_CACHE = weakref.WeakKeyDictionary()


class CacheError(ValueError):
    """A teacher cache file that cannot be trusted (truncated, corrupted)."""


def _is_pair(inputs):
    return bool(inputs) and isinstance(inputs[0], (tuple, list))


def _check_inputs(inputs):
    inputs = list(inputs)
    if not inputs:
        raise ValueError("No inputs: the teacher pass needs at least one sentence.")
    if _is_pair(inputs):
        for i, pair in enumerate(inputs):
            if len(pair) != 2 or not all(isinstance(s, str) for s in pair):
                raise ValueError(f"Input {i} is not a pair of strings: {pair!r}.")
    else:
        for i, s in enumerate(inputs):
            if not isinstance(s, str):
                raise ValueError(f"Input {i} is not a string: {s!r}.")
    return inputs


def length_batches(lengths, batch_size, bucketing=True):
    """Splits row indices into batches, by length when `bucketing`.

    Args:
        lengths: int array of sequence lengths.
        batch_size: int. Rows per batch.
        bucketing: bool. Sort by length first (stable), so that each batch
            holds rows of similar length; otherwise keep input order.

    Returns:
        List of int arrays of row indices.
    """
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be positive; received {batch_size}.")
    lengths = np.asarray(lengths)
    order = np.argsort(lengths, kind="stable") if bucketing else np.arange(len(lengths))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def _tokenize(preprocessor, texts, chunk=4096):
    import tensorflow as tf

    parts = [preprocessor.tokenize(texts[i : i + chunk]) for i in range(0, len(texts), chunk)]
    return tf.concat(parts, axis=0) if len(parts) > 1 else parts[0]


def _forward_fn(model, jit_compile):
    """A traced-once forward pass, cached per model (held weakly)."""
    try:
        cached = _FORWARD_CACHE.get(model, {})
    except TypeError:  # not weak-referenceable
        cached = {}
    if jit_compile in cached:
        return cached[jit_compile]
    import tensorflow as tf

    model_ref = weakref.ref(model) if _weakrefable(model) else lambda: model
    spec = {
        k: tf.TensorSpec([None, None], tf.int32)
        for k in ("token_ids", "segment_ids", "padding_mask")
    }

    @tf.function(input_signature=[spec], jit_compile=jit_compile, reduce_retracing=True)
    def forward(inputs):
        return model_ref()(inputs, training=False)

    if _weakrefable(model):
        _FORWARD_CACHE.setdefault(model, {})[jit_compile] = forward
    return forward


def _weakrefable(obj):
    try:
        weakref.ref(obj)
    except TypeError:
        return False
    return True


def _to_numpy_tree(outputs):
    if isinstance(outputs, dict):
        return {k: np.asarray(v) for k, v in outputs.items()}
    return np.asarray(outputs)


def _run_packed(
    model,
    preprocessor,
    first,
    second,
    batch_size,
    bucketing,
    pad_to,
    pad_multiple,
    jit_compile,
    progress,
    description,
):
    """Runs `model` over tokenized rows; returns outputs in row order."""
    import tensorflow as tf
    from tqdm.auto import tqdm

    max_length = preprocessor.sequence_length if pad_to is None else int(pad_to)
    special = 2 if second is None else 3
    lengths = first.row_lengths().numpy()
    if second is not None:
        lengths = lengths + second.row_lengths().numpy()
    lengths = np.minimum(lengths + special, max_length)
    forward = _forward_fn(model, jit_compile)
    n = len(lengths)
    results = None
    bar = tqdm(total=n, desc=description, unit="sent", disable=not progress, leave=False)
    try:
        for rows in length_batches(lengths, batch_size, bucketing=bucketing):
            if pad_to is None:
                width = int(lengths[rows].max())
                width = min(-(-width // pad_multiple) * pad_multiple, max_length)
            else:
                width = int(pad_to)
            index = tf.constant(rows)
            packed = preprocessor.pack(
                tf.gather(first, index),
                None if second is None else tf.gather(second, index),
                sequence_length=max_length,
                pad_to=width,
            )
            out = _to_numpy_tree(forward(packed))
            if results is None:
                results = _allocate(out, n)
            _scatter(results, out, rows)
            bar.update(len(rows))
    finally:
        bar.close()
    return results


def _allocate(example, n):
    if isinstance(example, dict):
        return {k: np.empty((n,) + v.shape[1:], v.dtype) for k, v in example.items()}
    return np.empty((n,) + example.shape[1:], example.dtype)


def _scatter(results, out, rows):
    if isinstance(results, dict):
        for k in results:
            results[k][rows] = out[k]
    else:
        results[rows] = out


def run_teacher(
    model,
    inputs,
    preprocessor=None,
    batch_size=64,
    bucketing=True,
    pad_to=None,
    pad_multiple=8,
    pair_encoding="cross",
    jit_compile=False,
    progress=False,
):
    """Runs a teacher over sentences or sentence pairs, batched by length.

    Args:
        model: Keras model (or callable) on the preprocessor's int32 BERT
            inputs, returning a tensor or a dict of tensors.
        inputs: list of strings, or list of `(first, second)` string pairs.
        preprocessor: `BertPreprocessor`; defaults to `model.preprocessor`.
        batch_size: int. Rows per batch.
        bucketing: bool. Sort rows by length before batching.
        pad_to: `None` for dynamic padding (each batch to its longest row,
            rounded up to `pad_multiple`), or an int: pad (and truncate)
            every batch to that length.
        pad_multiple: int. Rounding of dynamic batch widths.
        pair_encoding: for pairs, `"cross"` packs each pair into one input
            (`[CLS] a [SEP] b [SEP]`, a cross-encoder) and returns the
            model's outputs on it; `"separate"` runs the model on each
            distinct sentence once and returns a tuple `(first_outputs,
            second_outputs)` (a siamese / bi-encoder teacher).
        jit_compile: bool. XLA-compile the forward pass (every distinct batch
            width compiles once).
        progress: bool. Show a tqdm progress bar.

    Returns:
        `np.ndarray` (or dict of them) with one row per input, in input
        order; a tuple of two for `pair_encoding="separate"`.
    """
    inputs = _check_inputs(inputs)
    preprocessor = preprocessor or getattr(model, "preprocessor", None)
    if preprocessor is None:
        raise ValueError("`preprocessor` is required: the model has none.")
    settings = dict(
        batch_size=batch_size,
        bucketing=bucketing,
        pad_to=pad_to,
        pad_multiple=pad_multiple,
        jit_compile=jit_compile,
        progress=progress,
    )
    if not _is_pair(inputs):
        ids = _tokenize(preprocessor, inputs)
        return _run_packed(model, preprocessor, ids, None, description="teacher", **settings)
    if pair_encoding == "cross":
        first = _tokenize(preprocessor, [a for a, _ in inputs])
        second = _tokenize(preprocessor, [b for _, b in inputs])
        return _run_packed(model, preprocessor, first, second, description="teacher", **settings)
    if pair_encoding != "separate":
        raise ValueError(f"`pair_encoding` must be 'cross' or 'separate'; got {pair_encoding!r}.")
    unique = list(dict.fromkeys(s for pair in inputs for s in pair))
    position = {s: i for i, s in enumerate(unique)}
    ids = _tokenize(preprocessor, unique)
    outputs = _run_packed(model, preprocessor, ids, None, description="teacher", **settings)
    firsts = np.array([position[a] for a, _ in inputs])
    seconds = np.array([position[b] for _, b in inputs])
    if isinstance(outputs, dict):
        return (
            {k: v[firsts] for k, v in outputs.items()},
            {k: v[seconds] for k, v in outputs.items()},
        )
    return outputs[firsts], outputs[seconds]


def _update_with_array(digest, array):
    array = np.ascontiguousarray(array)
    digest.update(f"{array.dtype.str}{array.shape}".encode())
    digest.update(memoryview(array).cast("B"))


def teacher_fingerprint(model, inputs, settings, preprocessor=None):
    """SHA-256 of a teacher's weights and config, the inputs and the settings.

    Args:
        model: the Keras teacher.
        inputs: list of strings or string pairs.
        settings: JSON-able dict of the settings that shape the outputs.
        preprocessor: the tokenizer, whose config (vocabulary, casing,
            length) is part of the key.

    Returns:
        Hex digest string.
    """
    import keras

    digest = hashlib.sha256()
    digest.update(CACHE_FORMAT.encode())
    for variable in model.weights:
        digest.update(variable.path.encode() if hasattr(variable, "path") else b"")
        _update_with_array(digest, keras.ops.convert_to_numpy(variable))
    for obj in (model, preprocessor):
        try:
            config = obj.get_config() if obj is not None else None
        except (NotImplementedError, AttributeError, TypeError):
            config = type(obj).__qualname__
        digest.update(json.dumps(config, sort_keys=True, default=repr).encode())
    for item in inputs:
        for text in item if isinstance(item, (tuple, list)) else (item,):
            encoded = text.encode("utf-8")
            digest.update(len(encoded).to_bytes(8, "little"))
            digest.update(encoded)
        digest.update(b"\x00" if isinstance(item, (tuple, list)) else b"\x01")
    digest.update(json.dumps(settings, sort_keys=True).encode())
    return digest.hexdigest()


def _flatten(outputs):
    """`{storage_key: array}` and a JSON description of the structure."""
    if isinstance(outputs, tuple):
        parts = [_flatten(o) for o in outputs]
        arrays = {f"{i}/{k}": v for i, (a, _) in enumerate(parts) for k, v in a.items()}
        return arrays, {"tuple": [s for _, s in parts]}
    if isinstance(outputs, dict):
        return {f"dict/{k}": np.asarray(v) for k, v in outputs.items()}, {"dict": sorted(outputs)}
    return {"array": np.asarray(outputs)}, "array"


def _unflatten(arrays, structure, prefix=""):
    if isinstance(structure, dict) and "tuple" in structure:
        return tuple(
            _unflatten(arrays, s, f"{prefix}{i}/") for i, s in enumerate(structure["tuple"])
        )
    if isinstance(structure, dict) and "dict" in structure:
        return {k: arrays[f"{prefix}dict/{k}"] for k in structure["dict"]}
    return arrays[f"{prefix}array"]


def _checksum(arrays):
    digest = hashlib.sha256()
    for key in sorted(arrays):
        digest.update(key.encode())
        _update_with_array(digest, arrays[key])
    return digest.hexdigest()


def _read_cache(path):
    """`(meta, arrays)` of a cache file; raises `CacheError` when damaged."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (zipfile.BadZipFile, ValueError, EOFError, OSError, KeyError) as e:
        raise CacheError(
            f"Teacher cache {path} is truncated or corrupted ({type(e).__name__}: {e}). "
            "Delete it, or pass rebuild=True, to run the teacher again."
        ) from None
    if _META_KEY not in arrays:
        raise CacheError(f"{path} is not a kd-keras teacher cache (no {_META_KEY} entry).")
    try:
        meta = json.loads(str(arrays.pop(_META_KEY)))
    except ValueError:
        raise CacheError(f"Teacher cache {path}: unreadable metadata.") from None
    if meta.get("format") != CACHE_FORMAT:
        raise CacheError(f"{path}: unknown cache format {meta.get('format')!r}.")
    return meta, arrays


def _write_cache(path, meta, arrays):
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays, **{_META_KEY: np.array(json.dumps(meta))})
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def cache_teacher_outputs(
    model,
    inputs,
    cache_path,
    preprocessor=None,
    batch_size=64,
    bucketing=True,
    pad_to=None,
    pair_encoding="cross",
    jit_compile=False,
    progress=True,
    rebuild=False,
):
    """Runs the teacher once over `inputs` and caches the outputs on disk.

    The cache is one `.npz` file holding the outputs, the fingerprint
    (`teacher_fingerprint`: weights, configs, inputs, settings) and a
    SHA-256 checksum of the arrays; it is written to a temporary file and
    moved into place. A cache with the same fingerprint is returned as is
    (after checking the checksum); one with another fingerprint is rebuilt;
    a truncated or corrupted one raises `CacheError`.

    Args:
        model: the Keras teacher (e.g. a `Teacher`).
        inputs: list of strings, or list of `(first, second)` pairs.
        cache_path: path of the `.npz` cache file.
        preprocessor: `BertPreprocessor`; defaults to `model.preprocessor`.
        batch_size, bucketing, pad_to, pair_encoding, jit_compile: see
            `run_teacher`.
        progress: bool. Show a tqdm progress bar.
        rebuild: bool. Ignore (and overwrite) an existing cache.

    Returns:
        The teacher outputs, as `run_teacher` returns them.
    """
    inputs = _check_inputs(inputs)
    preprocessor = preprocessor or getattr(model, "preprocessor", None)
    if preprocessor is None:
        raise ValueError("`preprocessor` is required: the model has none.")
    cache_path = pathlib.Path(cache_path)
    settings = {
        "batch_size": int(batch_size),
        "bucketing": bool(bucketing),
        "pad_to": pad_to,
        "pair_encoding": pair_encoding if _is_pair(inputs) else None,
        "jit_compile": bool(jit_compile),
    }
    fingerprint = teacher_fingerprint(model, inputs, settings, preprocessor)
    if cache_path.exists() and not rebuild:
        meta, arrays = _read_cache(cache_path)
        if meta.get("fingerprint") == fingerprint:
            if _checksum(arrays) != meta.get("checksum"):
                raise CacheError(
                    f"Teacher cache {cache_path} is corrupted: its checksum does not match "
                    "its contents. Delete it, or pass rebuild=True."
                )
            return _unflatten(arrays, meta["structure"])
        logger.info("Teacher cache %s is stale (fingerprint differs); rebuilding.", cache_path)
    outputs = run_teacher(
        model,
        inputs,
        preprocessor=preprocessor,
        batch_size=batch_size,
        bucketing=bucketing,
        pad_to=pad_to,
        pair_encoding=pair_encoding,
        jit_compile=jit_compile,
        progress=progress,
    )
    arrays, structure = _flatten(outputs)
    meta = {
        "format": CACHE_FORMAT,
        "fingerprint": fingerprint,
        "checksum": _checksum(arrays),
        "structure": structure,
        "num_inputs": len(inputs),
        "settings": settings,
    }
    _write_cache(cache_path, meta, arrays)
    return outputs
