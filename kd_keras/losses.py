"""Distillation losses: teacher first (it plays `y_true`), student second.

Every divergence is computed in float32 and in log space from the logits
(`log_softmax`, `logsumexp`), so that logits of +-1e4, float16 / bfloat16
inputs and `-inf` entries (a masked vocabulary) give finite values and finite
gradients.

Notation, used in every docstring below:

```
p = softmax(teacher_logits / T)        # the teacher's distribution
q = softmax(student_logits / T)        # the student's distribution
forward KL  = KL(p || q) = sum_v p * (log p - log q)
reverse KL  = KL(q || p) = sum_v q * (log q - log p)
```

The functions (`forward_kl`, ...) return one value per position (shape
`logits.shape[:-1]`) with no `T^2` factor. The `keras.losses.Loss` classes
(`ForwardKL`, ...) multiply by `T^2` when `scale_by_temperature_squared=True`
(the default for the temperature losses, as in Hinton et al. 2015, so that the
soft term's gradients keep their size when `T` changes), apply masks and
sample weights, and reduce.

Terms with `p = 0` (forward) or `q = 0` (reverse) contribute 0, as in the
limit `x log x -> 0`; a position whose logits are all `-inf` is treated as
padding (its value is 0) and should be masked out.
"""

import math

import keras
import tensorflow as tf

__all__ = [
    "soft_target_mse",
    "logit_mse",
    "forward_kl",
    "reverse_kl",
    "skewed_forward_kl",
    "skewed_reverse_kl",
    "mask_from_labels",
    "DistillationLoss",
    "SoftTargetMSE",
    "LogitMSE",
    "ForwardKL",
    "ReverseKL",
    "SkewedForwardKL",
    "SkewedReverseKL",
    "get",
]

_REDUCTIONS = ("mean", "sum", "none")


# === Functions: one value per position ===


def _as_float32(x):
    x = tf.convert_to_tensor(x)
    if not x.dtype.is_floating:
        raise TypeError(f"Logits must be floating point; received dtype {x.dtype.name}.")
    return tf.cast(x, tf.float32)


def _check_temperature(temperature):
    if not isinstance(temperature, (int, float)) or not temperature > 0:
        raise ValueError(f"`temperature` must be a positive number; received {temperature!r}.")
    return float(temperature)


def _check_skew(skew):
    if not isinstance(skew, (int, float)) or not 0.0 <= skew <= 1.0:
        raise ValueError(f"`skew` must be a number in [0, 1]; received {skew!r}.")
    return float(skew)


def _log_softmax(logits, temperature):
    """float32 log-softmax of `logits / T`; all `-inf` rows become uniform."""
    x = _as_float32(logits) / temperature
    # A row whose entries are all -inf (padding written as -inf) has no
    # distribution; log_softmax would give NaN there. Replace it with zeros so
    # that values and gradients stay finite; such positions must be masked.
    row_max = tf.reduce_max(x, axis=-1, keepdims=True)
    x = tf.where(tf.equal(row_max, -math.inf), tf.zeros_like(x), x)
    return tf.nn.log_softmax(x, axis=-1)


def _log_probs(teacher_logits, student_logits, temperature):
    """`(log p, log q)`: both models' log-softmax at temperature `T`."""
    temperature = _check_temperature(temperature)
    return (
        _log_softmax(teacher_logits, temperature),
        _log_softmax(student_logits, temperature),
    )


def _kl_from_log_probs(log_a, log_b):
    """sum_v a * (log a - log b), with 0 where a == 0 (no 0 * inf)."""
    a = tf.exp(log_a)
    support = a > 0.0
    zero = tf.zeros_like(log_a)
    # Double `where`: the unselected branch must be finite too, or its
    # gradient (0 * inf) is NaN.
    log_a = tf.where(support, log_a, zero)
    log_b = tf.where(support, log_b, zero)
    return tf.reduce_sum(tf.where(support, a * (log_a - log_b), zero), axis=-1)


