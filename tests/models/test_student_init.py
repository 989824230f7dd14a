"""Token-embedding initializations of word-level students: PCA, vocabulary distillation, cache."""

import keras
import numpy as np
import pytest

from kd_keras import teacher_pass
from kd_keras.models.bert_tokenizer import BertPreprocessor
from kd_keras.models.bilstm import build_bilstm_encoder
from kd_keras.models.student_init import (
    pca_project,
    student_embeddings,
    teacher_token_embeddings,
    vocabulary_distillation_embeddings,
)
from kd_keras.models.teachers import Teacher
from kd_keras.storage import CacheError
from kd_keras.teacher_pass import run_teacher, vocabulary_outputs, vocabulary_token_outputs

VOCAB = (
    ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    + list("abcdefghijklmnopqrstuvwxyz")
    + ["##" + c for c in "abcdefghijklmnopqrs"]
)


@pytest.fixture(scope="module")
def make_teacher(make_tiny_teacher):
    # Spread weights: BERT's initializer (stddev 0.02) makes all token outputs
    # nearly equal; the PCA needs clearly separated axes.
    def make(seed=0, vocabulary=VOCAB, hidden_dim=16):
        return make_tiny_teacher(vocabulary, seed=seed, hidden_dim=hidden_dim, spread=0.3)

    return make


@pytest.fixture(scope="module")
def teacher(make_teacher):
    return make_teacher()


def reference_pca(matrix, embedding_dim, pad_row=0):
    """NumPy PCA by SVD of the centred non-[PAD] rows (the module uses eigh)."""
    matrix = np.asarray(matrix, np.float64)
    rows = np.delete(matrix, pad_row, axis=0)
    mean = rows.mean(axis=0)
    _, singular_values, axes = np.linalg.svd(rows - mean, full_matrices=False)
    projected = (matrix - mean) @ axes[:embedding_dim].T
    projected[pad_row] = 0.0
    return projected, singular_values


def assert_equal_up_to_column_signs(actual, expected, atol=1e-4):
    assert actual.shape == expected.shape
    for j in range(expected.shape[1]):
        sign = 1.0 if np.dot(actual[:, j], expected[:, j]) >= 0 else -1.0
        np.testing.assert_allclose(actual[:, j], sign * expected[:, j], atol=atol)


def by_hand(teacher, token_ids):
    """The teacher on `[CLS] token [SEP]` for each token, in one eager call."""
    preprocessor = teacher.preprocessor
    rows = [[preprocessor.cls_token_id, i, preprocessor.sep_token_id] for i in token_ids]
    inputs = {
        "token_ids": np.array(rows, "int32"),
        "segment_ids": np.zeros((len(rows), 3), "int32"),
        "padding_mask": np.ones((len(rows), 3), "int32"),
    }
    return keras.ops.convert_to_numpy(teacher(inputs))


