"""kd_keras.Distiller against hand-written training loops."""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

import kd_keras
from kd_keras import losses as L

N_FEATURES, N_CLASSES = 6, 4


def dense_model(seed, hidden=8, name=None):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((N_FEATURES,))
    x = keras.layers.Dense(hidden, activation="tanh")(inputs)
    return keras.Model(inputs, keras.layers.Dense(N_CLASSES)(x), name=name)


def data(n=32, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, N_FEATURES)).astype("float32")
    y = rng.integers(0, N_CLASSES, size=(n,)).astype("int32")
    return x, y


def copy_of(model):
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    return clone


def manual_train(student, teacher, x, y, alpha, temperature, lr, batch_size, sample_weight=None):
    """Reference: plain tf loop, SGD, the total loss written out by hand."""
    for start in range(0, len(x), batch_size):
        xb, yb = x[start : start + batch_size], y[start : start + batch_size]
        wb = None if sample_weight is None else sample_weight[start : start + batch_size]
        t_logits = teacher(xb, training=False) if teacher is not None else None
        with tf.GradientTape() as tape:
            s_logits = student(xb, training=True)
            ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=yb, logits=s_logits)
            if t_logits is not None:
                p = tf.nn.softmax(t_logits / temperature)
                kl = tf.reduce_sum(
                    p
                    * (
                        tf.nn.log_softmax(t_logits / temperature)
                        - tf.nn.log_softmax(s_logits / temperature)
                    ),
                    axis=-1,
                )
            else:
                kl = tf.zeros_like(ce)
            if wb is None:
                hard, soft = tf.reduce_mean(ce), tf.reduce_mean(kl)
            else:
                hard = tf.reduce_sum(wb * ce) / len(xb)  # Keras: sum over batch size
                soft = tf.reduce_sum(wb * kl) / tf.reduce_sum(wb)  # kd_keras: weighted mean
            loss = alpha * temperature**2 * soft + (1 - alpha) * hard
        grads = tape.gradient(loss, student.trainable_variables)
        for var, grad in zip(student.trainable_variables, grads, strict=True):
            var.assign_sub(lr * grad)
    return student


def fit_distiller(teacher, student, x, y, alpha, temperature, lr, batch_size, **fit_kwargs):
    distiller = kd_keras.Distiller(teacher, student)
    distiller.compile(
        optimizer=keras.optimizers.SGD(lr),
        student_loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        distillation_loss="forward_kl",
        alpha=alpha,
        temperature=temperature,
    )
    history = distiller.fit(
        x, y, batch_size=batch_size, epochs=1, shuffle=False, verbose=0, **fit_kwargs
    )
    return distiller, history


def assert_same_weights(a, b, atol=1e-6):
    for wa, wb in zip(a.get_weights(), b.get_weights(), strict=True):
        np.testing.assert_allclose(wa, wb, atol=atol)


@pytest.mark.parametrize("alpha", [0.0, 1.0, 0.3])
def test_steps_match_hand_written_loop(alpha):
    x, y = data()
    teacher, student = dense_model(1, hidden=16), dense_model(2)
    reference = manual_train(copy_of(student), teacher, x, y, alpha, 2.0, 0.1, 8)
    fit_distiller(teacher, student, x, y, alpha, 2.0, 0.1, 8)
    assert_same_weights(student, reference)


def test_alpha_zero_is_plain_supervised_training():
    x, y = data()
    student = dense_model(2)
    plain = copy_of(student)
    plain.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    plain.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    fit_distiller(dense_model(1), student, x, y, 0.0, 2.0, 0.1, 8)
    assert_same_weights(student, plain)


def test_sample_weights_are_honoured():
    x, y = data()
    w = np.random.default_rng(3).uniform(0.0, 2.0, size=len(x)).astype("float32")
    w[::5] = 0.0
    teacher, student = dense_model(1), dense_model(2)
    reference = manual_train(copy_of(student), teacher, x, y, 0.4, 1.5, 0.1, 8, sample_weight=w)
    fit_distiller(teacher, student, x, y, 0.4, 1.5, 0.1, 8, sample_weight=w)
    assert_same_weights(student, reference)


