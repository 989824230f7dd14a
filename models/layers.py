"""Small layers shared by the student and teacher builders."""

import keras
from keras import ops

from models.heads import CosineSimilarity


@keras.saving.register_keras_serializable(package="kd_keras")
class MaskedMeanPooling(keras.layers.Layer):
    """Mean of a sequence over its unmasked positions.

    Formula:

    ```
    out[b] = sum_s mask[b, s] * x[b, s] / max(sum_s mask[b, s], 1)
    ```

    Called as `layer(sequence, mask)` with `sequence` `[B, S, H]` and `mask`
    `[B, S]` (bool or 0/1), or as `layer(sequence)` to use the Keras mask that
    an `Embedding(mask_zero=True)` attached. A row with no unmasked position
    pools to zeros.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.supports_masking = True

    def call(self, sequence, mask=None):
        if mask is None:
            return ops.mean(sequence, axis=1)
        weights = ops.cast(ops.expand_dims(mask, -1), sequence.dtype)
        total = ops.sum(sequence * weights, axis=1)
        count = ops.maximum(ops.sum(weights, axis=1), ops.cast(1, sequence.dtype))
        return total / count

    def compute_mask(self, inputs, mask=None):
        return None

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[2])


def siamese_inputs(encoder):
    """Two copies of `encoder`'s inputs: `{"sentence_a": ..., "sentence_b": ...}`.

    A single input is named after its key (as Keras wants for dict inputs);
    the entries of a nested input get the suffix `_a` or `_b`.
    """
    structure = encoder.input

    def like(spec, key):
        name = f"{spec.name}_{key[-1]}" if keras.tree.is_nested(structure) else key
        return keras.Input(shape=spec.shape[1:], dtype=spec.dtype, name=name)

    return {
        key: keras.tree.map_structure(lambda s, key=key: like(s, key), structure)
        for key in ("sentence_a", "sentence_b")
    }


def siamese(encoder, name="siamese"):
    """A pair model: the same `encoder` tower on two inputs, cosine score.

    Args:
        encoder: functional `keras.Model` from one sentence's inputs to a
            sentence embedding `[B, D]`.
        name: str.

    Returns:
        `keras.Model` with inputs `{"sentence_a": ..., "sentence_b": ...}`
        (each shaped like the encoder's inputs) and output `score` `[B, 1]`,
        the cosine similarity of the two embeddings.
    """

    inputs = siamese_inputs(encoder)
    cosine = CosineSimilarity(name="cosine")(
        encoder(inputs["sentence_a"]), encoder(inputs["sentence_b"])
    )
    # [B, 1], the shape Keras' regression losses and metrics expect.
    score = keras.layers.Reshape((1,), name="score")(cosine)
    return keras.Model(inputs, score, name=name)