def test_teacher_token_embeddings_match_numpy_pca(teacher):
    embeddings = teacher_token_embeddings(teacher, 5)
    matrix = teacher.encoder.token_embedding.embeddings.numpy()
    expected, singular_values = reference_pca(matrix, 5)

    assert embeddings.shape == (len(VOCAB), 5) and embeddings.dtype == np.float32
    assert not embeddings[0].any()
    assert_equal_up_to_column_signs(embeddings, expected)
    # Columns are centred and ordered by explained variance, as the SVD says.
    variances = np.var(embeddings[1:], axis=0)
    np.testing.assert_allclose(embeddings[1:].mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(variances, singular_values[:5] ** 2 / (len(VOCAB) - 1), rtol=1e-4)
    assert np.all(np.diff(variances) < 0)


def test_pca_fixes_axis_signs(teacher):
    matrix = teacher.encoder.token_embedding.embeddings.numpy().astype(np.float64)
    projected = pca_project(matrix, 4, exclude_rows=(0,))
    # Recover the axes (loadings) from the coordinates: projected = centred @ axes.T.
    rows = matrix[1:]
    axes, *_ = np.linalg.lstsq(rows - rows.mean(axis=0), projected[1:], rcond=None)
    np.testing.assert_allclose(axes.T @ axes, np.eye(4), atol=1e-4)  # orthonormal axes
    largest = axes[np.argmax(np.abs(axes), axis=0), np.arange(4)]
    assert np.all(largest > 0)
    np.testing.assert_array_equal(projected, pca_project(matrix, 4, exclude_rows=(0,)))


def test_wide_projection_is_a_lossless_rotation_padded_with_zeros(teacher):
    embeddings = teacher_token_embeddings(teacher, 20)  # teacher width 16
    matrix = teacher.encoder.token_embedding.embeddings.numpy()[1:]

    assert embeddings.shape == (len(VOCAB), 20)
    assert not embeddings[:, 16:].any() and not embeddings[0].any()
    kept = embeddings[1:, :16]
    distances = np.linalg.norm(kept[:, None] - kept[None], axis=-1)
    expected = np.linalg.norm(matrix[:, None] - matrix[None], axis=-1)
    np.testing.assert_allclose(distances, expected, atol=1e-4)


def test_pca_of_rank_deficient_rows_zeroes_missing_axes():
    rng = np.random.default_rng(1)
    matrix = rng.normal(size=(30, 2)) @ rng.normal(size=(2, 6)) + rng.normal(size=6)
    projected = pca_project(matrix, 4)
    expected, _ = reference_pca(np.vstack([np.zeros(6), matrix]), 2)
    assert_equal_up_to_column_signs(projected[:, :2], expected[1:])
    assert not projected[:, 2:].any()


def test_pca_rejects_bad_arguments():
    with pytest.raises(ValueError, match="embedding_dim"):
        pca_project(np.ones((4, 3)), 0)
    with pytest.raises(ValueError, match="2D"):
        pca_project(np.ones(4), 2)


def test_vocabulary_token_outputs_equal_the_teacher_run_by_hand(teacher):
    outputs = vocabulary_token_outputs(teacher, batch_size=7)  # last batch is partial
    assert outputs.shape == (len(VOCAB), 16) and outputs.dtype == np.float32
    token_ids = [0, 2, 9, 30, len(VOCAB) - 1]
    np.testing.assert_allclose(outputs[token_ids], by_hand(teacher, token_ids), atol=1e-5)
    # A word that is one token: the whole string pipeline gives the same vector.
    words = ["a", "q", "z"]
    ids = [VOCAB.index(w) for w in words]
    np.testing.assert_allclose(outputs[ids], run_teacher(teacher, words), atol=1e-5)
    # Tokens do differ (the check above cannot pass with a constant output).
    assert np.abs(outputs[ids[0]] - outputs[ids[1]]).max() > 1e-2


def test_vocabulary_distillation_is_pca_of_the_per_token_outputs(teacher):
    outputs = vocabulary_token_outputs(teacher, batch_size=16)
    embeddings = vocabulary_distillation_embeddings(outputs, 6, pad_token_id=0)
    manual = by_hand(teacher, range(len(VOCAB)))
    expected, _ = reference_pca(manual, 6)

    assert embeddings.shape == (len(VOCAB), 6)
    assert not embeddings[0].any()
    assert_equal_up_to_column_signs(embeddings, expected, atol=1e-4)


def test_vocabulary_cache_is_reused_and_rebuilt_on_change(tmp_path, monkeypatch, make_teacher):
    teacher = make_teacher(seed=3)
    calls = []
    compute = teacher_pass.vocabulary_token_outputs

    def counting(*args, **kwargs):
        calls.append(1)
        return compute(*args, **kwargs)

    monkeypatch.setattr(teacher_pass, "vocabulary_token_outputs", counting)
    cache = tmp_path / "cache" / "vocab.npz"

    first = vocabulary_outputs(teacher, cache)
    assert len(calls) == 1 and cache.is_file()
    assert [p.name for p in cache.parent.iterdir()] == ["vocab.npz"]  # no temporary left

    # Same teacher: reused (the raw outputs, which serve every width).
    np.testing.assert_array_equal(vocabulary_outputs(teacher, str(cache)), first)
    assert len(calls) == 1

    # New weights: recomputed, and the result is that of the new teacher.
    variable = teacher.encoder.transformer_layers[1]._feedforward_output_dense.kernel
    variable.assign(variable.numpy() * 2.0)
    changed = vocabulary_outputs(teacher, cache)
    assert len(calls) == 2
    assert np.abs(changed - first).max() > 1e-3
    np.testing.assert_allclose(changed, vocabulary_token_outputs(teacher), atol=1e-6)
    vocabulary_outputs(teacher, cache)
    assert len(calls) == 2

    # Same weights, another vocabulary (two tokens swapped): recomputed.
    swapped = list(VOCAB)
    swapped[5], swapped[6] = swapped[6], swapped[5]
    other = Teacher(teacher.encoder, BertPreprocessor(swapped, sequence_length=16))
    vocabulary_outputs(other, cache)
    assert len(calls) == 3

    # A damaged file is an error that names it, neither trusted nor silently replaced.
    cache.write_bytes(b"not an npz")
    with pytest.raises(CacheError, match=r"vocab\.npz .*Delete it"):
        vocabulary_outputs(other, cache)
    assert cache.read_bytes() == b"not an npz" and len(calls) == 3
    cache.unlink()
    vocabulary_outputs(other, cache)
    assert len(calls) == 4


def test_student_embeddings_dispatch(teacher):
    assert student_embeddings("random", teacher, 8) is None
    np.testing.assert_array_equal(
        student_embeddings("teacher", teacher, 8), teacher_token_embeddings(teacher, 8)
    )
    outputs = vocabulary_token_outputs(teacher)
    vocab = student_embeddings("vocab", teacher, 8, token_outputs=outputs)
    np.testing.assert_array_equal(vocab, vocabulary_distillation_embeddings(outputs, 8))
    with pytest.raises(ValueError, match="one of"):
        student_embeddings("glove", teacher, 8)
    with pytest.raises(ValueError, match="needs a teacher"):
        student_embeddings("vocab", None, 8)
    with pytest.raises(ValueError, match="token_outputs"):
        student_embeddings("vocab", teacher, 8)

    # The array initializes the BiLSTM student's embedding table as it is.
    student = build_bilstm_encoder(len(VOCAB), embedding_dim=8, embeddings_initializer=vocab)
    table = student.get_layer("token_embedding").embeddings.numpy()
    np.testing.assert_array_equal(table, vocab)


def test_vocabulary_distillation_needs_a_pooled_teacher_with_a_preprocessor(teacher):
    bare = Teacher(teacher.encoder, None)
    with pytest.raises(ValueError, match="preprocessor"):
        vocabulary_token_outputs(bare)
    unpooled = Teacher(teacher.encoder, teacher.preprocessor, pooling=None)
    with pytest.raises(ValueError, match="one embedding per input"):
        vocabulary_token_outputs(unpooled)
