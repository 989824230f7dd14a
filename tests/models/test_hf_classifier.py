"""`load_hf_classifier`: a Hugging Face `BertForSequenceClassification` folder, exactly.

The fixture `tests/fixtures/hf_bert_classifier` is a tiny random classifier
saved by `transformers` with its logits on fixed sentences
(`scripts/make_classifier_reference.py`); neither torch nor transformers is
needed here.
"""

import json
import pathlib
import shutil

import numpy as np
import pytest

from kd_keras.models.teachers import is_hf_classifier, load_hf_classifier, load_teacher

FIXTURE = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "hf_bert_classifier"
REFERENCE = json.loads((FIXTURE / "reference.json").read_text(encoding="utf-8"))


def _logits(classifier, preprocessor, sentences):
    packed = preprocessor.pack(preprocessor.tokenize(sentences))
    packed = {key: value.numpy() for key, value in packed.items()}
    rows = zip(packed["token_ids"], packed["padding_mask"], strict=True)
    ids = [list(row[mask == 1]) for row, mask in rows]
    return ids, classifier(packed).numpy()


@pytest.mark.parametrize("weights", ["model.safetensors", "pytorch_model.bin"])
def test_logits_match_transformers(tmp_path, weights):
    folder = tmp_path / "classifier"
    shutil.copytree(FIXTURE, folder)
    if weights == "pytorch_model.bin":
        (folder / "model.safetensors").unlink()  # the restricted PyTorch reader
    else:
        (folder / "pytorch_model.bin").unlink()
    classifier, preprocessor, names = load_hf_classifier(folder, sequence_length=64)
    assert names == REFERENCE["labels"] == ["negative", "neutral", "positive"]
    ids, logits = _logits(classifier, preprocessor, REFERENCE["sentences"])
    assert ids == REFERENCE["token_ids"]
    expected = np.asarray(REFERENCE["logits"], "float32")
    assert len(set(expected.argmax(axis=1))) == 3  # a fixture that tells classes apart
    np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=0)
    # Batched with padding or one by one: the same logits.
    _, alone = _logits(classifier, preprocessor, REFERENCE["sentences"][3:4])
    np.testing.assert_allclose(alone[0], expected[3], atol=1e-4, rtol=0)


def test_is_hf_classifier_and_the_encoder_alone(tmp_path):
    assert is_hf_classifier(FIXTURE)
    assert not is_hf_classifier(tmp_path)
    # As a teacher of sentence embeddings, the same folder gives its encoder.
    teacher = load_teacher(str(FIXTURE), sequence_length=64)
    classifier, _, _ = load_hf_classifier(FIXTURE)
    (encoder,) = [layer for layer in classifier.layers if hasattr(layer, "token_embedding")]
    for ours, theirs in zip(teacher.encoder.weights, encoder.weights, strict=True):
        np.testing.assert_array_equal(ours.numpy(), theirs.numpy())


def _edited(tmp_path, **changes):
    folder = tmp_path / "edited"
    shutil.copytree(FIXTURE, folder)
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return folder


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"architectures": ["RobertaForSequenceClassification"]}, "only ['BertForSequenceClass"),
        ({"problem_type": "multi_label_classification"}, "problem_type 'multi_label_classif"),
        ({"id2label": {"0": "a", "2": "b", "1": "c", "3": "d"}}, "expected classifier.weight"),
        ({"id2label": {"0": "a", "5": "b"}}, "id2label keys must be 0 ... 1"),
        ({"id2label": {}}, "no id2label"),
    ],
)
def test_bad_folders_are_one_line_errors(tmp_path, changes, message):
    with pytest.raises(ValueError) as info:
        load_hf_classifier(_edited(tmp_path, **changes))
    assert message in str(info.value) and "\n" not in str(info.value)