def test_teacher_is_frozen_and_bit_identical_after_fit():
    x, y = data()
    teacher = dense_model(1)
    # Dropout and BatchNorm would change outputs or statistics if the teacher
    # ran in training mode.
    inputs = keras.Input((N_FEATURES,))
    h = keras.layers.BatchNormalization()(keras.layers.Dropout(0.5)(teacher(inputs)))
    teacher = keras.Model(inputs, h)
    before = [w.copy() for w in teacher.get_weights()]
    distiller, history = fit_distiller(teacher, dense_model(2), x, y, 0.5, 2.0, 0.1, 8)
    assert not teacher.trainable
    student_ids = {id(v) for v in distiller.student.trainable_variables}
    assert {id(v) for v in distiller.trainable_variables} == student_ids
    for b, a in zip(before, teacher.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    # Deterministic teacher: training=False every time.
    np.testing.assert_array_equal(teacher(x, training=False), teacher(x, training=False))
    assert set(history.history) == {"loss", "student_loss", "distillation_loss"}


def test_trackers_metrics_evaluate_and_predict_are_the_students():
    x, y = data()
    teacher, student = dense_model(1), dense_model(2)
    distiller = kd_keras.Distiller(teacher, student)
    distiller.compile(
        optimizer=keras.optimizers.SGD(0.0),  # no update: numbers stay checkable
        student_loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        distillation_loss=L.ReverseKL(temperature=2.0),
        alpha=0.25,
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="acc")],
    )
    result = distiller.evaluate(x, y, batch_size=len(x), verbose=0, return_dict=True)
    s_logits, t_logits = student(x).numpy(), teacher(x).numpy()
    ce = float(keras.losses.SparseCategoricalCrossentropy(from_logits=True)(y, s_logits))
    rkl = 4.0 * float(np.mean(L.reverse_kl(t_logits, s_logits, temperature=2.0)))
    acc = float(np.mean(np.argmax(s_logits, -1) == y))
    assert result["student_loss"] == pytest.approx(ce, rel=1e-5)
    assert result["distillation_loss"] == pytest.approx(rkl, rel=1e-5)
    assert result["loss"] == pytest.approx(0.25 * rkl + 0.75 * ce, rel=1e-5)
    assert result["acc"] == pytest.approx(acc)
    np.testing.assert_allclose(distiller.predict(x, verbose=0), s_logits, atol=1e-6)
    np.testing.assert_allclose(distiller(x), s_logits, atol=1e-6)


def test_different_inputs_for_teacher_and_student():
    x, y = data()
    rng = np.random.default_rng(4)
    x_teacher = rng.normal(size=(len(x), 3)).astype("float32")
    keras.utils.set_random_seed(5)
    teacher = keras.Sequential([keras.Input((3,)), keras.layers.Dense(N_CLASSES)])
    student = dense_model(2)
    reference = copy_of(student)
    fit_distiller(teacher, student, {"teacher": x_teacher, "student": x}, y, 1.0, 2.0, 0.1, 8)
    # Same as distilling from the teacher's outputs computed up front.
    fit_distiller(
        FailingTeacher(),
        reference,
        {"student": x, "teacher_outputs": teacher.predict(x_teacher, verbose=0)},
        y,
        1.0,
        2.0,
        0.1,
        8,
    )
    assert_same_weights(student, reference)


class FailingTeacher(keras.layers.Layer):
    def call(self, inputs, training=None):
        raise AssertionError("the teacher must not run when outputs are cached")


def test_cached_teacher_outputs_skip_the_teacher():
    x, y = data()
    teacher, student = dense_model(1), dense_model(2)
    live = copy_of(student)
    cached = teacher.predict(x, verbose=0)
    fit_distiller(teacher, live, x, y, 0.7, 2.0, 0.1, 8)
    fit_distiller(
        FailingTeacher(), student, {"student": x, "teacher_outputs": cached}, y, 0.7, 2.0, 0.1, 8
    )
    assert_same_weights(student, live)
    # Cached outputs under a name of one's choice, student inputs as the rest.
    inputs = keras.Input((N_FEATURES,), name="features")
    other = keras.Model(inputs, keras.layers.Dense(N_CLASSES)(inputs))
    distiller = kd_keras.Distiller(FailingTeacher(), other, teacher_outputs_key="soft")
    distiller.compile(optimizer=keras.optimizers.SGD(0.0), distillation_loss="logit_mse", alpha=1.0)
    result = distiller.evaluate({"features": x, "soft": cached}, verbose=0, return_dict=True)
    want = np.mean((cached - other.predict(x, verbose=0)) ** 2)
    assert result["distillation_loss"] == pytest.approx(want, rel=1e-5)


