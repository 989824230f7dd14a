"""Sentence-pair objectives (`kd_keras.recipes.sentence_pairs.objectives`) against NumPy."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from kd_keras import losses as kd_losses
from kd_keras.recipes.sentence_pairs.objectives import (
    BatchSimilarityLoss,
    BinaryPairLoss,
    GoldScoreMSE,
    TeacherContrastiveLoss,
    objective_loss,
    teacher_pair_outputs,
)


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_gold_score_mse_ignores_unlabeled_pairs():
    gold = np.array([5.0, np.nan, 2.5, 0.0], np.float32)
    predicted = np.array([[0.9], [0.3], [0.1], [0.2]], np.float32)
    got = float(GoldScoreMSE(5.0)(gold, predicted))
    keep = ~np.isnan(gold)
    expected = np.mean((gold[keep] / 5.0 - predicted[keep, 0]) ** 2)
    assert got == pytest.approx(expected, rel=1e-6)
    assert float(GoldScoreMSE()(np.full(2, np.nan, np.float32), predicted[:2])) == 0.0


def test_teacher_pair_outputs_match_numpy():
    rng = np.random.default_rng(2)
    table = rng.normal(size=(6, 4)).astype(np.float32)
    first, second = np.array([0, 2, 5]), np.array([1, 2, 3])
    out = teacher_pair_outputs(table[first], table[second], scale=10.0, threshold=0.1)
    cosine = np.sum(unit(table[first]) * unit(table[second]), axis=-1, keepdims=True)
    np.testing.assert_allclose(out["score"].numpy(), cosine, rtol=1e-5)
    np.testing.assert_allclose(
        out["logits"].numpy(), np.concatenate([-(cosine - 0.1), cosine - 0.1], -1) * 10, rtol=1e-5
    )
    np.testing.assert_allclose(
        out["embeddings"].numpy(),
        np.stack([unit(table[first]), unit(table[second])], axis=1),
        rtol=1e-5,
    )


def test_objective_loss_choices():
    output, loss = objective_loss("embedding")
    assert output == "embeddings" and isinstance(loss, kd_losses.LogitMSE)
    output, loss = objective_loss("soft_label", "forward_kl", temperature=2.0)
    assert output == "logits" and isinstance(loss, kd_losses.ForwardKL)
    assert loss.temperature == 2.0
    with pytest.raises(ValueError, match="logit_mse"):
        objective_loss("score", "forward_kl")
    with pytest.raises(ValueError, match="Unknown objective"):
        objective_loss("cosine")
    # One owner of the temperature rules (`kd_losses.get`): a temperature the
    # loss cannot use is an error, never silently dropped.
    with pytest.raises(ValueError, match="no temperature"):
        objective_loss("embedding", temperature=2.0)
    with pytest.raises(ValueError, match="positive"):
        objective_loss("soft_label", temperature=0.0)
    output, loss = objective_loss("relational")
    assert output == "embeddings" and isinstance(loss, BatchSimilarityLoss)
    with pytest.raises(ValueError, match="own loss"):
        objective_loss("relational", "logit_mse")


# === BatchSimilarityLoss ===


def batch_similarity_numpy(teacher, student, weight):
    t = np.asarray(teacher, np.float64).reshape(-1, teacher.shape[-1])
    s = np.asarray(student, np.float64).reshape(-1, student.shape[-1])
    embedding = np.mean((s - t) ** 2)
    cos_t, cos_s = unit(t) @ unit(t).T, unit(s) @ unit(s).T
    n = len(t)
    off = ~np.eye(n, dtype=bool)
    return embedding + weight * np.mean((cos_s - cos_t)[off] ** 2)


@pytest.mark.parametrize("weight", [0.0, 1.0, 3.5])
def test_batch_similarity_loss_matches_numpy(weight):
    rng = np.random.default_rng(4)
    teacher = rng.normal(size=(5, 2, 6)).astype(np.float32)
    student = rng.normal(size=(5, 2, 6)).astype(np.float32)
    got = float(BatchSimilarityLoss(weight)(teacher, student))
    assert got == pytest.approx(batch_similarity_numpy(teacher, student, weight), rel=1e-5)
    # Identical embeddings cost nothing.
    assert float(BatchSimilarityLoss(weight)(teacher, teacher)) == pytest.approx(0.0, abs=1e-6)


def test_batch_similarity_loss_sees_the_cosines_between_pairs():
    # Two students with the same per-sentence error, one keeping the teacher's
    # cosines between sentences and one not: only the relational term tells.
    rng = np.random.default_rng(5)
    teacher = unit(rng.normal(size=(4, 2, 8))).astype(np.float32)
    rotation, _ = np.linalg.qr(rng.normal(size=(8, 8)))
    rotated = (teacher @ rotation.T).astype(np.float32)  # all cosines kept
    assert float(BatchSimilarityLoss(0.0)(teacher, rotated)) > 0.0
    assert float(BatchSimilarityLoss(1.0)(teacher, rotated)) == pytest.approx(
        float(BatchSimilarityLoss(0.0)(teacher, rotated)), abs=1e-6
    )
    shuffled = rotated.reshape(8, 8)[rng.permutation(8)].reshape(4, 2, 8)
    assert float(BatchSimilarityLoss(1.0)(teacher, shuffled)) > float(
        BatchSimilarityLoss(0.0)(teacher, shuffled)
    )


def test_batch_similarity_loss_gradient_and_config():
    teacher = tf.constant(np.random.default_rng(6).normal(size=(3, 2, 4)), tf.float32)
    student = tf.Variable(tf.random.normal([3, 2, 4], seed=1))
    with tf.GradientTape() as tape:
        value = BatchSimilarityLoss(2.0)(teacher, student)
    assert np.all(np.isfinite(tape.gradient(value, student).numpy()))
    loss = BatchSimilarityLoss(0.5)
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert isinstance(restored, BatchSimilarityLoss) and restored.weight == 0.5
    with pytest.raises(ValueError, match="weight"):
        BatchSimilarityLoss(-1.0)


# === TeacherContrastiveLoss ===


def contrastive_numpy(teacher, student, scale):
    t = unit(np.asarray(teacher, np.float64).reshape(-1, teacher.shape[-1]))
    s = unit(np.asarray(student, np.float64).reshape(-1, student.shape[-1]))
    logits = scale * s @ t.T
    same = (t @ t.T > 0.9999) & ~np.eye(len(t), dtype=bool)
    losses = []
    for i in range(len(t)):
        row = logits[i][~same[i]]
        losses.append(np.log(np.exp(row - row.max()).sum()) + row.max() - logits[i, i])
    return np.mean(losses)


@pytest.mark.parametrize("scale", [1.0, 20.0])
def test_teacher_contrastive_loss_matches_numpy(scale):
    rng = np.random.default_rng(7)
    teacher = rng.normal(size=(4, 2, 6)).astype(np.float32)
    teacher[3, 1] = 2.0 * teacher[0, 0]  # one sentence twice in the batch: not its own negative
    student = rng.normal(size=(4, 2, 6)).astype(np.float32)
    got = float(TeacherContrastiveLoss(scale)(teacher, student))
    assert got == pytest.approx(contrastive_numpy(teacher, student, scale), rel=1e-5)
    # The teacher itself scores better than a random student, and direction is all that counts.
    assert float(TeacherContrastiveLoss(scale)(teacher, 3.0 * teacher)) < got
    output, loss = objective_loss("contrastive")
    assert output == "embeddings" and isinstance(loss, TeacherContrastiveLoss)
    with pytest.raises(ValueError, match="own loss"):
        objective_loss("contrastive", temperature=2.0)


def test_teacher_contrastive_loss_gradient_and_config():
    teacher = tf.constant(np.random.default_rng(8).normal(size=(3, 2, 4)), tf.float32)
    student = tf.Variable(tf.random.normal([3, 2, 4], seed=2))
    with tf.GradientTape() as tape:
        value = TeacherContrastiveLoss()(teacher, student)
    assert np.all(np.isfinite(tape.gradient(value, student).numpy()))
    restored = keras.losses.deserialize(keras.losses.serialize(TeacherContrastiveLoss(5.0)))
    assert isinstance(restored, TeacherContrastiveLoss) and restored.scale == 5.0
    with pytest.raises(ValueError, match="scale"):
        TeacherContrastiveLoss(0.0)


# === BinaryPairLoss ===


def binary_pair_numpy(labels, cosines, threshold, weights=None):
    labels, cosines = np.asarray(labels, np.float64), np.asarray(cosines, np.float64).ravel()
    keep = ~np.isnan(labels)
    w = keep.astype(np.float64) * (1.0 if weights is None else np.asarray(weights, np.float64))
    y = np.where(keep, labels, 0.0)
    per_pair = y * (1 - cosines) ** 2 / 4 + (1 - y) * cosines**2 * (cosines > threshold)
    return np.sum(w * per_pair) / np.sum(w) if np.sum(w) else 0.0


def test_binary_pair_loss_matches_numpy_over_labeled_pairs():
    labels = np.array([1, 0, np.nan, 0, 1, np.nan, 0, 1], np.float32)
    cosines = np.array([[0.9], [0.35], [0.8], [-0.4], [-0.2], [0.1], [0.05], [0.6]], np.float32)
    for threshold in (0.0, 0.3, -0.5):
        got = float(BinaryPairLoss(threshold=threshold)(labels, cosines))
        expected = binary_pair_numpy(labels, cosines, threshold)
        assert got == pytest.approx(expected, rel=1e-6), threshold
    weights = np.array([1, 2, 5, 0.5, 1, 3, 1, 2], np.float32)
    got = float(BinaryPairLoss(0.1)(labels, cosines, sample_weight=weights))
    assert got == pytest.approx(binary_pair_numpy(labels, cosines, 0.1, weights), rel=1e-6)
    # Unlabeled pairs change nothing, whatever their cosine.
    changed = cosines.copy()
    changed[[2, 5]] = [[-0.9], [0.99]]
    assert float(BinaryPairLoss(0.1)(labels, changed)) == pytest.approx(
        float(BinaryPairLoss(0.1)(labels, cosines)), rel=1e-7
    )
    # No labeled pair: 0, not NaN.
    nan_labels = np.full(3, np.nan, np.float32)
    assert float(BinaryPairLoss()(nan_labels, cosines[:3])) == 0.0


def test_binary_pair_loss_threshold_gate():
    loss = BinaryPairLoss(threshold=0.5)
    negatives = np.zeros(3, np.float32)
    # At or below the threshold a dissimilar pair costs nothing...
    assert float(loss(negatives, np.array([[0.5], [0.2], [-0.7]], np.float32))) == 0.0
    # ...above it, s^2.
    assert float(loss(negatives[:1], np.array([[0.6]], np.float32))) == pytest.approx(0.36)
    # Similar pairs are never gated: (1 - s)^2 / 4.
    positives = np.ones(2, np.float32)
    got = float(loss(positives, np.array([[0.2], [-1.0]], np.float32)))
    assert got == pytest.approx((0.8**2 / 4 + 2.0**2 / 4) / 2, rel=1e-6)


def test_binary_pair_loss_gradient_is_finite_and_skips_unlabeled():
    labels = tf.constant([1.0, np.nan, 0.0])
    cosines = tf.Variable([[0.3], [0.7], [0.6]])
    with tf.GradientTape() as tape:
        value = BinaryPairLoss(threshold=0.0)(labels, cosines)
    grad = tape.gradient(value, cosines).numpy().ravel()
    np.testing.assert_allclose(grad, [-(1 - 0.3) / 2 / 2, 0.0, 2 * 0.6 / 2], rtol=1e-6)


def test_binary_pair_loss_config_round_trip():
    loss = BinaryPairLoss(threshold=0.25, name="hard_pairs")
    assert loss.get_config() == {"threshold": 0.25, "name": "hard_pairs"}
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    assert isinstance(restored, BinaryPairLoss)
    assert restored.threshold == 0.25 and restored.name == "hard_pairs"
    assert keras.saving.get_registered_object("kd_keras>BinaryPairLoss") is BinaryPairLoss
    labels = np.array([1, 0, np.nan], np.float32)
    cosines = np.array([[0.4], [0.5], [0.9]], np.float32)
    assert float(restored(labels, cosines)) == float(loss(labels, cosines))
