"""Masked pooling (`kd_keras.models.pooling`) against NumPy."""

import keras
import numpy as np
import pytest

from kd_keras.models.pooling import (
    AttentionPooling,
    MaskedPooling,
    l2_normalize,
    masked_max,
    masked_mean,
)


@pytest.fixture
def sequence():
    x = np.random.default_rng(0).normal(size=(3, 5, 4)).astype("float32")
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]], "int32")
    return x, mask


def test_masked_mean_and_max_match_numpy(sequence):
    x, mask = sequence
    mean = keras.ops.convert_to_numpy(masked_mean(x, mask))
    np.testing.assert_allclose(mean[0], x[0, :3].mean(0), rtol=1e-6)
    np.testing.assert_allclose(mean[1], x[1].mean(0), rtol=1e-6)
    np.testing.assert_array_equal(mean[2], 0.0)  # no position: zeros, not NaN
    largest = keras.ops.convert_to_numpy(masked_max(x, mask))
    np.testing.assert_allclose(largest[0], x[0, :3].max(0))
    np.testing.assert_allclose(largest[1], x[1].max(0))
    np.testing.assert_array_equal(largest[2], 0.0)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(masked_mean(x)), x.mean(1), rtol=1e-6)


def test_layer_modes_and_normalization(sequence):
    x, mask = sequence
    m = mask[:2, :, None]
    mean = (x[:2] * m).sum(1) / m.sum(1)
    np.testing.assert_allclose(MaskedPooling("mean")(x[:2], mask[:2]), mean, rtol=1e-6)
    unit = mean / np.linalg.norm(mean, axis=-1, keepdims=True)
    np.testing.assert_allclose(MaskedPooling("mean", True)(x[:2], mask[:2]), unit, rtol=1e-5)
    np.testing.assert_allclose(MaskedPooling("cls")(x, mask), x[:, 0])
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(l2_normalize(np.zeros((1, 3), "float32"))), 0.0
    )
    with pytest.raises(ValueError, match="mode"):
        MaskedPooling("median")


def test_layer_uses_the_keras_mask_of_an_embedding():
    ids = keras.Input(shape=(None,), dtype="int32")
    embedded = keras.layers.Embedding(10, 3, mask_zero=True)(ids)
    model = keras.Model(ids, [MaskedPooling("mean")(embedded), MaskedPooling("max")(embedded)])
    table = model.layers[1].embeddings.numpy()
    tokens = np.array([[4, 2, 0, 0], [0, 0, 0, 0]], "int32")
    mean, largest = (keras.ops.convert_to_numpy(t) for t in model(tokens))
    np.testing.assert_allclose(mean[0], table[[4, 2]].mean(0), rtol=1e-6)
    np.testing.assert_allclose(largest[0], table[[4, 2]].max(0), rtol=1e-6)
    np.testing.assert_array_equal(mean[1], 0.0)
    np.testing.assert_array_equal(largest[1], 0.0)


def test_config_round_trip():
    layer = MaskedPooling("max", normalize=True, name="pool")
    copy = MaskedPooling.from_config(layer.get_config())
    assert (copy.mode, copy.normalize, copy.name) == ("max", True, "pool")


# === AttentionPooling ===


def attention_pooling_numpy(layer, x, mask):
    score = layer.score.kernel.numpy()[:, 0]
    if layer.units:
        hidden = np.tanh(x @ layer.hidden.kernel.numpy() + layer.hidden.bias.numpy())
    else:
        hidden = x
    e = np.where(mask.astype(bool), hidden @ score, -np.inf)
    out = np.zeros(x.shape[::2], "float32")
    for b in range(len(x)):
        if mask[b].any():
            w = np.exp(e[b] - e[b].max())
            out[b] = (w / w.sum()) @ x[b]
    return out


@pytest.mark.parametrize("units", [0, 3])
def test_attention_pooling_matches_numpy(sequence, units):
    x, mask = sequence
    layer = AttentionPooling(units)
    got = keras.ops.convert_to_numpy(layer(x, mask))
    np.testing.assert_allclose(got, attention_pooling_numpy(layer, x, mask), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got[2], 0.0)  # no position: zeros, not NaN
    # Padding never counts: the masked positions may hold anything.
    noisy = x.copy()
    noisy[~mask.astype(bool)] = 1e3
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer(noisy, mask)), got, rtol=1e-6)


def test_attention_pooling_takes_the_keras_mask_and_round_trips(tmp_path):
    ids = np.array([[4, 2, 7, 0, 0], [1, 3, 0, 0, 0]], "int32")
    inputs = keras.Input(shape=(None,), dtype="int32")
    embedded = keras.layers.Embedding(10, 4, mask_zero=True)(inputs)
    model = keras.Model(inputs, AttentionPooling(2, name="pool")(embedded))
    full = keras.ops.convert_to_numpy(model(ids))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model(ids[:, :3])), full, rtol=1e-6)
    model.save(tmp_path / "m.keras")
    restored = keras.models.load_model(tmp_path / "m.keras")
    assert restored.get_layer("pool").units == 2
    np.testing.assert_allclose(keras.ops.convert_to_numpy(restored(ids)), full, rtol=1e-6)
    with pytest.raises(ValueError, match="units"):
        AttentionPooling(-1)