def _log_mix(log_a, log_b, weight_a):
    """log(weight_a * a + (1 - weight_a) * b), computed from log a and log b."""
    if weight_a == 1.0:
        return log_a
    if weight_a == 0.0:
        return log_b
    x = log_a + math.log(weight_a)
    y = log_b + math.log(1.0 - weight_a)
    hi = tf.maximum(x, y)
    finite = tf.math.is_finite(hi)
    # Both -inf: the mixture is 0 and log is -inf; keep the branch NaN-free.
    hi_safe = tf.where(finite, hi, tf.zeros_like(hi))
    lo = tf.where(finite, tf.minimum(x, y) - hi_safe, tf.zeros_like(hi))
    out = hi_safe + tf.math.log1p(tf.exp(lo))
    return tf.where(finite, out, hi)


def soft_target_mse(teacher_logits, student_logits, temperature=1.0):
    """Mean squared error between the softened distributions.

    Formula:

    ```
    mean_v (softmax(t / T) - softmax(s / T)) ** 2
    ```

    The soft-label loss of the BERT-to-DSSM recipe. No `T^2` factor.

    Args:
        teacher_logits: float tensor `[..., V]`.
        student_logits: float tensor `[..., V]`.
        temperature: float > 0.

    Returns:
        float32 tensor of shape `logits.shape[:-1]`.
    """
    log_p, log_q = _log_probs(teacher_logits, student_logits, temperature)
    p, q = tf.exp(log_p), tf.exp(log_q)
    return tf.reduce_mean(tf.square(p - q), axis=-1)


def logit_mse(teacher_logits, student_logits):
    """Mean squared error between raw logits (Tang et al. 2019).

    Formula:

    ```
    mean_v (t - s) ** 2
    ```

    Entries where both logits are equal infinities (a vocabulary entry masked
    in both models) count as 0. Also the loss for matching embeddings or
    similarity scores, with `V` the embedding width.

    Args:
        teacher_logits: float tensor `[..., V]`.
        student_logits: float tensor `[..., V]`.

    Returns:
        float32 tensor of shape `logits.shape[:-1]`.
    """
    t = _as_float32(teacher_logits)
    s = _as_float32(student_logits)
    diff = tf.where(tf.equal(t, s), tf.zeros_like(t), t - s)
    return tf.reduce_mean(tf.square(diff), axis=-1)


def forward_kl(teacher_logits, student_logits, temperature=1.0):
    """Forward KL divergence KL(p || q), teacher to student.

    Formula:

    ```
    sum_v p * (log p - log q),  p = softmax(t / T), q = softmax(s / T)
    ```

    Mode-covering; the classic Hinton et al. distillation loss. No `T^2`.

    Args:
        teacher_logits: float tensor `[..., V]`.
        student_logits: float tensor `[..., V]`.
        temperature: float > 0.

    Returns:
        float32 tensor of shape `logits.shape[:-1]`.
    """
    log_p, log_q = _log_probs(teacher_logits, student_logits, temperature)
    return _kl_from_log_probs(log_p, log_q)


def reverse_kl(teacher_logits, student_logits, temperature=1.0):
    """Reverse KL divergence KL(q || p), student to teacher.

    Formula:

    ```
    sum_v q * (log q - log p),  p = softmax(t / T), q = softmax(s / T)
    ```

    Mode-seeking; the MiniLLM objective for generative LMs. No `T^2`.

    Args:
        teacher_logits: float tensor `[..., V]`.
        student_logits: float tensor `[..., V]`.
        temperature: float > 0.

    Returns:
        float32 tensor of shape `logits.shape[:-1]`.
    """
    log_p, log_q = _log_probs(teacher_logits, student_logits, temperature)
    return _kl_from_log_probs(log_q, log_p)


def skewed_forward_kl(teacher_logits, student_logits, temperature=1.0, skew=0.1):
    """Skewed forward KL of DistiLLM (Ko et al. 2024).

    Formula:

    ```
    KL(p || skew * p + (1 - skew) * q)
    ```

    `skew=0` is the forward KL; the mixture keeps the divergence bounded
    where the student puts no mass. No `T^2`.

    Args:
        teacher_logits: float tensor `[..., V]`.
        student_logits: float tensor `[..., V]`.
        temperature: float > 0.
        skew: float in [0, 1].

    Returns:
        float32 tensor of shape `logits.shape[:-1]`.
    """
    skew = _check_skew(skew)
    log_p, log_q = _log_probs(teacher_logits, student_logits, temperature)
    return _kl_from_log_probs(log_p, _log_mix(log_p, log_q, skew))


