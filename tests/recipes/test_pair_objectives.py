"""Sentence-pair objectives (`kd_keras.recipes.sentence_pairs.objectives`) against NumPy."""

import numpy as np
import pytest

from kd_keras import losses as kd_losses
from kd_keras.recipes.sentence_pairs.objectives import (
    GoldScoreMSE,
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
        out["embeddings"].numpy(), np.stack([table[first], table[second]], axis=1)
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
