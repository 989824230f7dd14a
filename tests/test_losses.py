"""kd_keras.losses against independent NumPy (float64) implementations."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from kd_keras import losses as L

# === NumPy references (float64) ===


def np_log_softmax(x):
    x = np.asarray(x, np.float64)
    m = np.max(x, axis=-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    z = x - m
    with np.errstate(divide="ignore"):
        return z - np.log(np.sum(np.exp(z), axis=-1, keepdims=True))


def np_kl(log_a, log_b):
    a = np.exp(log_a)
    with np.errstate(invalid="ignore"):
        terms = np.where(a > 0, a * (log_a - log_b), 0.0)
    return terms.sum(-1)


def np_log(x):
    with np.errstate(divide="ignore"):
        return np.log(x)


def np_reference(name, t, s, temperature=1.0, skew=0.1):
    if name == "logit_mse":
        t, s = np.asarray(t, np.float64), np.asarray(s, np.float64)
        with np.errstate(invalid="ignore"):
            d = np.where(t == s, 0.0, t - s)
        return np.mean(d**2, -1)
    lp = np_log_softmax(np.asarray(t, np.float64) / temperature)
    lq = np_log_softmax(np.asarray(s, np.float64) / temperature)
    p, q = np.exp(lp), np.exp(lq)
    if name == "soft_target_mse":
        return np.mean((p - q) ** 2, -1)
    if name == "forward_kl":
        return np_kl(lp, lq)
    if name == "reverse_kl":
        return np_kl(lq, lp)
    if name == "skewed_forward_kl":
        return np_kl(lp, np_log(skew * p + (1 - skew) * q))
    if name == "skewed_reverse_kl":
        return np_kl(lq, np_log((1 - skew) * p + skew * q))
    raise KeyError(name)


def call_fn(name, t, s, temperature=1.0, skew=0.1):
    fn = getattr(L, name)
    if name == "logit_mse":
        return fn(t, s).numpy()
    if name.startswith("skewed"):
        return fn(t, s, temperature=temperature, skew=skew).numpy()
    return fn(t, s, temperature=temperature).numpy()


TEMPERATURE_FNS = [
    "soft_target_mse",
    "forward_kl",
    "reverse_kl",
    "skewed_forward_kl",
    "skewed_reverse_kl",
]
ALL_FNS = TEMPERATURE_FNS + ["logit_mse"]
CLASSES = {
    "soft_target_mse": L.SoftTargetMSE,
    "logit_mse": L.LogitMSE,
    "forward_kl": L.ForwardKL,
    "reverse_kl": L.ReverseKL,
    "skewed_forward_kl": L.SkewedForwardKL,
    "skewed_reverse_kl": L.SkewedReverseKL,
}


def random_logits(shape, scale=3.0, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=shape) * scale).astype("float32"), (
        rng.normal(size=shape) * scale
    ).astype("float32")


# === Functions ===


@pytest.mark.parametrize("name", ALL_FNS)
@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_function_matches_numpy(name, temperature):
    t, s = random_logits((4, 5, 11))
    got = call_fn(name, t, s, temperature)
    want = np_reference(name, t, s, temperature if name != "logit_mse" else 1.0)
    assert got.shape == (4, 5)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", TEMPERATURE_FNS)
def test_identical_distributions_give_zero(name):
    t, _ = random_logits((3, 7))
    np.testing.assert_allclose(call_fn(name, t, t + 5.0), 0.0, atol=1e-6)


@pytest.mark.parametrize("skew", [0.1, 0.5, 0.9])
def test_skewed_kl_matches_numpy_for_several_skews(skew):
    t, s = random_logits((6, 13), seed=3)
    for name in ("skewed_forward_kl", "skewed_reverse_kl"):
        np.testing.assert_allclose(
            call_fn(name, t, s, 2.0, skew), np_reference(name, t, s, 2.0, skew), rtol=1e-5
        )


def test_skew_zero_is_plain_kl():
    t, s = random_logits((6, 13), seed=4)
    np.testing.assert_allclose(L.skewed_forward_kl(t, s, skew=0.0), L.forward_kl(t, s), rtol=1e-6)
    np.testing.assert_allclose(L.skewed_reverse_kl(t, s, skew=0.0), L.reverse_kl(t, s), rtol=1e-6)


@pytest.mark.parametrize("name", ALL_FNS)
def test_minus_inf_vocabulary_entries_equal_removing_them(name):
    # A vocabulary masked with -inf in both models is the same as a smaller
    # vocabulary without those entries (logit_mse: they count as zero diff).
    t, s = random_logits((4, 10), seed=1)
    masked = [2, 7]
    t_inf, s_inf = t.copy(), s.copy()
    t_inf[:, masked] = -np.inf
    s_inf[:, masked] = -np.inf
    got = call_fn(name, t_inf, s_inf, 2.0)
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, np_reference(name, t_inf, s_inf, 2.0), rtol=1e-5, atol=1e-7)
    keep = [i for i in range(10) if i not in masked]
    smaller = call_fn(name, t[:, keep], s[:, keep], 2.0)
    if name in ("soft_target_mse", "logit_mse"):
        smaller = smaller * len(keep) / 10  # mean over the full vocabulary
    np.testing.assert_allclose(got, smaller, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", ALL_FNS)
def test_extreme_logits_are_stable(name):
    t, s = random_logits((3, 9), scale=1.0, seed=2)
    t = np.sign(t) * 1e4
    s[:, 0] = 1e4
    s[:, 1:] = -1e4
    got = call_fn(name, t, s, 1.0)
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, np_reference(name, t, s, 1.0), rtol=1e-5)


@pytest.mark.parametrize("name", ALL_FNS)
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_low_precision_inputs_accumulate_in_float32(name, dtype):
    t, s = random_logits((4, 6, 50), seed=5)
    t_low, s_low = tf.cast(t, dtype), tf.cast(s, dtype)
    got = call_fn(name, t_low, s_low, 2.0)
    assert got.dtype == np.float32
    # The reference sees exactly the rounded inputs, in float64.
    want = np_reference(
        name,
        tf.cast(t_low, "float32").numpy(),
        tf.cast(s_low, "float32").numpy(),
        2.0 if name != "logit_mse" else 1.0,
    )
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", ALL_FNS)
def test_gradients_are_finite_with_inf_and_extreme_logits(name):
    t, s = random_logits((2, 3, 8), seed=6)
    t[..., 3] = -np.inf
    s[..., 3] = -np.inf
    t[0, 0] = np.where(np.isinf(t[0, 0]), -np.inf, 1e4)
    s[0, 1, :3] = -1e4
    t[1, 2, :] = -np.inf  # a padding row, written as all -inf
    s[1, 2, :] = -np.inf
    student = tf.Variable(s)
    with tf.GradientTape() as tape:
        if name == "logit_mse":
            loss = tf.reduce_sum(L.logit_mse(t, student)[:, :2])
        else:
            loss = tf.reduce_sum(getattr(L, name)(t, student, temperature=2.0))
    grad = tape.gradient(loss, student).numpy()
    assert np.all(np.isfinite(grad))
    assert np.isfinite(loss.numpy())


def test_soft_target_mse_gradient_matches_finite_differences():
    t, s = random_logits((1, 5), seed=7)
    student = tf.Variable(s.astype("float64"))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(L.forward_kl(t, student, temperature=1.5))
    grad = tape.gradient(loss, student).numpy()
    eps = 1e-4
    numeric = np.zeros_like(s, dtype=np.float64)
    for j in range(5):
        plus, minus = s.astype(np.float64).copy(), s.astype(np.float64).copy()
        plus[0, j] += eps
        minus[0, j] -= eps
        numeric[0, j] = (
            np_reference("forward_kl", t, plus, 1.5) - np_reference("forward_kl", t, minus, 1.5)
        ).sum() / (2 * eps)
    np.testing.assert_allclose(grad, numeric, rtol=1e-3, atol=1e-5)


def test_bad_arguments_raise():
    t, s = random_logits((2, 4))
    with pytest.raises(ValueError, match="temperature"):
        L.forward_kl(t, s, temperature=0.0)
    with pytest.raises(ValueError, match="skew"):
        L.skewed_forward_kl(t, s, skew=1.5)
    with pytest.raises(TypeError, match="floating"):
        L.forward_kl(np.ones((2, 4), "int32"), s)


# === Classes ===


def make_loss(name, **kwargs):
    cls = CLASSES[name]
    if name == "logit_mse":
        kwargs.pop("temperature", None)
    return cls(**kwargs)


@pytest.mark.parametrize("name", ALL_FNS)
def test_class_is_weighted_mean_times_t_squared(name):
    t, s = random_logits((4, 5, 11), seed=8)
    temperature = 2.0
    per_position = np_reference(name, t, s, temperature if name != "logit_mse" else 1.0)
    scale = temperature**2 if name != "logit_mse" else 1.0
    rng = np.random.default_rng(9)
    weights = rng.uniform(0, 2, size=(4, 5)).astype("float32")
    weights[1] = 0.0
    loss = make_loss(name, temperature=temperature)
    got = float(loss(t, s, sample_weight=weights))
    want = scale * np.sum(weights * per_position) / np.sum(weights)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    # Unweighted: plain mean over all positions.
    np.testing.assert_allclose(float(loss(t, s)), scale * per_position.mean(), rtol=1e-5)
    # reduction="sum": the plain weighted sum.
    summed = make_loss(name, temperature=temperature, reduction="sum")
    np.testing.assert_allclose(
        float(summed(t, s, sample_weight=weights)),
        scale * np.sum(weights * per_position),
        rtol=1e-5,
    )
    # No T^2 when asked.
    if name != "logit_mse":
        plain = make_loss(name, temperature=temperature, scale_by_temperature_squared=False)
        np.testing.assert_allclose(float(plain(t, s)), per_position.mean(), rtol=1e-5)


def test_per_sample_weight_broadcasts_over_positions():
    t, s = random_logits((3, 4, 6), seed=10)
    per_position = np_reference("forward_kl", t, s)
    w = np.array([1.0, 0.0, 3.0], "float32")
    got = float(L.ForwardKL()(t, s, sample_weight=w))
    want = np.sum(w[:, None] * per_position) / (w.sum() * 4)
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_labels_with_ignore_index_and_mask_combine():
    t, s = random_logits((2, 6, 9), seed=11)
    labels = np.array([[5, 1, -100, 2, -100, -100], [-100, 3, 3, 3, 0, 8]])
    mask = np.array([[1, 1, 1, 1, 1, 0], [1, 1, 0, 1, 1, 1]], "float32")
    per_position = np_reference("reverse_kl", t, s)
    keep = (labels != -100) * mask
    want = np.sum(keep * per_position) / keep.sum()
    got = float(L.ReverseKL()(t, s, labels=labels, mask=mask))
    np.testing.assert_allclose(got, want, rtol=1e-5)
    np.testing.assert_array_equal(L.mask_from_labels(labels).numpy(), labels != -100)
    custom = L.ReverseKL(ignore_index=3)
    keep3 = labels != 3
    np.testing.assert_allclose(
        float(custom(t, s, labels=labels)),
        np.sum(keep3 * per_position) / keep3.sum(),
        rtol=1e-5,
    )


@pytest.mark.parametrize("name", ALL_FNS)
def test_all_masked_batch_gives_zero_and_zero_gradient(name):
    t, s = random_logits((2, 3, 5), seed=12)
    t[0, 0] = -np.inf  # garbage in masked positions must not leak NaN
    student = tf.Variable(s)
    loss = make_loss(name, temperature=2.0)
    with tf.GradientTape() as tape:
        value = loss(t, student, mask=np.zeros((2, 3)))
    grad = tape.gradient(value, student).numpy()
    assert float(value) == 0.0
    np.testing.assert_array_equal(grad, 0.0)


def test_masked_positions_receive_no_gradient():
    t, s = random_logits((2, 4, 7), seed=13)
    mask = np.array([[1, 1, 0, 0], [0, 1, 1, 0]], "float32")
    student = tf.Variable(s)
    with tf.GradientTape() as tape:
        value = L.SkewedForwardKL(temperature=2.0)(t, student, mask=mask)
    grad = tape.gradient(value, student).numpy()
    assert np.all(grad[mask == 0] == 0.0)
    assert np.all(np.abs(grad[mask == 1]).sum(-1) > 0)


def test_keras_mask_of_the_student_output_is_honoured():
    t, s = random_logits((2, 3, 5), seed=14)
    student = tf.constant(s)
    student._keras_mask = tf.constant([[True, False, True], [True, True, False]])
    per_position = np_reference("forward_kl", t, s)
    keep = np.array([[1, 0, 1], [1, 1, 0]])
    np.testing.assert_allclose(
        float(L.ForwardKL(scale_by_temperature_squared=False)(t, student)),
        np.sum(keep * per_position) / keep.sum(),
        rtol=1e-5,
    )


def test_rank_one_scores_work_with_sample_weights():
    # A pair model's score distilled with LogitMSE: one value per sample.
    t = np.array([0.1, 0.5, 0.9], "float32")[:, None]
    s = np.array([0.2, 0.2, 0.2], "float32")[:, None]
    w = np.array([1.0, 1.0, 0.0], "float32")
    got = float(L.LogitMSE()(t, s, sample_weight=w))
    np.testing.assert_allclose(got, (0.01 + 0.09) / 2, rtol=1e-5)


def test_larger_teacher_vocabulary_needs_explicit_truncation():
    t, _ = random_logits((2, 3, 12), seed=15)
    _, s = random_logits((2, 3, 8), seed=16)
    with pytest.raises(ValueError, match="truncate_teacher_vocab"):
        L.ForwardKL()(t, s)
    got = float(L.ForwardKL(truncate_teacher_vocab=True, scale_by_temperature_squared=False)(t, s))
    np.testing.assert_allclose(got, np_reference("forward_kl", t[..., :8], s).mean(), rtol=1e-5)
    with pytest.raises(ValueError, match="8 classes on the last axis, the student's 12"):
        L.ForwardKL(truncate_teacher_vocab=True)(s, t)  # smaller teacher: always an error
    with pytest.raises(ValueError, match="weight"):
        L.ForwardKL()(s, s, sample_weight=np.ones((2, 3, 8, 2)))


@pytest.mark.parametrize("name", ALL_FNS)
def test_config_round_trip_and_registration(name):
    kwargs = {"temperature": 3.0, "reduction": "sum", "ignore_index": -1}
    if name.startswith("skewed"):
        kwargs["skew"] = 0.3
    loss = make_loss(name, **kwargs)
    config = loss.get_config()
    clone = type(loss).from_config(config)
    assert clone.get_config() == config
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    assert type(restored) is type(loss)
    assert restored.get_config() == config
    t, s = random_logits((2, 4, 5), seed=17)
    np.testing.assert_allclose(float(restored(t, s)), float(loss(t, s)), rtol=1e-6)
    by_name = L.get(name)
    assert isinstance(by_name, CLASSES[name])


def test_get_rejects_unknown_names():
    with pytest.raises(ValueError, match="forward_kl"):
        L.get("kl_divergence_typo")
    with pytest.raises(ValueError, match="reduction"):
        L.ForwardKL(reduction="sum_over_batch_size")