def skewed_reverse_kl(teacher_logits, student_logits, temperature=1.0, skew=0.1):
    """Skewed reverse KL of DistiLLM (Ko et al. 2024).

    Formula:

    ```
    KL(q || (1 - skew) * p + skew * q)
    ```

    `skew=0` is the reverse KL. No `T^2`.

    Args:
        teacher_logits: float tensor `[..., V]`.
        student_logits: float tensor `[..., V]`.
        temperature: float > 0.
        skew: float in [0, 1].

    Returns:
        float32 tensor of shape `logits.shape[:-1]`.
    """
    skew = _check_skew(skew)
    log_p, log_q = _log_probs(teacher_logits, student_logits, temperature)
    return _kl_from_log_probs(log_q, _log_mix(log_q, log_p, skew))


def mask_from_labels(labels, ignore_index=-100):
    """float32 mask that is 0 where `labels == ignore_index`, else 1.

    The Hugging Face convention for causal LM data: prompt tokens and padding
    carry the label -100 and are left out of every loss.
    """
    labels = tf.convert_to_tensor(labels)
    return tf.cast(tf.not_equal(labels, tf.cast(ignore_index, labels.dtype)), tf.float32)


# === Loss classes ===


def _broadcast_weights(weights, shape, dynamic_shape, what):
    """Casts `weights` to float32 and broadcasts it to the positions' shape.

    A weight of lower rank than the positions is aligned on the leading axes
    (a per-sample weight `[B]` applies to every position of `[B, S]`); a
    trailing axis of size 1 is dropped.
    """
    weights = tf.cast(tf.convert_to_tensor(weights), tf.float32)
    rank = shape.rank
    if weights.shape.rank is not None and rank is not None:
        if weights.shape.rank == rank + 1 and weights.shape[-1] == 1:
            weights = tf.squeeze(weights, axis=-1)
        if weights.shape.rank > rank:
            raise ValueError(
                f"`{what}` of shape {weights.shape} has more axes than the loss "
                f"positions {shape} (the logits' shape without the class axis)."
            )
        for _ in range(rank - weights.shape.rank):
            weights = tf.expand_dims(weights, -1)
        for w, v in zip(weights.shape, shape, strict=True):
            if w not in (1, None) and v is not None and w != v:
                raise ValueError(
                    f"`{what}` of shape {weights.shape} does not match the loss "
                    f"positions {shape} (the logits' shape without the class axis)."
                )
    return tf.broadcast_to(weights, dynamic_shape)


