"""benchmarks/kd_step.py: the loss values it compares, on a tiny batch."""

import importlib.util
import pathlib

import numpy as np
import pytest

SCRIPT = pathlib.Path(__file__).resolve().parents[2] / "benchmarks" / "kd_step.py"


@pytest.fixture(scope="module")
def kd_step():
    spec = importlib.util.spec_from_file_location("kd_step_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def losses(kd_step):
    teacher, student = kd_step.make_models(seed=1)
    x, y = kd_step.make_batch(8, seed=1)
    return kd_step.losses_on_batch(teacher, student, x, y, temperature=3.0)


def test_kd_keras_reports_softmax_kl_times_t_squared(kd_step, losses):
    reference = losses["numpy_softmax_kl"]
    assert reference > 0.01  # a real divergence, not a near-zero one
    assert kd_step.relative_error(losses["kd_keras"], reference) <= 1e-5


def test_keras_with_kl_divergence_instance_is_the_same_objective(kd_step, losses):
    # The like-for-like configuration the benchmark times.
    assert kd_step.relative_error(losses["keras_kl_instance"], losses["numpy_softmax_kl"]) <= 1e-5


def test_keras_default_logits_distillation_is_not_softmax_kl(kd_step, losses):
    # LogitsDistillation(loss="kl_divergence") gets the function
    # keras.losses.kl_divergence, not a KLDivergence instance, so it applies it
    # to the clipped temperature-scaled logits, without softmax or T^2.
    assert kd_step.relative_error(losses["keras_default"], losses["numpy_softmax_kl"]) > 0.5
    assert kd_step.relative_error(losses["keras_default"], losses["numpy_keras_default"]) <= 1e-5


def test_numpy_reference_formulas(kd_step):
    t = np.array([[2.0, 0.0, -1.0]])
    s = np.array([[0.0, 0.0, 0.0]])
    p = np.exp(t / 2) / np.exp(t / 2).sum()
    expected = 4 * float((p * np.log(p * 3)).sum())
    assert kd_step.numpy_softmax_kl(t, s, 2.0) == pytest.approx(expected, rel=1e-12)
    assert kd_step.numpy_softmax_kl(t, t, 2.0) == pytest.approx(0.0, abs=1e-15)
    # Clipped logits: t/T = [1, 0, -0.5] -> [1, eps, eps]; s/T -> [eps, eps, eps].
    eps = 1e-7
    expected = float(np.log(1 / eps))
    assert kd_step.numpy_keras_default(t, s, 2.0) == pytest.approx(expected, rel=1e-12)
