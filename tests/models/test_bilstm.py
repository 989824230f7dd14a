"""BiLSTM students and pair models against NumPy."""

import json

import keras
import numpy as np
import pytest

from kd_keras.models.bilstm import build_bilstm_encoder, build_siamese_bilstm
from kd_keras.models.heads import build_pair_model
from kd_keras.models.tiny_bert import build_tiny_bert_student


def test_bilstm_encoder_ignores_padding():
    encoder = build_bilstm_encoder(50, embedding_dim=8, hidden_dim=6, output_dim=5, dropout=0.0)
    ids = np.array([[4, 9, 13, 0, 0, 0]], "int32")
    short = encoder(ids[:, :3]).numpy()
    padded = encoder(ids).numpy()
    assert padded.shape == (1, 5)
    np.testing.assert_allclose(padded, short, atol=1e-6)


def test_stacked_bilstm_with_attention_pooling(tmp_path):
    encoder = build_bilstm_encoder(
        50, 8, 6, output_dim=5, dropout=0.0, num_layers=2, pooling="attention"
    )
    names = [layer.name for layer in encoder.layers]
    assert "bilstm" in names and "bilstm_2" in names
    # The second layer reads the first one's states (2 x 6 wide).
    assert encoder.get_layer("bilstm_2").forward_layer.cell.kernel.shape == (12, 24)
    ids = np.array([[4, 9, 13, 0, 0, 0], [5, 0, 0, 0, 0, 0]], "int32")
    full = encoder(ids).numpy()
    np.testing.assert_allclose(encoder(ids[:, :3]).numpy(), full, atol=1e-6)
    # Attention pooling of the last layer's states, by hand.
    states = keras.Model(encoder.input, encoder.get_layer("bilstm_2").output)(ids).numpy()
    pool = encoder.get_layer("pooling")
    weights = np.tanh(states @ pool.hidden.kernel.numpy() + pool.hidden.bias.numpy())
    e = np.where(ids > 0, weights @ pool.score.kernel.numpy()[:, 0], -np.inf)
    a = np.exp(e - e.max(1, keepdims=True))
    pooled = ((a / a.sum(1, keepdims=True))[..., None] * states).sum(1)
    projection = encoder.get_layer("projection")
    want = pooled @ projection.kernel.numpy() + projection.bias.numpy()
    np.testing.assert_allclose(full, want, rtol=1e-4, atol=1e-5)
    encoder.save(tmp_path / "e.keras")
    np.testing.assert_allclose(keras.models.load_model(tmp_path / "e.keras")(ids), full, atol=1e-6)
    with pytest.raises(ValueError, match="pooling"):
        build_bilstm_encoder(50, pooling="max")
    with pytest.raises(ValueError, match="num_layers"):
        build_bilstm_encoder(50, num_layers=0)


def test_siamese_bilstm_scores_pairs_with_one_shared_tower():
    model = build_siamese_bilstm(50, embedding_dim=8, hidden_dim=6, dropout=0.0)
    a = np.array([[4, 9, 13, 0], [7, 7, 0, 0]], "int32")
    b = np.array([[4, 9, 13, 0], [3, 0, 0, 0]], "int32")
    score = model({"sentence_a": a, "sentence_b": b}).numpy()
    assert score.shape == (2, 1)
    assert abs(score[0, 0] - 1.0) < 1e-5  # identical sentences
    tower = model.get_layer("bilstm_encoder")
    ea, eb = tower(a).numpy(), tower(b).numpy()
    want = (ea * eb).sum(-1) / np.linalg.norm(ea, axis=-1) / np.linalg.norm(eb, axis=-1)
    np.testing.assert_allclose(score[:, 0], want, rtol=1e-5)
    assert len(model.trainable_weights) == len(tower.trainable_weights)


def test_embedding_initializer_from_an_array():
    table = np.arange(50 * 8, dtype="float32").reshape(50, 8) / 400
    encoder = build_bilstm_encoder(50, embedding_dim=8, hidden_dim=4, embeddings_initializer=table)
    np.testing.assert_array_equal(encoder.get_layer("token_embedding").embeddings.numpy(), table)


def test_an_array_initializer_gives_the_weights_of_a_constant_one():
    """Same initial weights, every layer, as the `Constant(table)` initializer it replaces."""
    table = np.random.default_rng(0).normal(size=(60, 8)).astype("float32")
    kwargs = dict(embedding_dim=8, hidden_dim=4, output_dim=3, embedding_skip=True)
    keras.utils.set_random_seed(7)
    got = build_bilstm_encoder(60, embeddings_initializer=table, **kwargs)
    keras.utils.set_random_seed(7)
    constant = keras.initializers.Constant(table)
    want = build_bilstm_encoder(60, embeddings_initializer=constant, **kwargs)
    assert len(got.weights) == len(want.weights) == 9
    for a, b in zip(got.weights, want.weights, strict=True):
        assert a.name == b.name
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_the_embedding_table_is_saved_in_the_weights_never_in_the_config(tmp_path):
    table = np.random.default_rng(1).normal(size=(3000, 32)).astype("float32")
    encoder = build_bilstm_encoder(3000, 32, hidden_dim=4, embeddings_initializer=table)
    config = json.dumps(encoder.get_config())
    assert len(config) < 10_000  # the table as text would be about 2 MB
    path = tmp_path / "bilstm.keras"
    encoder.save(path)
    weight_bytes = sum(w.numpy().nbytes for w in encoder.weights)
    assert table.nbytes <= weight_bytes < path.stat().st_size < 1.5 * weight_bytes

    reloaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(reloaded.get_layer("token_embedding").embeddings.numpy(), table)
    ids = np.array([[5, 2999, 17, 0], [1, 0, 0, 0]], "int32")
    np.testing.assert_allclose(reloaded(ids).numpy(), encoder(ids).numpy(), atol=1e-6)


def test_tiny_bert_pair_model_saves_and_reloads(tmp_path):
    encoder = build_tiny_bert_student(
        vocabulary_size=40,
        num_layers=2,
        hidden_dim=16,
        num_heads=2,
        intermediate_dim=32,
        max_sequence_length=16,
        normalize=False,
    )
    model = build_pair_model(encoder)
    x = {
        key: {
            "token_ids": np.array([[2, 5, 6, 3, 0]], "int32"),
            "segment_ids": np.zeros((1, 5), "int32"),
            "padding_mask": np.array([[1, 1, 1, 1, 0]], "int32"),
        }
        for key in ("sentence_a", "sentence_b")
    }
    score = model(x).numpy()
    np.testing.assert_allclose(score, [[1.0]], atol=1e-5)
    path = str(tmp_path / "pair.keras")
    model.save(path)
    reloaded = keras.saving.load_model(path)
    x["sentence_b"]["token_ids"] = np.array([[2, 9, 11, 3, 0]], "int32")
    np.testing.assert_allclose(reloaded(x).numpy(), model(x).numpy(), atol=1e-6)