def test_unlabeled_batches_train_on_the_teacher_alone():
    x, _ = data()
    teacher, student = dense_model(1), dense_model(2)
    reference = manual_train(
        copy_of(student), teacher, x, np.zeros(len(x), "int32"), 1.0, 1.0, 0.1, 8
    )
    distiller = kd_keras.Distiller(teacher, student)
    distiller.compile(
        optimizer=keras.optimizers.SGD(0.1), distillation_loss="forward_kl", alpha=1.0
    )
    history = distiller.fit(x, batch_size=8, epochs=1, shuffle=False, verbose=0)
    assert history.history["student_loss"] == [0.0]
    assert_same_weights(student, reference)


def test_label_mask_leaves_ignored_positions_out():
    rng = np.random.default_rng(6)
    ids = rng.integers(1, 20, size=(4, 7)).astype("int32")
    labels = rng.integers(0, 20, size=(4, 7)).astype("int32")
    labels[:, :3] = -100  # a prompt
    labels[0, 5:] = -100  # padding

    def lm(seed):
        keras.utils.set_random_seed(seed)
        return keras.Sequential(
            [
                keras.Input((7,), dtype="int32"),
                keras.layers.Embedding(20, 5),
                keras.layers.Dense(20),
            ]
        )

    teacher, student = lm(1), lm(2)
    distiller = kd_keras.Distiller(teacher, student)
    distiller.compile(
        optimizer=keras.optimizers.SGD(0.0),
        student_loss=keras.losses.SparseCategoricalCrossentropy(
            from_logits=True, ignore_class=-100
        ),
        distillation_loss=L.ForwardKL(temperature=1.0),
        alpha=0.5,
        label_mask=True,
    )
    result = distiller.evaluate(ids, labels, batch_size=4, verbose=0, return_dict=True)
    per_position = L.forward_kl(teacher(ids), student(ids)).numpy()
    keep = labels != -100
    assert result["distillation_loss"] == pytest.approx(per_position[keep].mean(), rel=1e-5)
    assert np.isfinite(result["student_loss"])


def test_mixed_precision_policy_scales_the_loss():
    x, y = data()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        teacher, student = dense_model(1), dense_model(2)
        distiller = kd_keras.Distiller(teacher, student)
        distiller.compile(
            optimizer=keras.optimizers.SGD(0.1),
            student_loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            distillation_loss="forward_kl",
            alpha=0.5,
            temperature=2.0,
        )
        assert isinstance(distiller.optimizer, keras.optimizers.LossScaleOptimizer)
        assert student(x).dtype == "float16"
        before = [w.copy() for w in student.get_weights()]
        history = distiller.fit(x, y, batch_size=8, epochs=2, verbose=0)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert all(np.isfinite(v) for v in history.history["loss"])
    assert history.history["loss"][-1] < history.history["loss"][0]
    changed = [not np.array_equal(a, b) for a, b in zip(before, student.get_weights(), strict=True)]
    assert all(changed)


def test_backup_and_restore_resumes_an_interrupted_fit(tmp_path):
    x, y = data(64)

    def fresh():
        distiller = kd_keras.Distiller(dense_model(1), dense_model(2))
        distiller.compile(
            optimizer=keras.optimizers.Adam(0.01),
            student_loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            distillation_loss="skewed_reverse_kl",
            alpha=0.5,
            temperature=2.0,
        )
        return distiller

    uninterrupted = fresh()
    uninterrupted.fit(x, y, batch_size=16, epochs=4, shuffle=False, verbose=0)

    class Interrupt(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 2:
                raise KeyboardInterrupt

    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))
    interrupted = fresh()
    with pytest.raises(KeyboardInterrupt):
        interrupted.fit(
            x, y, batch_size=16, epochs=4, shuffle=False, verbose=0, callbacks=[backup, Interrupt()]
        )

    epochs_run = []
    resumed = fresh()
    resumed.fit(
        x,
        y,
        batch_size=16,
        epochs=4,
        shuffle=False,
        verbose=0,
        callbacks=[
            keras.callbacks.BackupAndRestore(str(tmp_path / "backup")),
            keras.callbacks.LambdaCallback(on_epoch_begin=lambda e, logs: epochs_run.append(e)),
        ],
    )
    assert epochs_run == [2, 3]
    assert_same_weights(resumed.student, uninterrupted.student, atol=1e-6)


