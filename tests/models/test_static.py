"""`kd_keras.models.static`: the static (bag-of-embeddings) student."""

import json

import keras
import numpy as np
import pytest

from kd_keras.models.static import build_static_encoder, sif_weights, token_counts


def test_sif_weights_follow_the_formula():
    counts = np.array([50, 0, 10, 40, 900])
    got = sif_weights(counts, a=0.01)
    p = counts / counts.sum()
    expected = 0.01 / (0.01 + p)
    expected[0] = 0.0
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert got[1] == 1.0 and got[4] < got[3] < got[2]  # rarer counts more


def test_token_counts_count_every_token_and_the_specials(make_tiny_teacher, tiny_vocabulary):
    preprocessor = make_tiny_teacher(tiny_vocabulary).preprocessor
    sentences = ["a b a", "c", "a"]
    counts = token_counts(preprocessor, iter(sentences), chunk=2)  # an iterator, two chunks
    index = {t: i for i, t in enumerate(tiny_vocabulary)}
    assert counts[index["a"]] == 3 and counts[index["b"]] == 1 and counts[index["c"]] == 1
    assert counts[index["[CLS]"]] == 3 and counts[index["[SEP]"]] == 3
    assert counts.sum() == 5 + 6


def test_static_encoder_is_a_weighted_mean_and_a_projection(tmp_path):
    rng = np.random.default_rng(0)
    table = rng.normal(size=(12, 6)).astype(np.float32)
    weights = rng.uniform(0.1, 1.0, size=12).astype(np.float32)
    encoder = build_static_encoder(
        12, 6, output_dim=4, embeddings_initializer=table, token_weights=weights
    )
    ids = np.array([[3, 5, 7, 0, 0], [2, 0, 0, 0, 0]], np.int32)
    kernel, bias = encoder.get_layer("projection").get_weights()
    expected = []
    for row in ids:
        real = row[row != 0]
        mean = (table[real] * weights[real, None]).mean(axis=0)
        out = mean @ kernel + bias
        expected.append(out / np.linalg.norm(out))
    np.testing.assert_allclose(encoder.predict(ids, verbose=0), np.stack(expected), atol=1e-5)

    # Padding never matters; the model reloads as it was.
    padded = np.pad(ids, ((0, 0), (0, 3)))
    np.testing.assert_allclose(encoder.predict(padded, verbose=0), np.stack(expected), atol=1e-5)
    encoder.save(tmp_path / "static.keras")
    again = keras.saving.load_model(tmp_path / "static.keras")
    np.testing.assert_allclose(again.predict(ids, verbose=0), np.stack(expected), atol=1e-5)


def test_token_weights_need_a_table_of_their_size():
    with pytest.raises(ValueError, match="array `embeddings_initializer`"):
        build_static_encoder(12, 6, token_weights=np.ones(12))
    with pytest.raises(ValueError, match="expected 12"):
        build_static_encoder(
            12, 6, embeddings_initializer=np.ones((12, 6)), token_weights=np.ones(5)
        )


def test_the_weighted_table_is_saved_in_the_weights_never_in_the_config(tmp_path):
    rng = np.random.default_rng(2)
    table = rng.normal(size=(4000, 24)).astype(np.float32)
    weights = rng.uniform(0.1, 1.0, size=4000).astype(np.float32)
    encoder = build_static_encoder(
        4000, 24, output_dim=8, embeddings_initializer=table, token_weights=weights
    )
    np.testing.assert_array_equal(
        encoder.get_layer("token_embedding").embeddings.numpy(), table * weights[:, None]
    )
    assert len(json.dumps(encoder.get_config())) < 10_000  # neither array as text
    path = tmp_path / "static.keras"
    encoder.save(path)
    weight_bytes = sum(w.numpy().nbytes for w in encoder.weights)
    assert weight_bytes < path.stat().st_size < 1.5 * weight_bytes