class DistillationLoss(keras.losses.Loss):
    """Base class: a per-position divergence, masked, weighted and reduced.

    Called as `loss(teacher_logits, student_logits, sample_weight=None,
    mask=None, labels=None)`. The weight of each position is the product of
    `sample_weight`, `mask` (1 keeps, 0 drops), `labels != ignore_index` and
    the student's Keras mask, broadcast over the leading axes. With
    `reduction="mean"` (default) the result is `sum(w * loss) / sum(w)`: a
    weighted mean over positions that is 0, never NaN, when every weight is 0.
    With `reduction="sum"` it is `sum(w * loss)`, the plain sum the published
    LM recipes use; `"none"` returns the weighted per-position values.

    Args:
        temperature: float > 0, divides both models' logits.
        scale_by_temperature_squared: bool. Multiply the result by `T^2`.
        truncate_teacher_vocab: bool. When the teacher's last axis is larger
            than the student's (a Qwen 7B teacher for a 0.5B student), keep
            only its first `V_student` entries. When False, such a mismatch is
            an error.
        ignore_index: int. Label value that marks a position to leave out.
        reduction: `"mean"`, `"sum"` or `"none"`.
        name: str.
    """

    def __init__(
        self,
        temperature=1.0,
        scale_by_temperature_squared=True,
        truncate_teacher_vocab=False,
        ignore_index=-100,
        reduction="mean",
        name=None,
    ):
        if reduction not in _REDUCTIONS:
            raise ValueError(f"`reduction` must be one of {_REDUCTIONS}; received {reduction!r}.")
        super().__init__(name=name, reduction="none", dtype="float32")
        self.temperature = _check_temperature(temperature)
        self.scale_by_temperature_squared = bool(scale_by_temperature_squared)
        self.truncate_teacher_vocab = bool(truncate_teacher_vocab)
        self.ignore_index = int(ignore_index)
        self.distillation_reduction = reduction

    def per_position(self, teacher_logits, student_logits):
        """The divergence at each position, shape `logits.shape[:-1]`."""
        raise NotImplementedError

    def _align(self, teacher_logits, student_logits):
        teacher_logits = tf.convert_to_tensor(teacher_logits)
        student_logits = tf.convert_to_tensor(student_logits)
        t_shape, s_shape = teacher_logits.shape, student_logits.shape
        if t_shape.rank is not None and s_shape.rank is not None and t_shape.rank != s_shape.rank:
            raise ValueError(
                f"Teacher logits of shape {t_shape} and student logits of shape "
                f"{s_shape} have different ranks."
            )
        t_vocab, s_vocab = t_shape[-1], s_shape[-1]
        if t_vocab is not None and s_vocab is not None and t_vocab != s_vocab:
            if t_vocab > s_vocab and self.truncate_teacher_vocab:
                teacher_logits = teacher_logits[..., :s_vocab]
            else:
                hint = (
                    " Pass `truncate_teacher_vocab=True` to keep the teacher's "
                    "first entries (tokenizers that share a prefix vocabulary)."
                    if t_vocab > s_vocab
                    else ""
                )
                raise ValueError(
                    f"Teacher logits have {t_vocab} classes on the last axis, the "
                    f"student's {s_vocab} (shapes {t_shape} and {s_shape}).{hint}"
                )
        return teacher_logits, student_logits

    def __call__(self, y_true, y_pred, sample_weight=None, mask=None, labels=None):
        keras_mask = getattr(y_pred, "_keras_mask", None)
        with tf.name_scope(self.name):
            teacher_logits, student_logits = self._align(y_true, y_pred)
            positions = student_logits.shape[:-1]
            positions_dynamic = tf.shape(student_logits)[:-1]
            weights = None
            for what, w in (
                ("sample_weight", sample_weight),
                ("mask", mask),
                ("keras mask", keras_mask),
                (
                    "labels",
                    None if labels is None else mask_from_labels(labels, self.ignore_index),
                ),
            ):
                if w is None:
                    continue
                w = _broadcast_weights(w, positions, positions_dynamic, what)
                weights = w if weights is None else weights * w
            if weights is not None:
                # A position of weight 0 must not count even when its logits
                # are garbage (padding written as -inf or NaN): zero them
                # before the divergence, so that neither its value nor its
                # gradient can be NaN.
                keep = tf.expand_dims(weights != 0.0, -1)
                teacher_logits = tf.where(keep, teacher_logits, tf.zeros_like(teacher_logits))
                student_logits = tf.where(keep, student_logits, tf.zeros_like(student_logits))
            values = self.per_position(teacher_logits, student_logits)
            if self.scale_by_temperature_squared:
                values = values * (self.temperature**2)
            if weights is not None:
                values = values * weights
            if self.distillation_reduction == "none":
                return values
            total = tf.reduce_sum(values)
            if self.distillation_reduction == "sum":
                return total
            count = (
                tf.cast(tf.size(values), tf.float32) if weights is None else tf.reduce_sum(weights)
            )
            return _scale_for_distribution(tf.math.divide_no_nan(total, count))

    def call(self, y_true, y_pred):
        teacher_logits, student_logits = self._align(y_true, y_pred)
        return self.per_position(teacher_logits, student_logits)

    def get_config(self):
        return {
            "name": self.name,
            "temperature": self.temperature,
            "scale_by_temperature_squared": self.scale_by_temperature_squared,
            "truncate_teacher_vocab": self.truncate_teacher_vocab,
            "ignore_index": self.ignore_index,
            "reduction": self.distillation_reduction,
        }


def _scale_for_distribution(value):
    """Divide by the replica count under `tf.distribute`, as Keras' losses do,
    so that the sum of the replicas' gradients is the global batch's."""
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    return value / replicas if replicas > 1 else value


def _unscale_for_distribution(value):
    """Inverse of `_scale_for_distribution`, for metric trackers."""
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    return value * replicas if replicas > 1 else value


@keras.saving.register_keras_serializable(package="kd_keras")
class SoftTargetMSE(DistillationLoss):
    """`soft_target_mse` as a loss: `T^2 * mean_v (p - q)^2`, weighted mean over positions."""

    def per_position(self, teacher_logits, student_logits):
        return soft_target_mse(teacher_logits, student_logits, self.temperature)