def test_student_saves_alone_and_distiller_round_trips(tmp_path):
    x, y = data()
    distiller, _ = fit_distiller(
        dense_model(1, name="teacher"), dense_model(2, name="student"), x, y, 0.5, 2.0, 0.1, 8
    )
    path = str(tmp_path / "student.keras")
    distiller.student.save(path)
    reloaded = keras.saving.load_model(path)
    assert reloaded.name == "student"
    assert len(reloaded.weights) == len(distiller.student.weights)
    np.testing.assert_allclose(
        reloaded.predict(x, verbose=0), distiller.predict(x, verbose=0), atol=1e-6
    )

    whole = str(tmp_path / "distiller.keras")
    distiller.save(whole)
    restored = keras.saving.load_model(whole)
    assert isinstance(restored, kd_keras.Distiller)
    assert restored.alpha == 0.5
    assert restored.distillation_loss.get_config() == distiller.distillation_loss.get_config()
    np.testing.assert_allclose(
        restored.predict(x, verbose=0), distiller.predict(x, verbose=0), atol=1e-6
    )
    restored.fit(x, y, epochs=1, verbose=0)  # compiled again from its config


def test_bad_configuration_raises_clear_errors():
    teacher, student = dense_model(1), dense_model(2)
    distiller = kd_keras.Distiller(teacher, student)
    with pytest.raises(ValueError, match="alpha"):
        distiller.compile(optimizer="sgd", student_loss="mse", alpha=1.5)
    with pytest.raises(ValueError, match="student_loss"):
        distiller.compile(optimizer="sgd", alpha=0.5)
    with pytest.raises(ValueError, match="no temperature"):
        distiller.compile(
            optimizer="sgd", distillation_loss="logit_mse", alpha=1.0, temperature=2.0
        )
    with pytest.raises(ValueError, match="Unknown distillation loss"):
        distiller.compile(optimizer="sgd", distillation_loss="kl", alpha=1.0)
    with pytest.raises(ValueError, match="different models"):
        kd_keras.Distiller(student, student)
    # A teacher with more classes than the student: named shapes.
    wide = keras.Sequential([keras.Input((N_FEATURES,)), keras.layers.Dense(N_CLASSES + 2)])
    distiller = kd_keras.Distiller(wide, student)
    distiller.compile(optimizer="sgd", distillation_loss="forward_kl", alpha=1.0)
    x, y = data(8)
    with pytest.raises(ValueError, match="6 classes"):
        distiller.fit(x, y, epochs=1, verbose=0)


def test_temperature_overrides_a_copy_of_the_loss_object():
    loss = L.SkewedForwardKL(temperature=1.0, skew=0.2)
    distiller = kd_keras.Distiller(dense_model(1), dense_model(2))
    distiller.compile(optimizer="sgd", distillation_loss=loss, alpha=1.0, temperature=4.0)
    assert distiller.distillation_loss.temperature == 4.0
    assert distiller.distillation_loss.skew == 0.2
    assert loss.temperature == 1.0


# === keras.distillation interop ===


def np_softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def logits_pair(seed=0, n=8):
    rng = np.random.default_rng(seed)
    t = (3.0 * rng.normal(size=(n, N_CLASSES))).astype("float32")
    s = (3.0 * rng.normal(size=(n, N_CLASSES))).astype("float32")
    return t, s


def np_softmax_kl(t, s, temperature):
    """NumPy float64: mean over the batch of KL(p || q) x T^2."""
    p = np_softmax(t.astype("float64") / temperature)
    q = np_softmax(s.astype("float64") / temperature)
    return float(np.mean(np.sum(p * (np.log(p) - np.log(q)), axis=-1)) * temperature**2)


