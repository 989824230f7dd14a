"""Small layers shared by the student and teacher builders."""

import keras
from keras import ops


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


@keras.saving.register_keras_serializable(package="kd_keras")
class CosineSimilarity(keras.layers.Layer):
    """Cosine similarity of two batches of vectors, shape `[B]`.

    Formula:

    ```
    cos(a, b) = sum(a * b) / max(|a| * |b|, epsilon)
    ```
    """

    def __init__(self, epsilon=1e-12, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = epsilon

    def call(self, a, b):
        a = ops.cast(a, "float32")
        b = ops.cast(b, "float32")
        dot = ops.sum(a * b, axis=-1)
        norms = ops.sqrt(ops.sum(a * a, axis=-1) * ops.sum(b * b, axis=-1))
        return dot / ops.maximum(norms, self.epsilon)

    def compute_output_shape(self, a_shape, b_shape):
        return a_shape[:-1]

    def get_config(self):
        return {**super().get_config(), "epsilon": self.epsilon}


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

    structure = encoder.input

    def like(spec, key):
        # A single input is named after its key, as Keras wants for dict inputs.
        name = f"{spec.name}_{key[-1]}" if keras.tree.is_nested(structure) else key
        return keras.Input(shape=spec.shape[1:], dtype=spec.dtype, name=name)

    inputs = {
        key: keras.tree.map_structure(lambda s, key=key: like(s, key), structure)
        for key in ("sentence_a", "sentence_b")
    }
    cosine = CosineSimilarity(name="cosine")(
        encoder(inputs["sentence_a"]), encoder(inputs["sentence_b"])
    )
    # [B, 1], the shape Keras' regression losses and metrics expect.
    score = keras.layers.Reshape((1,), name="score")(cosine)
    return keras.Model(inputs, score, name=name)
