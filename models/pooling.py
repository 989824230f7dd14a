"""Masked pooling: one vector per sequence, padding left out.

The one home of pooling for every model of kd-keras: the teachers' sentence
embeddings (mean, CLS or max over the non-padding tokens, as
sentence-transformers' `Pooling` and `Normalize`), the BiLSTM encoders' mean
and the classifiers' max over the positions a Keras mask keeps.
"""

import keras
from keras import ops

__all__ = [
    "POOLING_MODES",
    "AttentionPooling",
    "MaskedPooling",
    "l2_normalize",
    "masked_max",
    "masked_mean",
]

POOLING_MODES = ("mean", "cls", "max")


def masked_mean(sequence, mask=None):
    """Mean over the positions where `mask` is set.

    Formula:

    ```
    out[b] = sum_s mask[b, s] * x[b, s] / max(sum_s mask[b, s], 1e-9)
    ```

    A row with no position pools to zeros.

    Args:
        sequence: float `[B, S, H]`.
        mask: bool or 0/1 `[B, S]`, or `None` for a plain mean.

    Returns:
        float `[B, H]`.
    """
    if mask is None:
        return ops.mean(sequence, axis=1)
    weights = ops.cast(ops.expand_dims(mask, -1), sequence.dtype)
    total = ops.sum(sequence * weights, axis=1)
    return total / ops.maximum(ops.sum(weights, axis=1), ops.cast(1e-9, sequence.dtype))


def masked_max(sequence, mask=None):
    """Maximum over the positions where `mask` is set (0 for a row with none).

    As sentence-transformers' max pooling: masked positions count as -1e9.

    Args:
        sequence: float `[B, S, H]`.
        mask: bool or 0/1 `[B, S]`, or `None` for a plain maximum.

    Returns:
        float `[B, H]`.
    """
    if mask is None:
        return ops.max(sequence, axis=1)
    keep = ops.expand_dims(ops.cast(mask, "bool"), -1)
    pooled = ops.max(ops.where(keep, sequence, ops.cast(-1e9, sequence.dtype)), axis=1)
    return ops.where(ops.any(keep, axis=1), pooled, ops.zeros_like(pooled))


def l2_normalize(x, epsilon=1e-12):
    """`x / max(||x||_2, epsilon)` along the last axis (sentence-transformers' `Normalize`)."""
    norm = ops.sqrt(ops.sum(ops.square(x), axis=-1, keepdims=True))
    return x / ops.maximum(norm, epsilon)


@keras.saving.register_keras_serializable(package="kd_keras")
class MaskedPooling(keras.layers.Layer):
    """Pools `[B, S, H]` into `[B, H]` over the unmasked positions.

    Called as `layer(sequence, padding_mask)` with an explicit int or bool
    mask `[B, S]` (1 for real tokens), or as `layer(sequence)` to use the
    Keras mask that an `Embedding(mask_zero=True)` attached upstream.

    Args:
        mode: `"mean"` (`masked_mean`), `"max"` (`masked_max`) or `"cls"` (the
            first position).
        normalize: bool. L2-normalize the pooled vectors (`l2_normalize`).
    """

    def __init__(self, mode="mean", normalize=False, **kwargs):
        super().__init__(**kwargs)
        if mode not in POOLING_MODES:
            raise ValueError(f"`mode` must be one of {POOLING_MODES}; received {mode!r}.")
        self.mode = mode
        self.normalize = bool(normalize)
        self.supports_masking = True

    def call(self, sequence, padding_mask=None, mask=None):
        mask = padding_mask if padding_mask is not None else mask
        if self.mode == "cls":
            pooled = sequence[:, 0, :]
        elif self.mode == "mean":
            pooled = masked_mean(sequence, mask)
        else:
            pooled = masked_max(sequence, mask)
        return l2_normalize(pooled) if self.normalize else pooled

    def compute_mask(self, inputs, mask=None):
        return None

    def compute_output_shape(self, sequence_shape, padding_mask_shape=None):
        return (sequence_shape[0], sequence_shape[-1])

    def get_config(self):
        return {**super().get_config(), "mode": self.mode, "normalize": self.normalize}


@keras.saving.register_keras_serializable(package="kd_keras")
class AttentionPooling(keras.layers.Layer):
    """Pools `[B, S, H]` into `[B, H]` by learned weights over the unmasked positions.

    Self-attentive pooling (Lin et al. 2017, one head): each position gets a
    score from a small feedforward net, the scores are softmaxed over the
    real tokens, and the output is the weighted sum. Formula:

    ```
    e[b, s] = v . tanh(W x[b, s] + c)          (units > 0; else v . x[b, s])
    a[b, s] = softmax_s(e[b, s]) over the positions where mask[b, s] is set
    out[b]  = sum_s a[b, s] x[b, s]
    ```

    Padding never changes an output (masked positions get weight exactly 0),
    and a row with no position pools to zeros. Takes the Keras mask of an
    `Embedding(mask_zero=True)` upstream, or an explicit `padding_mask`.

    Args:
        units: int >= 0. Width of the scoring net's hidden layer (0: a linear
            score).
    """

    def __init__(self, units=64, **kwargs):
        super().__init__(**kwargs)
        if int(units) < 0:
            raise ValueError(f"`units` must be >= 0; received {units!r}.")
        self.units = int(units)
        self.supports_masking = True
        # === Layers ===
        self.hidden = (
            keras.layers.Dense(self.units, activation="tanh", name="hidden") if self.units else None
        )
        self.score = keras.layers.Dense(1, use_bias=False, name="score")

    def build(self, sequence_shape, padding_mask_shape=None):
        width = sequence_shape[-1]
        if self.hidden is not None:
            self.hidden.build(sequence_shape)
            width = self.units
        self.score.build((*sequence_shape[:-1], width))

    def call(self, sequence, padding_mask=None, mask=None):
        mask = padding_mask if padding_mask is not None else mask
        hidden = self.hidden(sequence) if self.hidden is not None else sequence
        scores = ops.squeeze(self.score(hidden), axis=-1)
        if mask is None:
            return ops.sum(ops.expand_dims(ops.softmax(scores, axis=-1), -1) * sequence, axis=1)
        keep = ops.cast(mask, "bool")
        scores = ops.where(keep, scores, ops.cast(-1e9, scores.dtype))
        weights = ops.softmax(scores, axis=-1) * ops.cast(keep, scores.dtype)
        return ops.sum(ops.expand_dims(weights, -1) * sequence, axis=1)

    def compute_mask(self, inputs, mask=None):
        return None

    def compute_output_shape(self, sequence_shape, padding_mask_shape=None):
        return (sequence_shape[0], sequence_shape[-1])

    def get_config(self):
        return {**super().get_config(), "units": self.units}
