"""Your own student for `kd-keras distill`: a bidirectional GRU.

`build` is a student function: `kd-keras distill` calls it with the keyword
arguments it accepts of those it offers (`vocabulary_size` and `output_dim`
always; here also `token_embeddings` and `embedding_dim`), and trains,
exports and reports the model it returns like a built-in student. From the
checkout's root:

    PYTHONPATH=examples kd-keras distill --student gru_student:build

(or from inside `examples/`, whose modules are found from the current
directory: `kd-keras distill --student gru_student:build`). `token_embeddings`
is the `--embedding-init` matrix (`vocab`, the default: the teacher's output
on each token alone, cached; `random`: `None`). The recipe L2-normalizes the
output. Run this file to build one on random ids:

    .venv/bin/python examples/gru_student.py
"""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402


# --8<-- [start:student]
def build(vocabulary_size, output_dim, token_embeddings=None, embedding_dim=128, units=128):
    """A BiGRU over token embeddings, mean-pooled over the real tokens, projected.

    Args:
        vocabulary_size: int. Token ids are in `[0, vocabulary_size)`, 0 padding.
        output_dim: int. The teacher's embedding width.
        token_embeddings: float32 `[vocabulary_size, width]` initial token
            embeddings, or `None` (random, `embedding_dim` wide).
        embedding_dim: int. Token embedding width without `token_embeddings`.
        units: int. GRU units per direction.

    Returns:
        `keras.Model` from int32 token ids `[batch, length]` to `[batch, output_dim]`.
    """
    if token_embeddings is not None:
        embedding_dim = token_embeddings.shape[1]
    embedding = keras.layers.Embedding(
        vocabulary_size, embedding_dim, mask_zero=True, name="token_embedding"
    )
    token_ids = keras.Input(shape=(None,), dtype="int32", name="token_ids")
    x = embedding(token_ids)
    x = keras.layers.Bidirectional(keras.layers.GRU(units, return_sequences=True), name="bigru")(x)
    x = keras.layers.GlobalAveragePooling1D(name="pooling")(x)  # skips the masked padding
    outputs = keras.layers.Dense(output_dim, name="projection")(x)
    model = keras.Model(token_ids, outputs, name="gru_student")
    if token_embeddings is not None:
        embedding.set_weights([np.asarray(token_embeddings, "float32")])
    return model


# --8<-- [end:student]


if __name__ == "__main__":
    student = build(vocabulary_size=100, output_dim=8, embedding_dim=16, units=8)
    ids = np.array([[2, 7, 9, 0], [5, 0, 0, 0]], dtype="int32")
    print(student.name, student.count_params(), "parameters ->", student(ids).shape)