@pytest.mark.parametrize(
    "kl", ["kl_divergence", keras.losses.KLDivergence()], ids=["default", "instance"]
)
def test_keras_logits_distillation_becomes_a_softmax_kl(kl):
    distiller = kd_keras.Distiller(dense_model(1), dense_model(2))
    logits = keras.distillation.LogitsDistillation(temperature=2.0, loss=kl)
    distiller.compile(optimizer="sgd", distillation_loss=logits, alpha=1.0)
    loss = distiller.distillation_loss
    assert isinstance(loss, L.ForwardKL) and loss.temperature == 2.0
    t, s = logits_pair()
    expected = np_softmax_kl(t, s, 2.0)
    np.testing.assert_allclose(float(loss(t, s)), expected, rtol=1e-5)
    # Keras' own numbers with the KLDivergence instance (probabilities clipped
    # to [1e-7, 1], immaterial at these logits) are the same.
    keras_kl = keras.distillation.LogitsDistillation(2.0, loss=keras.losses.KLDivergence())
    np.testing.assert_allclose(float(keras_kl.compute_loss(t, s)), expected, rtol=1e-5)


def test_keras_default_logits_distillation_is_not_a_softmax_kl():
    # Why the default maps to the documented softmax KL and not to Keras'
    # numbers: Keras 3.15 applies `kl_divergence` to the scaled logits.
    t, s = logits_pair()
    temperature = 2.0
    keras_value = float(keras.distillation.LogitsDistillation(temperature).compute_loss(t, s))
    a = np.clip(t / temperature, 1e-7, 1.0).astype("float64")
    b = np.clip(s / temperature, 1e-7, 1.0).astype("float64")
    np.testing.assert_allclose(keras_value, np.mean(np.sum(a * np.log(a / b), -1)), rtol=1e-5)
    assert abs(keras_value - np_softmax_kl(t, s, temperature)) > 0.1


def test_keras_names_train_as_ours():
    # LogitsDistillation with student_loss_weight=0.7 is forward_kl, T=2, alpha=0.3.
    x, y = data()
    teacher, student = dense_model(1, hidden=16), dense_model(2)
    reference = manual_train(copy_of(student), teacher, x, y, 0.3, 2.0, 0.1, 8)
    distiller = kd_keras.Distiller(teacher, student)
    distiller.compile(
        optimizer=keras.optimizers.SGD(0.1),
        student_loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        distillation_loss=[keras.distillation.LogitsDistillation(temperature=2.0)],
        student_loss_weight=0.7,
    )
    assert distiller.alpha == pytest.approx(0.3)
    distiller.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    assert_same_weights(student, reference)
    # The mapped loss survives the compile config.
    again = kd_keras.Distiller(dense_model(1), dense_model(2))
    again.compile_from_config(distiller.get_compile_config())
    assert isinstance(again.distillation_loss, L.ForwardKL)
    assert again.distillation_loss.temperature == 2.0
    assert again.alpha == pytest.approx(0.3)


@pytest.mark.parametrize("name", ["mse", "cosine_similarity"])
def test_keras_feature_distillation_of_outputs_is_its_loss(name):
    distiller = kd_keras.Distiller(dense_model(1), dense_model(2))
    feature = keras.distillation.FeatureDistillation(loss=name)
    distiller.compile(optimizer="sgd", distillation_loss=feature, alpha=1.0)
    t, s = (v.astype("float64") for v in logits_pair(1))
    if name == "mse":
        expected = np.mean((t - s) ** 2)
    else:
        cosines = np.sum(t * s, -1) / (np.linalg.norm(t, axis=-1) * np.linalg.norm(s, axis=-1))
        expected = -np.mean(cosines)
    t, s = t.astype("float32"), s.astype("float32")
    np.testing.assert_allclose(float(distiller.distillation_loss(t, s)), expected, rtol=1e-5)
    np.testing.assert_allclose(float(feature.compute_loss(t, s)), expected, rtol=1e-5)


class _CustomKerasLoss(keras.distillation.DistillationLoss):
    def compute_loss(self, teacher_outputs, student_outputs, **kwargs):
        return keras.ops.mean((teacher_outputs - student_outputs) ** 2)


