"""The SST-2 classification recipe (`kd_keras.recipes.classification`) and its BiLSTM."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from kd_keras.data import data_path, read_sst2
from kd_keras.models.classifier import build_bilstm_classifier
from kd_keras.models.pooling import MaskedPooling
from kd_keras.recipes.classification import Config, job
from kd_keras.serving import load_text_export
from kd_keras.storage import read_arrays


def test_bilstm_classifier_masks_padding():
    keras.utils.set_random_seed(0)
    model = build_bilstm_classifier(50, embedding_dim=8, hidden_dim=4, dense_dim=8, dropout=0.0)
    ids = np.array([[5, 6, 7, 0, 0]], "int32")
    padded_more = np.array([[5, 6, 7, 0, 0, 0, 0, 0]], "int32")
    np.testing.assert_allclose(model(ids), model(padded_more), rtol=1e-5, atol=1e-6)
    seq = np.array([[[1.0, -5.0], [3.0, -7.0], [9.0, 9.0]]], "float32")
    pooled = MaskedPooling(mode="max")(seq, np.array([[1, 1, 0]]))
    np.testing.assert_array_equal(pooled, [[3.0, -5.0]])


def test_fine_tuned_encoder_returns_the_features_under_the_logits(
    make_tiny_teacher, minilm_vocabulary
):
    from kd_keras.models.heads import build_classifier

    tiny = make_tiny_teacher(minilm_vocabulary, num_layers=1, sequence_length=16)
    encoder, preprocessor = tiny.encoder, tiny.preprocessor
    classifier = build_classifier(encoder, 2, pooling="mean")
    features = job.fine_tuned_encoder(classifier, preprocessor)
    assert features.preprocessor is preprocessor
    x = preprocessor.pack(preprocessor.tokenize(["a fine film .", "dull"]))
    x = {k: v.numpy() for k, v in x.items()}
    assert x["padding_mask"][1].sum() < x["padding_mask"][0].sum()  # some padding
    sequence = encoder(x)["sequence_output"].numpy()
    mask = x["padding_mask"][..., None].astype("float32")
    expected = (sequence * mask).sum(axis=1) / mask.sum(axis=1)  # masked mean, not normalized
    got = features(x).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)
    kernel, bias = classifier.get_layer("logits").get_weights()
    np.testing.assert_allclose(got @ kernel + bias, classifier(x).numpy(), atol=1e-5)
    with pytest.raises(ValueError, match="one BERT encoder"):
        job.fine_tuned_encoder(keras.Sequential([keras.layers.Dense(2)]), preprocessor)


@pytest.mark.slow
def test_distill_sst2_recipe_end_to_end(
    tmp_path, finite_numbers, make_tiny_teacher, minilm_vocabulary
):
    from kd_keras.models.teachers import Teacher

    tiny = make_tiny_teacher(minilm_vocabulary, num_layers=1, sequence_length=32)
    tiny.save(tmp_path / "tiny_teacher.keras")
    run_dir = tmp_path / "sst2"
    metrics = job.run(
        Config(
            run_dir=str(run_dir), teacher=str(tmp_path / "tiny_teacher.keras"),
            sequence_length=32, teacher_train_limit=64, train_limit=48,
            teacher_learning_rate=1e-2,
            augment_per_sentence=1, epochs=1, eval_limit=40,
            embedding_dim=8, hidden_dim=4, dense_dim=8,
            throughput_seconds=0.05, fit_verbose=0,
        )
    )  # fmt: skip
    for name in (
        "metrics.json",
        "report.md",
        "cache/teacher_classifier.keras",
        "teacher_export/saved_model.pb",
        "baseline_export/saved_model.pb",
        "student_export/saved_model.pb",
    ):
        assert (run_dir / name).is_file(), name
    assert all(math.isfinite(x) for x in finite_numbers(metrics))
    assert metrics["transfer_set"]["gold"] == 48 and metrics["transfer_set"]["augmented"] > 0
    # The labels-only student's embeddings come from the encoder before
    # fine-tuning, the distilled student's from the fine-tuned one.
    from kd_keras.teacher_pass import vocabulary_token_outputs

    before = keras.saving.load_model(tmp_path / "tiny_teacher.keras")
    _, cache = read_arrays(run_dir / "cache" / "vocabulary_pretrained.npz")
    np.testing.assert_allclose(cache["outputs"], vocabulary_token_outputs(before), atol=1e-5)
    classifier = keras.saving.load_model(run_dir / "cache" / "teacher_classifier.keras")
    after = vocabulary_token_outputs(job.fine_tuned_encoder(classifier, before.preprocessor))
    _, cache = read_arrays(run_dir / "cache" / "vocabulary_fine_tuned.npz")
    np.testing.assert_allclose(cache["outputs"], after, atol=1e-5)
    unchanged = Teacher(before.encoder, before.preprocessor, normalize=False)
    assert np.abs(after - vocabulary_token_outputs(unchanged)).max() > 1e-3  # it was fine-tuned
    # Re-evaluate the exported student on the dev sentences.
    sentences, labels = read_sst2(data_path("sst2", "sentiment-dev"), limit=40)
    classify = load_text_export(run_dir / "student_export").signatures["classify"]
    predicted = classify(sentences=tf.constant(sentences))["label"].numpy()
    accuracy = 100.0 * np.mean(predicted == labels)
    assert accuracy == pytest.approx(metrics["distilled"]["dev_accuracy"])
