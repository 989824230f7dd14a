"""Static sentence encoder: a weighted mean of token embeddings and a projection.

Model2Vec's and tokenlearn's student, trained inside `kd_keras.Distiller`:
no attention, no recurrence, so it costs a table lookup and one matmul per
sentence. Its token table usually starts from vocabulary distillation
(`student_init.vocabulary_distillation_embeddings`: each token alone through
the teacher, PCA-reduced) with every row scaled by a SIF weight
(`sif_weights`: `a / (a + p(token))`, `p` the token's frequency in the
transfer corpus), so that frequent tokens, `[CLS]` and `[SEP]` among them,
count little in the mean. Folding the weights into the rows keeps the model
a plain `Embedding -> masked mean -> Dense`, and training then adjusts
vectors and weights together. The weighted table goes into the layer's
weights (`bilstm.token_embedding`), never into its config: a saved `.keras`
file holds it once.
"""

import itertools

import keras
import numpy as np

from .bilstm import token_embedding
from .pooling import MaskedPooling

__all__ = ["build_static_encoder", "sif_weights", "token_counts"]


def token_counts(preprocessor, sentences, chunk=4096):
    """How often each vocabulary id occurs in `sentences`, `[CLS]` and `[SEP]` included.

    Args:
        preprocessor: a `BertPreprocessor` (its `tokenize` and vocabulary).
        sentences: iterable of str, read once, `chunk` at a time.
        chunk: int. Sentences tokenized at once.

    Returns:
        int64 `np.ndarray` `[vocabulary_size]`.
    """
    size = len(preprocessor.vocabulary)
    counts = np.zeros(size, np.int64)
    iterator = iter(sentences)
    while batch := list(itertools.islice(iterator, chunk)):
        ids = preprocessor.tokenize(batch)
        flat = np.asarray(ids.flat_values).reshape(-1)
        counts += np.bincount(flat, minlength=size)[:size]
        counts[preprocessor.cls_token_id] += len(batch)
        counts[preprocessor.sep_token_id] += len(batch)
    return counts


def sif_weights(counts, a=1e-3):
    """Smooth inverse frequency weights `a / (a + p)`, `p = count / total` (Arora et al. 2017).

    A token never seen gets weight 1; the padding id 0 gets 0.

    Args:
        counts: int array `[vocabulary_size]` (`token_counts`).
        a: float. Smoothing: the smaller, the more frequent tokens are damped.

    Returns:
        float32 `np.ndarray` `[vocabulary_size]`.
    """
    counts = np.asarray(counts, np.float64)
    p = counts / max(counts.sum(), 1.0)
    weights = a / (a + p)
    weights[0] = 0.0
    return weights.astype(np.float32)


def build_static_encoder(
    vocabulary_size,
    embedding_dim=256,
    output_dim=None,
    embeddings_initializer="uniform",
    token_weights=None,
    normalize=True,
    name="static_encoder",
):
    """Token ids to a sentence embedding: `normalize(Dense(mean_t(w_t * E[t])))`.

    Formula, for the non-padding tokens `t` of a sentence:

    ```
    embedding = W @ (sum_t w_t E[t] / n) + b,   then L2-normalized
    ```

    with `w_t` folded into the table's rows at initialization.

    Args:
        vocabulary_size: int. Token id 0 is padding and is masked.
        embedding_dim: int. Width of the token table.
        output_dim: int or `None`. Width of the projection (the teacher's);
            `None` for no projection.
        embeddings_initializer: initializer or a `[vocabulary_size,
            embedding_dim]` array (vocabulary distillation).
        token_weights: float array `[vocabulary_size]` or `None`: each row of
            an array initializer is scaled by its weight (`sif_weights`).
        normalize: bool. L2-normalize the output.
        name: str.

    Returns:
        A functional `keras.Model` from `token_ids` `[B, S]` int32 to
        `[B, output_dim or embedding_dim]`.
    """
    if token_weights is not None:
        if not hasattr(embeddings_initializer, "shape"):
            raise ValueError("`token_weights` scale an array `embeddings_initializer`.")
        weights = np.asarray(token_weights, np.float32).reshape(-1, 1)
        if weights.shape[0] != vocabulary_size:
            raise ValueError(
                f"`token_weights` has {weights.shape[0]} entries; expected {vocabulary_size}."
            )
        embeddings_initializer = np.asarray(embeddings_initializer, np.float32) * weights
    # === Layers ===
    embedding = token_embedding(vocabulary_size, embedding_dim, embeddings_initializer)
    # === Functional Model ===
    token_ids = keras.Input(shape=(None,), dtype="int32", name="token_ids")
    x = MaskedPooling("mean", name="pooling")(embedding(token_ids))
    if output_dim is not None:
        x = keras.layers.Dense(output_dim, name="projection")(x)
    if normalize:
        x = keras.layers.UnitNormalization(name="normalize")(x)
    return keras.Model(token_ids, x, name=name)