def test_keras_distillation_objects_without_an_equivalent_are_clear_errors():
    kd = keras.distillation
    distiller = kd_keras.Distiller(dense_model(1), dense_model(2))
    cases = [
        (
            kd.FeatureDistillation(teacher_layer_name="dense", student_layer_name="dense_1"),
            None,
            r"FeatureDistillation\(teacher_layer_name='dense', student_layer_name='dense_1'\) "
            r"is not supported: .*distill_output=KEY",
        ),
        (
            kd.LogitsDistillation(loss="categorical_crossentropy"),
            None,
            r"LogitsDistillation\(loss=categorical_crossentropy\) has no kd_keras equivalent: "
            r"pass distillation_loss='forward_kl'",
        ),
        (
            kd.LogitsDistillation(loss=["kl_divergence", "kl_divergence"]),
            None,
            r"one loss per output is not supported.*distill_output",
        ),
        (
            [kd.LogitsDistillation(), kd.FeatureDistillation()],
            None,
            "takes one distillation loss; received a list of 2",
        ),
        (_CustomKerasLoss(), None, "_CustomKerasLoss .* has no kd_keras equivalent"),
        (
            kd.LogitsDistillation(temperature=3.0),
            2.0,
            r"temperature=2.0 and .*LogitsDistillation\(temperature=3.0\) disagree",
        ),
        (kd.FeatureDistillation(), 2.0, "FeatureDistillation has no temperature"),
    ]
    for loss, temperature, message in cases:
        with pytest.raises(ValueError, match=message) as error:
            distiller.compile(distillation_loss=loss, temperature=temperature, alpha=1.0)
        assert "\n" not in str(error.value)


def test_keras_argument_names_get_ours():
    teacher, student = dense_model(1), dense_model(2)
    distiller = kd_keras.Distiller(teacher, student)
    with pytest.raises(ValueError, match="takes `student_loss=` .* and `distillation_loss=`"):
        distiller.compile(optimizer="adam", loss="mse")
    with pytest.raises(ValueError, match="`alpha` or `student_loss_weight`"):
        distiller.compile(student_loss="mse", alpha=0.5, student_loss_weight=0.5)
    with pytest.raises(ValueError, match="`student_loss_weight` must be a number in"):
        distiller.compile(student_loss="mse", student_loss_weight=1.5)
    with pytest.raises(ValueError, match="no `distillation_loss_weights`: .*alpha"):
        distiller.compile(student_loss="mse", distillation_loss_weights=[1.0])
    with pytest.raises(ValueError, match=r"compile\(distillation_loss=...\)"):
        kd_keras.Distiller(teacher, student, distillation_losses=None)
    with pytest.raises(ValueError, match="`alpha=1 - w`"):
        kd_keras.Distiller(teacher, student, student_loss_weight=0.5)
    # student_loss_weight=0 is pure distillation: no student loss needed.
    distiller.compile(optimizer="sgd", student_loss_weight=0.0)
    assert distiller.alpha == 1.0 and distiller.student_loss is None


MIRRORED_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    os.environ["KERAS_BACKEND"] = "tensorflow"
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
    )
    import keras
    import numpy as np
    import kd_keras

    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 6)).astype("float32")
    y = rng.integers(0, 4, size=(16,)).astype("int32")

    def build():
        keras.utils.set_random_seed(1)
        teacher = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4)])
        keras.utils.set_random_seed(2)
        student = keras.Sequential(
            [keras.Input((6,)), keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(4)]
        )
        distiller = kd_keras.Distiller(teacher, student)
        distiller.compile(
            optimizer=keras.optimizers.SGD(0.5),
            student_loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            distillation_loss="forward_kl",
            alpha=0.5,
            temperature=2.0,
        )
        return distiller

    one = build()
    h1 = one.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0).history
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        two = build()
    h2 = two.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0).history
    weight_diff = max(
        float(np.max(np.abs(a - b)))
        for a, b in zip(one.student.get_weights(), two.student.get_weights())
    )
    moved = max(
        float(np.max(np.abs(a - b)))
        for a, b in zip(one.student.get_weights(), build().student.get_weights())
    )
    print(json.dumps({
        "replicas": strategy.num_replicas_in_sync,
        "loss_diff": abs(h1["loss"][0] - h2["loss"][0]),
        "distillation_diff": abs(h1["distillation_loss"][0] - h2["distillation_loss"][0]),
        "weight_diff": weight_diff,
        "moved": moved,
    }))
    """
)


def test_mirrored_strategy_matches_one_device():
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    out = subprocess.run(
        [sys.executable, "-c", MIRRORED_SCRIPT],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["replicas"] == 2
    assert result["moved"] > 1e-3  # the step did change the weights
    assert result["loss_diff"] < 1e-5
    assert result["distillation_diff"] < 1e-5
    assert result["weight_diff"] < 1e-5
