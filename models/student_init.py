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
  Only a starting point: the student is trained afterwards. `token_forward`
  is that pass's forward function (fused for KerasHub BERT backbones).

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

import keras
import keras_hub
import numpy as np
import tensorflow as tf

from .bert_encoder import BertEncoder
from .heads import pool_encoder_outputs
from .teachers import Teacher

__all__ = [
    "INITS",
    "pca_project",
    "student_embeddings",
    "teacher_token_embeddings",
    "token_forward",
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


# === The teacher on one token at a time ===


def token_forward(teacher, cls_token_id, sep_token_id, fused=True):
    """The teacher on `[CLS] token [SEP]`, as a function of the token ids.

    The input of vocabulary distillation: each id `i` becomes the BERT
    input `[cls_token_id, i, sep_token_id]` (segment ids 0, padding mask 1)
    and the result is the teacher's output on it. For a `Teacher` (mean,
    CLS, max or pooler pooling) around a float32 KerasHub BERT backbone
    (`BertEncoder`, `keras_hub.models.BertBackbone`), `fused=True` runs the
    backbone's own layers and weights on the `3 * batch` token rows as plain
    2D matrix products: one query-key-value product per block, bias and
    activation fused into the products by oneDNN, and the attention over the
    three positions written out. That is the same arithmetic (within about
    1e-6) in about 0.8x the time of the Keras graph, whose einsum
    projections run as batched products. Any other model is called as it is.

    Args:
        teacher: a `Teacher`, or any model from the int32 BERT input dict to
            its outputs.
        cls_token_id: int. Id of `[CLS]`.
        sep_token_id: int. Id of `[SEP]`.
        fused: bool. Use the fused path where it applies; `False` always
            calls the teacher's own graph.

    Returns:
        A traced `tf.function` from int32 ids `[batch]` to the teacher's
        outputs for those inputs (`[batch, dim]` for a pooled teacher).
    """
    encoder = _fusable_encoder(teacher) if fused else None

    def forward(ids):
        batch = tf.shape(ids)[0]
        token_ids = tf.stack(
            [tf.fill([batch], int(cls_token_id)), ids, tf.fill([batch], int(sep_token_id))],
            axis=1,
        )
        if encoder is not None:
            return _fused_bert_outputs(teacher, encoder, token_ids)
        inputs = {
            "token_ids": token_ids,
            "segment_ids": tf.zeros_like(token_ids),
            "padding_mask": tf.ones_like(token_ids),
        }
        return teacher(inputs, training=False)

    return tf.function(forward, input_signature=[tf.TensorSpec([None], tf.int32)])


def _fusable_encoder(teacher):
    """The backbone of a pooled `Teacher` over a float32 KerasHub BERT, else `None`.

    Only the exact classes whose computation `_fused_bert_outputs` repeats
    qualify (a subclass may change its graph).
    """
    if type(teacher) is not Teacher or teacher.pooling is None:
        return None
    encoder = teacher.encoder
    if type(encoder) not in (keras_hub.models.BertBackbone, BertEncoder):
        return None
    if encoder.dtype_policy.name != "float32":
        return None
    for block in encoder.transformer_layers:
        if type(block) is not keras_hub.layers.TransformerEncoder:
            return None
        attention = block._self_attention_layer
        if type(attention) is not keras.layers.MultiHeadAttention:
            return None
        if tuple(attention._attention_axes or (1,)) != (1,):
            return None
    return encoder


def _fused_bert_outputs(teacher, encoder, token_ids):
    """The `Teacher`'s pooled outputs on `token_ids` `[batch, 3]` (no padding)."""
    tokens = encoder.token_embedding(token_ids)
    segments = encoder.segment_embedding(tf.zeros_like(token_ids))
    x = encoder.embeddings_layer_norm(tokens + encoder.position_embedding(tokens) + segments)
    length, width = token_ids.shape[1], x.shape[-1]
    x = tf.reshape(x, [-1, width])  # [batch * length, width]: plain matrix products
    for block in encoder.transformer_layers:
        x = _fused_block(block, x, length)
    sequence = tf.reshape(x, [-1, length, width])
    outputs = {"sequence_output": sequence}
    if teacher.pooling == "pooled":
        outputs["pooled_output"] = encoder.pooled_dense(sequence[:, encoder.cls_token_index])
    mask = tf.ones_like(token_ids)
    return pool_encoder_outputs(outputs, mask, teacher.pooling, teacher.normalize)


def _fused_block(block, x, length):
    """`keras_hub.layers.TransformerEncoder.call` on rows `[batch * length, width]`, unmasked."""
    attention = block._self_attention_layer
    residual = x
    if block.normalize_first:
        x = block._self_attention_layer_norm(x)
    projections = (attention.query_dense, attention.key_dense, attention.value_dense)
    kernel = tf.concat([tf.reshape(d.kernel, [d.kernel.shape[0], -1]) for d in projections], 1)
    heads = [tuple(d.kernel.shape[1:]) for d in projections]  # (num_heads, head_dim) each
    bias = [
        tf.zeros([h * d]) if p.bias is None else tf.reshape(p.bias, [-1])
        for p, (h, d) in zip(projections, heads, strict=True)
    ]
    qkv = tf.matmul(x, kernel) + tf.concat(bias, 0)
    query, key, value = (
        tf.reshape(part, [-1, length, *shape])
        for part, shape in zip(tf.split(qkv, [h * d for h, d in heads], axis=1), heads, strict=True)
    )
    query = query * tf.cast(attention._inverse_sqrt_key_dim, query.dtype)
    # Scores [batch, length, heads, length]: the key positions written out.
    scores = tf.stack(
        [tf.reduce_sum(query * key[:, j : j + 1], axis=-1) for j in range(length)], axis=-1
    )
    probabilities = tf.nn.softmax(scores, axis=-1)
    context = tf.add_n([probabilities[..., j : j + 1] * value[:, j : j + 1] for j in range(length)])
    output = attention.output_dense
    context = tf.reshape(context, [-1, heads[2][0] * heads[2][1]])
    x = tf.matmul(context, tf.reshape(output.kernel, [-1, output.kernel.shape[-1]]))
    if output.bias is not None:
        x = x + output.bias
    x = x + residual
    if not block.normalize_first:
        x = block._self_attention_layer_norm(x)
    residual = x
    if block.normalize_first:
        x = block._feedforward_layer_norm(x)
    x = block._feedforward_output_dense(block._feedforward_intermediate_dense(x)) + residual
    if not block.normalize_first:
        x = block._feedforward_layer_norm(x)
    return x
