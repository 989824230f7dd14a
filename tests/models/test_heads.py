"""Heads: pair similarity, two-class logits, the pair model, a fine-tunable classifier."""

import keras
import numpy as np
import pytest

from kd_keras import Distiller
from kd_keras.models.heads import (
    CosineSimilarity,
    SimilarityLogits,
    build_classifier,
    build_pair_model,
    build_sentence_embedder,
    cosine_similarity,
    similarity_logits,
)


def random_inputs(batch=4, length=7, vocabulary_size=40, seed=0):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, length + 1, size=batch)
    lengths[0] = length
    mask = (np.arange(length)[None] < lengths[:, None]).astype("int32")
    ids = rng.integers(5, vocabulary_size, size=(batch, length)).astype("int32") * mask
    return {"token_ids": ids, "segment_ids": np.zeros_like(ids), "padding_mask": mask}


def test_cosine_and_similarity_logits():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(2, 6, 8)).astype("float32")
    cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
    got = keras.ops.convert_to_numpy(CosineSimilarity()(a, b))
    np.testing.assert_allclose(got, cos, rtol=1e-5, atol=1e-6)
    logits = keras.ops.convert_to_numpy(SimilarityLogits(scale=5.0, threshold=0.2)(cos))
    np.testing.assert_allclose(logits, np.stack([5 * (0.2 - cos), 5 * (cos - 0.2)], -1), rtol=1e-5)
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    np.testing.assert_allclose(probs[:, 1], 1 / (1 + np.exp(-10 * (cos - 0.2))), rtol=1e-5)
    # The layers are the functions (which the teacher-side targets and the
    # export use too); a zero vector scores 0, never NaN.
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(cosine_similarity(a, b)), got)
    zero = np.zeros((1, 8), "float32")
    assert keras.ops.convert_to_numpy(cosine_similarity(zero, a[:1]))[0] == 0.0
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(similarity_logits(cos[:, None], 5.0, 0.2)), logits
    )


def test_pair_model_outputs_and_shared_weights(make_bert_encoder):
    encoder = make_bert_encoder(vocabulary_size=40)
    embedder = build_sentence_embedder(encoder, pooling="mean", normalize=True)
    model = build_pair_model(embedder, ("embeddings", "score", "logits"), scale=3.0)
    first, second = random_inputs(seed=1), random_inputs(seed=2)
    out = model({"sentence_a": first, "sentence_b": second})
    ea = keras.ops.convert_to_numpy(embedder(first))
    eb = keras.ops.convert_to_numpy(embedder(second))
    cos = (ea * eb).sum(-1)  # both unit length
    np.testing.assert_allclose(out["score"][:, 0], cos, atol=1e-5)
    np.testing.assert_allclose(out["logits"][:, 1], 3.0 * cos, atol=1e-5)
    np.testing.assert_allclose(out["embeddings"], np.stack([ea, eb], axis=1), atol=1e-6)
    # One copy of the encoder weights, not two.
    assert len(model.trainable_weights) == len(encoder.trainable_weights)
    # One output name gives that tensor alone: the cosine score [B, 1].
    score = build_pair_model(embedder)({"sentence_a": first, "sentence_b": second})
    np.testing.assert_allclose(score, out["score"], atol=1e-6)
    with pytest.raises(ValueError, match="outputs"):
        build_pair_model(embedder, ("score", "cosine"))


@pytest.mark.slow
def test_classifier_fine_tunes_then_teaches_frozen(tmp_path, make_bert_encoder):
    # Label: does the sentence contain token 7?
    rng = np.random.default_rng(0)
    n, length = 256, 8
    ids = rng.integers(8, 40, size=(n, length)).astype("int32")
    labels = rng.integers(0, 2, size=n)
    ids[labels == 1, rng.integers(1, length, size=(labels == 1).sum())] = 7
    ids[:, 0] = 2
    x = {"token_ids": ids, "segment_ids": np.zeros_like(ids), "padding_mask": np.ones_like(ids)}

    teacher = build_classifier(make_bert_encoder(vocabulary_size=40), num_classes=2, dropout=0.0)
    teacher.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    before = teacher.evaluate(x, labels, verbose=0)[1]
    teacher.fit(x, labels, epochs=5, batch_size=32, verbose=0)
    after = teacher.evaluate(x, labels, verbose=0)[1]
    assert after > 0.9 > before

    path = tmp_path / "classifier.keras"
    teacher.save(path)
    reloaded = keras.saving.load_model(path)
    np.testing.assert_allclose(reloaded.predict(x, verbose=0), teacher.predict(x, verbose=0))

    # As a teacher inside Distiller it stays frozen.
    weights = [w.copy() for w in teacher.get_weights()]
    student = build_classifier(make_bert_encoder(vocabulary_size=40, seed=1), num_classes=2)
    distiller = Distiller(teacher, student)
    distiller.compile(
        optimizer="adam",
        student_loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        distillation_loss="forward_kl",
        alpha=0.5,
        temperature=2.0,
    )
    student_before = [w.copy() for w in student.get_weights()]
    distiller.fit(x, labels, epochs=1, batch_size=64, verbose=0)
    assert teacher.trainable is False
    for a, b in zip(weights, teacher.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert any(
        not np.array_equal(a, b) for a, b in zip(student_before, student.get_weights(), strict=True)
    )
