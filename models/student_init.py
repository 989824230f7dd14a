"""Token-embedding initializations for word-level students (the BiLSTM).

Each function returns a float32 `[vocabulary_size, embedding_dim]` array to
pass as `build_bilstm_encoder(..., embeddings_initializer=array)`; the
student then uses the teacher's WordPiece vocabulary (so the teacher's
`BertPreprocessor` feeds both). `student_embeddings(init, ...)` picks one by
name:

- `"random"`: Keras' default initializer (`None` is returned);
- `"teacher"`: the teacher's input token embeddings (BERT word embeddings),
  reduced to `embedding_dim` by PCA (`teacher_token_embeddings`);
- `"vocab"`: "vocabulary distillation" as in Model2Vec: every token alone
  through the whole teacher as `[CLS] token [SEP]`, its sentence embedding
  reduced by PCA (`vocabulary_distillation_embeddings`). Only a starting
  point: the student is trained afterwards.

The PCA centres the rows, finds the principal axes and keeps the coordinates on the top
`embedding_dim` principal axes, in decreasing order of explained variance,
with the sign of each axis fixed (its largest-magnitude loading is
positive) so that the result is deterministic. The `[PAD]` row is left out
of the fit and set to zeros (the BiLSTM masks id 0 anyway). The coordinates
are not rescaled. When `embedding_dim` is at least the number of principal
axes (the teacher's width, or fewer rows), all of them are kept - a lossless
rotation of the centred rows, distances unchanged - and the remaining
columns are zeros.
"""

import hashlib
import json
import os
import pathlib
import tempfile

import numpy as np

__all__ = [
    "INITS",
    "pca_project",
    "student_embeddings",
    "teacher_fingerprint",
    "teacher_token_embeddings",
    "vocabulary_distillation_embeddings",
    "vocabulary_token_outputs",
]

INITS = ("random", "teacher", "vocab")
_CACHE_FORMAT = "kd_keras.vocabulary_token_outputs.v1"


