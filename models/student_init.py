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
  through the whole teacher as `[CLS] token [SEP]` (a teacher pass over the
  vocabulary, `kd_keras.teacher_pass.vocabulary_outputs`, cached), its
  sentence embedding reduced by PCA (`vocabulary_distillation_embeddings`).
  Only a starting point: the student is trained afterwards.

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

import numpy as np

__all__ = [
    "INITS",
    "pca_project",
    "student_embeddings",
    "teacher_token_embeddings",
    "vocabulary_distillation_embeddings",
]

INITS = ("random", "teacher", "vocab")


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


def vocabulary_distillation_embeddings(token_outputs, embedding_dim, pad_token_id=0):
    """Token embeddings from the teacher's output on each token alone (Model2Vec).

    Args:
        token_outputs: float `[vocabulary_size, dim]`: row `i` is the
            teacher's output for `[CLS] i [SEP]`
            (`kd_keras.teacher_pass.vocabulary_outputs`, cached).
        embedding_dim: int. Width of the student's token embeddings.
        pad_token_id: int. The `[PAD]` row, left out of the PCA fit and zeroed.

    Returns:
        float32 `np.ndarray` `[vocabulary_size, embedding_dim]` (see `pca_project`).
    """
    return pca_project(token_outputs, embedding_dim, exclude_rows=(int(pad_token_id),))


def student_embeddings(init, teacher, embedding_dim, token_outputs=None):
    """Initial token embeddings for a word-level student, by name.

    Args:
        init: `"random"` (Keras' default initializer), `"teacher"`
            (`teacher_token_embeddings`) or `"vocab"`
            (`vocabulary_distillation_embeddings`).
        teacher: a `Teacher`; unused for `"random"`.
        embedding_dim: int. Width of the student's token embeddings.
        token_outputs: for `"vocab"`, the teacher's per-token outputs
            (`kd_keras.teacher_pass.vocabulary_outputs`).

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
    if token_outputs is None:
        raise ValueError(
            "`init='vocab'` needs the teacher's per-token outputs: pass `token_outputs=` "
            "(kd_keras.teacher_pass.vocabulary_outputs)."
        )
    return vocabulary_distillation_embeddings(token_outputs, embedding_dim, *_pad_rows(teacher))
