"""One pass of a teacher over a data set: length-bucketed batches, cached on disk.

`run_teacher` tokenizes everything once, sorts the sentences by token count
and cuts batches from that order (`kd_keras.batching.length_batches`),
padding each batch only to its own longest row (rounded up to a multiple of
`pad_multiple`), then puts the outputs back in input order.
`cache_teacher_outputs` stores those outputs in one cache file
(`kd_keras.storage`) keyed by a fingerprint of the teacher's weights and
config, the inputs and the settings: a matching cache is reused, a stale one
rebuilt, and a truncated or corrupted one is an error naming the file.

`precision="int8"` runs an int8 copy of the teacher (`kd_keras.quantize`:
weights only, made once per teacher); `precision_agreement` measures how
close another precision's outputs are to float32's on a few sentences.

`vocabulary_outputs` is the same idea over a vocabulary: the teacher's output
for every token alone (`[CLS] token [SEP]`), the input of vocabulary
distillation (`kd_keras.models.student_init`), cached the same way.
"""

import contextlib
import time
import weakref

import numpy as np
import tensorflow as tf

from kd_keras.batching import length_batches
from kd_keras.models.heads import cosine_similarity
from kd_keras.models.student_init import token_forward
from kd_keras.progress import log, progress_bar
from kd_keras.quantize import quantize_copy
from kd_keras.storage import CacheError, Fingerprint, cached_arrays

__all__ = [
    "CACHE_VERSION",
    "PRECISIONS",
    "CacheError",
    "cache_teacher_outputs",
    "precision_agreement",
    "run_teacher",
    "teacher_fingerprint",
    "vocabulary_outputs",
    "vocabulary_token_outputs",
]

CACHE_VERSION = "kd_keras.teacher_pass.v2"
PRECISIONS = ("float32", "bfloat16", "int8")
AGREEMENT_SENTENCES = 256
_FORWARD_CACHE = weakref.WeakKeyDictionary()


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


def _tokenize(preprocessor, texts, chunk=4096):
    parts = [preprocessor.tokenize(texts[i : i + chunk]) for i in range(0, len(texts), chunk)]
    return tf.concat(parts, axis=0) if len(parts) > 1 else parts[0]


def _forward_fn(model, jit_compile, precision="float32"):
    """A traced-once forward pass, cached per model (held weakly) and setting."""
    key = (jit_compile, precision)
    try:
        cached = _FORWARD_CACHE.get(model, {})
    except TypeError:  # not weak-referenceable
        cached = {}
    if key in cached:
        return cached[key]
    model_ref = weakref.ref(model) if _weakrefable(model) else lambda: model
    quantized = None
    if precision == "int8":
        quantized = quantize_copy(model, "int8").model  # held by this function only
    spec = {
        k: tf.TensorSpec([None, None], tf.int32)
        for k in ("token_ids", "segment_ids", "padding_mask")
    }

    @tf.function(input_signature=[spec], jit_compile=jit_compile, reduce_retracing=True)
    def forward(inputs):
        target = model_ref() if quantized is None else quantized
        return target(inputs, training=False)

    if _weakrefable(model):
        _FORWARD_CACHE.setdefault(model, {})[key] = forward
    return forward


@contextlib.contextmanager
def _precision_scope(precision):
    """`"bfloat16"`: TensorFlow's oneDNN auto-mixed-precision graph rewrite while
    inside (matmuls and their neighbours in bfloat16 on CPUs with AVX-512 BF16
    or AMX; float32 in and out). A global Grappler option, restored on exit:
    functions run in other threads meanwhile are rewritten too. `"float32"`
    and `"int8"` (a quantized model, `_forward_fn`) need no rewrite."""
    if precision not in PRECISIONS:
        raise ValueError(f"`precision` must be one of {PRECISIONS}; received {precision!r}.")
    if precision != "bfloat16":
        yield
        return
    option = "auto_mixed_precision_onednn_bfloat16"
    before = tf.config.optimizer.get_experimental_options().get(option, False)
    tf.config.optimizer.set_experimental_options({option: True})
    try:
        yield
    finally:
        tf.config.optimizer.set_experimental_options({option: before})


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
    precision="float32",
):
    """Runs `model` over tokenized rows; returns outputs in row order."""
    max_length = preprocessor.sequence_length if pad_to is None else int(pad_to)
    special = 2 if second is None else 3
    lengths = first.row_lengths().numpy()
    if second is not None:
        lengths = lengths + second.row_lengths().numpy()
    lengths = np.minimum(lengths + special, max_length)
    forward = _forward_fn(model, jit_compile, precision)
    n = len(lengths)
    results = None
    bar = progress_bar(n, description, unit="sent", enabled=progress)
    with contextlib.ExitStack() as stack:
        stack.enter_context(_precision_scope(precision))
        stack.callback(bar.close)
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
    precision="float32",
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
        progress: bool. Report progress (`kd_keras.progress.progress_bar`).
        precision: `"float32"` (exact), or `"bfloat16"`: oneDNN's automatic
            mixed precision (`_precision_scope`), faster on CPUs with AVX-512
            BF16 or AMX, outputs within about 1e-2 of float32; or `"int8"`: an
            int8-weights copy of `model` (`kd_keras.quantize.quantize_copy`,
            made once per model; `model` is not changed), about as fast as
            float32 on CPU (`precision_agreement` measures its outputs).

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
        precision=precision,
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