def pca_project(matrix, embedding_dim, exclude_rows=()):
    """Projects rows onto their top principal axes (centre, eigendecompose, keep top).

    Args:
        matrix: float array `[num_rows, width]`.
        embedding_dim: int. Number of output columns.
        exclude_rows: row indices left out of the fit (mean and axes) and
            set to zeros in the output, e.g. the `[PAD]` id.

    Returns:
        float32 `np.ndarray` `[num_rows, embedding_dim]`: column `j` holds
        the coordinates on the `j`-th principal axis (decreasing explained
        variance); when fewer axes exist than `embedding_dim`, the last
        columns are zeros.
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.ndim != 2:
        raise ValueError(f"Expected a 2D matrix; received shape {matrix.shape}.")
    embedding_dim = int(embedding_dim)
    if embedding_dim < 1:
        raise ValueError(f"`embedding_dim` must be positive; received {embedding_dim}.")
    keep = np.ones(matrix.shape[0], dtype=bool)
    keep[list(exclude_rows)] = False
    fitted = matrix[keep]
    if fitted.shape[0] < 2:
        raise ValueError("PCA needs at least 2 rows besides the excluded ones.")
    mean = fitted.mean(axis=0)
    centred = fitted - mean
    # Principal axes as eigenvectors of the scatter matrix `[width, width]`:
    # the same axes as the SVD of the centred rows, and much faster than it
    # for a tall matrix (30k x 384) on a CPU shared with TensorFlow.
    variances, vectors = np.linalg.eigh(centred.T @ centred)
    order = np.argsort(variances)[::-1]
    variances, axes = variances[order], vectors[:, order].T
    # Axes with (numerically) no variance carry no information: drop them.
    rank = int(np.sum(variances > max(variances[0], 0.0) * 1e-12))
    axes = axes[: min(embedding_dim, rank)]
    # Deterministic signs: the largest-magnitude loading of each axis is positive.
    signs = np.sign(axes[np.arange(axes.shape[0]), np.argmax(np.abs(axes), axis=1)])
    axes = axes * signs[:, None]
    projected = np.zeros((matrix.shape[0], embedding_dim), dtype=np.float64)
    projected[:, : axes.shape[0]] = (matrix - mean) @ axes.T
    projected[~keep] = 0.0
    return projected.astype(np.float32)


def _encoder(teacher):
    """The BERT backbone of a `Teacher` (or the backbone itself)."""
    encoder = getattr(teacher, "encoder", teacher)
    if not hasattr(encoder, "token_embedding"):
        raise ValueError(
            "Expected a `Teacher` around a BERT backbone (`BertEncoder`, "
            f"`keras_hub.models.BertBackbone`); received {type(teacher).__name__}."
        )
    return encoder


def _preprocessor(teacher):
    preprocessor = getattr(teacher, "preprocessor", None)
    if preprocessor is None:
        raise ValueError(
            "The teacher has no `preprocessor`: its vocabulary and special tokens are needed."
        )
    return preprocessor


def _vocabulary_size(teacher):
    preprocessor = getattr(teacher, "preprocessor", None)
    if preprocessor is not None:
        return len(preprocessor.vocabulary)
    return int(_encoder(teacher).vocabulary_size)


def _pad_rows(teacher):
    preprocessor = getattr(teacher, "preprocessor", None)
    return (0,) if preprocessor is None else (int(preprocessor.pad_token_id),)


def teacher_token_embeddings(teacher, embedding_dim):
    """The teacher's word embeddings, PCA-reduced to the student's width.

    Args:
        teacher: a `Teacher` (or a BERT backbone) with a `token_embedding`.
        embedding_dim: int. Width of the student's token embeddings; at or
            above the teacher's width the centred matrix is rotated onto its
            principal axes without loss and padded with zero columns.

    Returns:
        float32 `np.ndarray` `[vocabulary_size, embedding_dim]`, the `[PAD]`
        row all zeros. `vocabulary_size` is the preprocessor's vocabulary
        size (rows of the embedding matrix beyond it, never produced by the
        tokenizer, are dropped).
    """
    encoder = _encoder(teacher)
    matrix = np.asarray(encoder.token_embedding.embeddings.numpy(), dtype=np.float32)
    vocabulary_size = _vocabulary_size(teacher)
    if matrix.shape[0] < vocabulary_size:
        raise ValueError(
            f"The teacher's embedding matrix has {matrix.shape[0]} rows, fewer than its "
            f"vocabulary ({vocabulary_size} tokens)."
        )
    return pca_project(matrix[:vocabulary_size], embedding_dim, exclude_rows=_pad_rows(teacher))


def vocabulary_token_outputs(teacher, batch_size=1024, progress=False):
    """The teacher's output for every vocabulary token alone: `[CLS] token [SEP]`.

    Args:
        teacher: a `Teacher` (or any model from the int32 BERT input dict to
            `[batch, dim]`) with a `preprocessor` (`BertPreprocessor`).
        batch_size: int. Tokens per forward pass.
        progress: bool. Show a tqdm progress bar.

    Returns:
        float32 `np.ndarray` `[vocabulary_size, dim]`: row `i` is the
        teacher's output for token ids `[cls_id, i, sep_id]` (segment ids 0,
        padding mask 1), with no PCA and no zeroed rows.
    """
    import tensorflow as tf

    preprocessor = _preprocessor(teacher)
    vocabulary_size = len(preprocessor.vocabulary)
    batch_size = int(batch_size)
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be positive; received {batch_size}.")

    @tf.function(
        input_signature=[tf.TensorSpec([None, 3], tf.int32)] * 3,
        reduce_retracing=True,
    )
    def forward(token_ids, segment_ids, padding_mask):
        inputs = {
            "token_ids": token_ids,
            "segment_ids": segment_ids,
            "padding_mask": padding_mask,
        }
        return teacher(inputs, training=False)

    starts = range(0, vocabulary_size, batch_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="vocabulary distillation", unit="batch")
    rows = []
    for start in starts:
        ids = np.arange(start, min(start + batch_size, vocabulary_size), dtype=np.int32)
        token_ids = np.stack(
            [
                np.full_like(ids, preprocessor.cls_token_id),
                ids,
                np.full_like(ids, preprocessor.sep_token_id),
            ],
            axis=1,
        )
        outputs = forward(token_ids, np.zeros_like(token_ids), np.ones_like(token_ids))
        if isinstance(outputs, dict) or len(outputs.shape) != 2:
            raise ValueError(
                "The teacher must return one embedding per input, `[batch, dim]`; "
                "use a pooled `Teacher` (pooling 'mean', 'cls', 'max' or 'pooled')."
            )
        rows.append(np.asarray(outputs, dtype=np.float32))
    return np.concatenate(rows, axis=0)


def teacher_fingerprint(teacher):
    """A hash of what the teacher's per-token outputs depend on.

    Covers the vocabulary and special token ids, every weight (shape, dtype
    and bytes, in the model's weight order), the encoder's config (activation,
    epsilon, sizes; its name left out) and the pooling and normalization.

    Args:
        teacher: a `Teacher` with a `preprocessor`.

    Returns:
        str, a SHA-256 hex digest.
    """
    preprocessor = _preprocessor(teacher)
    digest = hashlib.sha256()
    digest.update(_CACHE_FORMAT.encode())
    digest.update("\n".join(preprocessor.vocabulary).encode("utf-8"))
    special = [preprocessor.cls_token_id, preprocessor.sep_token_id, preprocessor.pad_token_id]
    digest.update(json.dumps(special).encode())
    encoder = getattr(teacher, "encoder", None)
    if encoder is not None and hasattr(encoder, "get_config"):
        config = {k: v for k, v in encoder.get_config().items() if k not in ("name", "trainable")}
        digest.update(json.dumps(config, sort_keys=True, default=str).encode())
    settings = {
        "class": type(teacher).__name__,
        "pooling": getattr(teacher, "pooling", None),
        "normalize": getattr(teacher, "normalize", None),
    }
    digest.update(json.dumps(settings, sort_keys=True).encode())
    for variable in teacher.weights:
        value = np.ascontiguousarray(variable.numpy())
        digest.update(f"{value.shape}{value.dtype}".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def _read_cache(path, fingerprint):
    """The cached outputs if `path` holds them for `fingerprint`, else `None`."""
    try:
        with np.load(path, allow_pickle=False) as cache:
            if str(cache["format"]) != _CACHE_FORMAT or str(cache["fingerprint"]) != fingerprint:
                return None
            return np.asarray(cache["outputs"], dtype=np.float32)
    except (OSError, ValueError, KeyError):  # missing, truncated or foreign file
        return None


def _write_cache(path, outputs, fingerprint):
    """Writes the `.npz` next to its final place, then renames it (atomic)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            np.savez(
                file,
                outputs=outputs,
                fingerprint=np.asarray(fingerprint),
                format=np.asarray(_CACHE_FORMAT),
            )
        os.chmod(temporary, 0o644)  # mkstemp creates it owner-only
        os.replace(temporary, path)
    except BaseException:
        pathlib.Path(temporary).unlink(missing_ok=True)
        raise


def vocabulary_distillation_embeddings(
    teacher, embedding_dim, batch_size=1024, progress=False, cache_path=None
):
    """Token embeddings from the teacher's output on each token alone (Model2Vec).

    Every token id `i` runs through the teacher as `[CLS] i [SEP]`
    (`vocabulary_token_outputs`); the outputs are PCA-reduced to
    `embedding_dim` (see `pca_project`) with the `[PAD]` row left out of the
    fit and zeroed.

    The forward passes (about a minute for a 30k vocabulary through
    MiniLM-L6 on 2 CPU cores) can be cached: with `cache_path`, the raw
    per-token outputs (before PCA, so one cache serves every
    `embedding_dim`) are stored there as an `.npz` together with
    `teacher_fingerprint(teacher)`, and reused when the fingerprint matches;
    otherwise (missing, stale or unreadable file) they are recomputed and the
    file is replaced atomically.

    Args:
        teacher: a `Teacher` with a `preprocessor`, returning `[batch, dim]`.
        embedding_dim: int. Width of the student's token embeddings.
        batch_size: int. Tokens per forward pass.
        progress: bool. Show a tqdm progress bar.
        cache_path: `None`, or the path of the `.npz` cache file.

    Returns:
        float32 `np.ndarray` `[vocabulary_size, embedding_dim]`, the `[PAD]`
        row all zeros.
    """
    outputs = None
    if cache_path is not None:
        cache_path = pathlib.Path(cache_path)
        fingerprint = teacher_fingerprint(teacher)
        outputs = _read_cache(cache_path, fingerprint)
    if outputs is None:
        outputs = vocabulary_token_outputs(teacher, batch_size=batch_size, progress=progress)
        if cache_path is not None:
            _write_cache(cache_path, outputs, fingerprint)
    return pca_project(outputs, embedding_dim, exclude_rows=_pad_rows(teacher))


def student_embeddings(init, teacher, embedding_dim, cache_path=None, progress=False):
    """Initial token embeddings for a word-level student, by name.

    Args:
        init: `"random"` (Keras' default initializer), `"teacher"`
            (`teacher_token_embeddings`) or `"vocab"`
            (`vocabulary_distillation_embeddings`).
        teacher: a `Teacher`; unused for `"random"`.
        embedding_dim: int. Width of the student's token embeddings.
        cache_path: `None` or the `.npz` cache of `"vocab"` (ignored otherwise).
        progress: bool. Progress bar for `"vocab"`.

    Returns:
        `None` for `"random"`, else a float32 `np.ndarray`
        `[vocabulary_size, embedding_dim]`.
    """
    if init not in INITS:
        raise ValueError(f"`init` must be one of {INITS}; received {init!r}.")
    if init == "random":
        return None
    if teacher is None:
        raise ValueError(f"`init={init!r}` needs a teacher.")
    if init == "teacher":
        return teacher_token_embeddings(teacher, embedding_dim)
    return vocabulary_distillation_embeddings(
        teacher, embedding_dim, progress=progress, cache_path=cache_path
    )