@keras.saving.register_keras_serializable(package="kd_keras")
class LogitMSE(DistillationLoss):
    """`logit_mse` as a loss: `mean_v (t - s)^2`, weighted mean over positions.

    No temperature (it would cancel out against the `T^2` factor).
    """

    def __init__(
        self, truncate_teacher_vocab=False, ignore_index=-100, reduction="mean", name=None
    ):
        super().__init__(
            temperature=1.0,
            scale_by_temperature_squared=False,
            truncate_teacher_vocab=truncate_teacher_vocab,
            ignore_index=ignore_index,
            reduction=reduction,
            name=name,
        )

    def per_position(self, teacher_logits, student_logits):
        return logit_mse(teacher_logits, student_logits)

    def get_config(self):
        config = super().get_config()
        del config["temperature"], config["scale_by_temperature_squared"]
        return config


@keras.saving.register_keras_serializable(package="kd_keras")
class ForwardKL(DistillationLoss):
    """`forward_kl` as a loss: `T^2 * KL(p || q)`, weighted mean over positions."""

    def per_position(self, teacher_logits, student_logits):
        return forward_kl(teacher_logits, student_logits, self.temperature)


@keras.saving.register_keras_serializable(package="kd_keras")
class ReverseKL(DistillationLoss):
    """`reverse_kl` as a loss: `T^2 * KL(q || p)`, weighted mean over positions."""

    def per_position(self, teacher_logits, student_logits):
        return reverse_kl(teacher_logits, student_logits, self.temperature)


class _SkewedKL(DistillationLoss):
    def __init__(self, skew=0.1, **kwargs):
        super().__init__(**kwargs)
        self.skew = _check_skew(skew)

    def get_config(self):
        return {**super().get_config(), "skew": self.skew}


@keras.saving.register_keras_serializable(package="kd_keras")
class SkewedForwardKL(_SkewedKL):
    """`skewed_forward_kl` as a loss: `T^2 * KL(p || skew p + (1 - skew) q)`."""

    def per_position(self, teacher_logits, student_logits):
        return skewed_forward_kl(teacher_logits, student_logits, self.temperature, self.skew)


@keras.saving.register_keras_serializable(package="kd_keras")
class SkewedReverseKL(_SkewedKL):
    """`skewed_reverse_kl` as a loss: `T^2 * KL(q || (1 - skew) p + skew q)`."""

    def per_position(self, teacher_logits, student_logits):
        return skewed_reverse_kl(teacher_logits, student_logits, self.temperature, self.skew)


_BY_NAME = {
    "soft_target_mse": SoftTargetMSE,
    "logit_mse": LogitMSE,
    "forward_kl": ForwardKL,
    "reverse_kl": ReverseKL,
    "skewed_forward_kl": SkewedForwardKL,
    "skewed_reverse_kl": SkewedReverseKL,
}


def get(identifier, temperature=None, **kwargs):
    """A distillation loss from a name or an object, with an optional temperature.

    The one owner of the temperature rules: a temperature is a positive number
    and goes only to a loss that has one (`logit_mse` has none: asking for a
    temperature there is an error, never silently dropped). A loss object
    given with a temperature is copied with that temperature.

    Args:
        identifier: a name in `_BY_NAME`, a loss object or a callable.
        temperature: float > 0 or `None` (the loss's own default).
        **kwargs: passed to the constructor of a loss given by name.

    Returns:
        A loss object (or the callable itself).
    """
    if isinstance(identifier, str):
        if identifier not in _BY_NAME:
            raise ValueError(
                f"Unknown distillation loss {identifier!r}; expected one of {sorted(_BY_NAME)} "
                "or a loss object."
            )
        identifier = _BY_NAME[identifier](**kwargs)
    elif kwargs:
        raise ValueError("Keyword arguments apply only to a loss given by name.")
    if temperature is not None:
        _check_temperature(temperature)
        if not hasattr(identifier, "temperature") or isinstance(identifier, LogitMSE):
            raise ValueError(
                f"{type(identifier).__name__} has no temperature; leave the temperature unset."
            )
        return type(identifier).from_config({**identifier.get_config(), "temperature": temperature})
    if isinstance(identifier, keras.losses.Loss) or callable(identifier):
        return identifier
    raise ValueError(f"Cannot interpret {identifier!r} as a distillation loss.")