def precision_agreement(
    model, sentences, precision, preprocessor=None, batch_size=64, limit=AGREEMENT_SENTENCES
):
    """How close a teacher's `precision` embeddings are to its float32 ones.

    Formula, over the first `limit` sentences `s`:

    ```
    cos(s) = <e32(s) / max(|e32(s)|, eps), e(s) / max(|e(s)|, eps)>
    ```

    Args:
        model: the teacher (see `run_teacher`); outputs `[batch, dim]`.
        sentences: list of str.
        precision: one of `PRECISIONS`.
        preprocessor: `BertPreprocessor`; defaults to `model.preprocessor`.
        batch_size: int.
        limit: int. Sentences compared (the first ones).

    Returns:
        `{"precision", "sentences", "mean_cosine", "min_cosine"}`.
    """
    sample = _check_inputs(sentences)[: int(limit)]
    settings = dict(preprocessor=preprocessor, batch_size=batch_size)
    reference = run_teacher(model, sample, precision="float32", **settings)
    outputs = run_teacher(model, sample, precision=precision, **settings)
    cosines = np.asarray(cosine_similarity(reference, outputs), np.float64)
    return {
        "precision": precision,
        "sentences": len(sample),
        "mean_cosine": float(cosines.mean()),
        "min_cosine": float(cosines.min()),
    }


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
    fingerprint = Fingerprint(CACHE_VERSION).update_model(model)
    if preprocessor is not None:
        fingerprint.update(preprocessor.get_config())
    return fingerprint.update_texts(inputs).update(settings).hexdigest()


def _flatten(outputs):
    """`{storage_key: array}` of an array, a dict of arrays or a tuple of those.

    The keys spell the structure (`array`, `dict/<key>`, `<i>/...`), so that
    `_unflatten` rebuilds it from the keys alone.
    """
    if isinstance(outputs, tuple):
        return {f"{i}/{k}": v for i, o in enumerate(outputs) for k, v in _flatten(o).items()}
    if isinstance(outputs, dict):
        return {f"dict/{k}": np.asarray(v) for k, v in outputs.items()}
    return {"array": np.asarray(outputs)}


def _unflatten(arrays):
    if "array" in arrays:
        return arrays["array"]
    if all(key.startswith("dict/") for key in arrays):
        return {key[len("dict/") :]: value for key, value in arrays.items()}
    parts = {}
    for key, value in arrays.items():
        index, rest = key.split("/", 1)
        parts.setdefault(int(index), {})[rest] = value
    return tuple(_unflatten(parts[i]) for i in sorted(parts))


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
    precision="float32",
):
    """Runs the teacher once over `inputs` and caches the outputs on disk.

    The cache is one file (`kd_keras.storage.cached_arrays`) holding the
    outputs, the fingerprint (`teacher_fingerprint`: weights, configs,
    inputs, settings) and a checksum of the arrays, written atomically. A
    cache with the same fingerprint is returned as is (after checking the
    checksum); one with another fingerprint is rebuilt; a truncated or
    corrupted one raises `CacheError` naming the file.

    Args:
        model: the Keras teacher (e.g. a `Teacher`).
        inputs: list of strings, or list of `(first, second)` pairs.
        cache_path: path of the `.npz` cache file.
        preprocessor: `BertPreprocessor`; defaults to `model.preprocessor`.
        batch_size, bucketing, pad_to, pair_encoding, jit_compile, precision:
            see `run_teacher`.
        progress: bool. Report progress.
        rebuild: bool. Ignore (and overwrite) an existing cache.

    Returns:
        The teacher outputs, as `run_teacher` returns them.
    """
    inputs = _check_inputs(inputs)
    preprocessor = preprocessor or getattr(model, "preprocessor", None)
    if preprocessor is None:
        raise ValueError("`preprocessor` is required: the model has none.")
    settings = {
        "batch_size": int(batch_size),
        "bucketing": bool(bucketing),
        "pad_to": pad_to,
        "pair_encoding": pair_encoding if _is_pair(inputs) else None,
        "jit_compile": bool(jit_compile),
        "precision": precision,
    }
    fingerprint = teacher_fingerprint(model, inputs, settings, preprocessor)

    def compute():
        return _flatten(
            run_teacher(
                model,
                inputs,
                preprocessor=preprocessor,
                batch_size=batch_size,
                bucketing=bucketing,
                pad_to=pad_to,
                pair_encoding=pair_encoding,
                jit_compile=jit_compile,
                progress=progress,
                precision=precision,
            )
        )

    meta = {"num_inputs": len(inputs), "settings": settings}
    arrays = cached_arrays(cache_path, fingerprint, compute, meta=meta, rebuild=rebuild)
    return _unflatten(arrays)


# === The teacher over its vocabulary ===


def vocabulary_token_outputs(teacher, batch_size=1024, progress=False):
    """The teacher's output for every vocabulary token alone: `[CLS] token [SEP]`.

    The forward pass is `kd_keras.models.student_init.token_forward`: three
    positions per token, no padding, traced once; for a `Teacher` around a
    KerasHub BERT backbone, its fused form (the same outputs within about
    1e-6, faster on a CPU). 30,522 tokens of all-MiniLM-L6-v2 are about 2
    TFLOP of float32 matrix products.

    Args:
        teacher: a `Teacher` (or any model from the int32 BERT input dict to
            `[batch, dim]`) with a `preprocessor` (`BertPreprocessor`).
        batch_size: int. Tokens per forward pass.
        progress: bool. Report progress, then one line with the elapsed seconds.

    Returns:
        float32 `np.ndarray` `[vocabulary_size, dim]`: row `i` is the
        teacher's output for token ids `[cls_id, i, sep_id]` (segment ids 0,
        padding mask 1), with no PCA and no zeroed rows.
    """
    preprocessor = _vocabulary_preprocessor(teacher)
    vocabulary_size = len(preprocessor.vocabulary)
    batch_size = int(batch_size)
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be positive; received {batch_size}.")
    start_time = time.perf_counter()
    forward = token_forward(teacher, preprocessor.cls_token_id, preprocessor.sep_token_id)
    bar = progress_bar(vocabulary_size, "vocabulary distillation", unit="token", enabled=progress)
    result = None
    with contextlib.ExitStack() as stack:
        stack.callback(bar.close)
        for start in range(0, vocabulary_size, batch_size):
            ids = np.arange(start, min(start + batch_size, vocabulary_size), dtype=np.int32)
            outputs = forward(ids)
            if isinstance(outputs, dict) or len(outputs.shape) != 2:
                raise ValueError(
                    "The teacher must return one embedding per input, `[batch, dim]`; "
                    "use a pooled `Teacher` (pooling 'mean', 'cls', 'max' or 'pooled')."
                )
            if result is None:
                result = np.empty((vocabulary_size, outputs.shape[1]), np.float32)
            result[start : start + len(ids)] = np.asarray(outputs, dtype=np.float32)
            bar.update(len(ids))
    if progress:
        seconds = time.perf_counter() - start_time
        log(f"vocabulary distillation: {vocabulary_size} tokens in {seconds:.1f} s")
    return result


def _vocabulary_preprocessor(teacher):
    preprocessor = getattr(teacher, "preprocessor", None)
    if preprocessor is None:
        raise ValueError(
            "The teacher has no `preprocessor`: its vocabulary and special tokens are needed."
        )
    return preprocessor


def vocabulary_outputs(teacher, cache_path=None, batch_size=1024, progress=False):
    """`vocabulary_token_outputs`, cached at `cache_path` when given.

    The cache (`kd_keras.storage.cached_arrays`) holds the raw per-token
    outputs (before any PCA, so one file serves every student width) with a
    fingerprint of the teacher's config and weights and of its preprocessor;
    a stale file is recomputed, a damaged one is an error naming it.

    Args:
        teacher: a `Teacher` with a `preprocessor`, returning `[batch, dim]`.
        cache_path: `None`, or the cache file.
        batch_size: int. Tokens per forward pass.
        progress: bool. Report progress.

    Returns:
        float32 `np.ndarray` `[vocabulary_size, dim]`.
    """

    def compute():
        return {"outputs": vocabulary_token_outputs(teacher, batch_size, progress=progress)}

    if cache_path is None:
        return compute()["outputs"]
    fingerprint = (
        Fingerprint("kd_keras.vocabulary_outputs.v2")
        .update_model(teacher)
        .update(_vocabulary_preprocessor(teacher).get_config())
        .hexdigest()
    )
    arrays = cached_arrays(cache_path, fingerprint, compute)
    return arrays["outputs"]
