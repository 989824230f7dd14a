"""int8 raw-text exports (`quantize="int8"`, `kd-keras export --quantize int8`) of every kind.

For a tiny random teacher, a siamese BiLSTM, a static student, a tiny BERT
student and a model of one's own (a classifier): the int8 export has the float32
export's signatures, gives outputs close to its, records what was quantized, and
leaves the model given untouched.

Tolerance: weights only are rounded, each to within half a step of its own
output channel's scale (`max |w| / 127`), so a weight moves by at most 0.4% of
its channel's largest weight and the errors of a layer's sum largely cancel.
Embeddings then agree to cosine >= 0.999 (these models measure >= 0.9999; the
real all-MiniLM-L6-v2 >= 0.999 over 256 STS-B sentences), scores and
probabilities to 1e-2.
"""

import json
import re

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_text  # noqa: F401  (registers the tokenizer ops for tf.saved_model.load)

import kd_keras  # noqa: F401  (registers the custom objects for the .keras round trip)
from kd_keras import cli, serving
from kd_keras.models.bert_tokenizer import BertPreprocessor
from kd_keras.models.bilstm import build_siamese_bilstm
from kd_keras.models.static import build_static_encoder
from kd_keras.models.tiny_bert import build_tiny_bert_student

COSINE = 0.999
SCORE_TOLERANCE = 1e-2
LENGTH = 16
SENTENCES = ["a b c", "the cat sat on the mat", "", "z y x w v u t", "hello world", "q"]


def _cosines(a, b):
    return np.sum(a * b, -1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


def _own_classifier(vocabulary_size):
    """A model of one's own: embedding, a convolution (stays float32), softmax head."""
    ids = keras.Input(shape=(None,), dtype="int32", name="token_ids")
    x = keras.layers.Embedding(vocabulary_size, 8, name="table")(ids)
    x = keras.layers.Conv1D(8, 3, padding="same", activation="relu", name="conv")(x)
    x = keras.layers.GlobalMaxPooling1D(name="pool")(x)
    return keras.Model(ids, keras.layers.Dense(3, activation="softmax", name="classes")(x))


@pytest.fixture(scope="module")
def preprocessor(tiny_vocabulary):
    return BertPreprocessor(tiny_vocabulary, sequence_length=LENGTH)


def _build(kind, vocabulary_size, make_tiny_teacher):
    """The model of one kind, seeded."""
    keras.utils.set_random_seed(7)
    if kind == "teacher":
        return make_tiny_teacher(hidden_dim=8, intermediate_dim=16, sequence_length=LENGTH)
    if kind == "bilstm":
        return build_siamese_bilstm(vocabulary_size, embedding_dim=8, hidden_dim=4, output_dim=6)
    if kind == "static":
        return build_static_encoder(vocabulary_size, embedding_dim=8, output_dim=6)
    if kind == "tiny_bert":
        return build_tiny_bert_student(
            vocabulary_size=vocabulary_size,
            num_layers=1,
            num_heads=2,
            hidden_dim=8,
            intermediate_dim=8,
            max_sequence_length=LENGTH,
        )
    return _own_classifier(vocabulary_size)


# Per kind: the export kind, some layers that must be int8, some that must stay float32.
KINDS = {
    "teacher": (
        "encoder",
        {"token_embedding", "transformer_layer_0/self_attention_layer/query", "pooled_dense"},
        {"position_embedding", "embeddings_layer_norm"},
    ),
    "bilstm": ("pair", {"token_embedding", "projection"}, {"forward_lstm/lstm_cell"}),
    "static": ("encoder", {"token_embedding", "projection"}, set()),
    "tiny_bert": (
        "encoder",
        {"token_embedding", "transformer_layer_0/feedforward_intermediate_dense"},
        {"transformer_layer_0/feedforward_layer_norm"},
    ),
    "own": ("classifier", {"table", "classes"}, {"conv"}),
}


def _export(kind, model, preprocessor, path, quantize):
    if kind == "teacher":
        return serving.export_teacher(model, path, quantize=quantize)
    return serving.export_student(model, path, preprocessor=preprocessor, quantize=quantize)


def _run_all(loaded, kind):
    strings = tf.constant(SENTENCES)
    if kind == "classifier":
        return {"probabilities": loaded.signatures["classify"](sentences=strings)["probabilities"]}
    return {
        "embedding": loaded.signatures["embed"](sentences=strings)["embedding"],
        "score": loaded.signatures["similarity"](sentence_a=strings, sentence_b=strings[::-1])[
            "score"
        ],
    }


def _metadata(path):
    return json.loads((path / serving.METADATA_PATH).read_text(encoding="utf-8"))


@pytest.mark.parametrize("name", list(KINDS))
def test_int8_export_matches_float32(name, preprocessor, make_tiny_teacher, tmp_path):
    kind, int8_layers, float_layers = KINDS[name]
    model = _build(name, len(preprocessor.vocabulary), make_tiny_teacher)
    before = [w.copy() for w in model.get_weights()]

    float_result = _export(name, model, preprocessor, tmp_path / "float32", None)
    result = _export(name, model, preprocessor, tmp_path / "int8", "int8")

    # The model given is untouched: same float32 weights, no layer quantized.
    for old, new in zip(before, model.get_weights(), strict=True):
        np.testing.assert_array_equal(old, new)
    assert {w.dtype for w in model.weights} == {"float32"}

    # Same kind and signatures (names, inputs, output dtypes and shapes).
    assert (result.kind, float_result.kind) == (kind, kind)
    assert result.signatures == float_result.signatures
    assert result.serving_default == float_result.serving_default
    metadata, float_metadata = _metadata(result.path), _metadata(float_result.path)
    assert metadata["signatures"] == float_metadata["signatures"]
    assert float_metadata["quantize"] is None and float_metadata["quantization"] is None
    assert metadata["quantize"] == "int8" == result.quantize
    quantization = metadata["quantization"]
    assert int8_layers <= set(quantization["layers"]) == set(result.quantized_layers)

    # Keras numbers unnamed layers per process ("forward_lstm_16"): compare without numbers.
    def unnumbered(names):
        return {re.sub(r"_\d+(?=/|$)", "", name) for name in names}

    assert unnumbered(float_layers) <= unnumbered(quantization["float32_layers"])
    assert not set(quantization["layers"]) & set(quantization["float32_layers"])
    assert "int8: " in result.summary() and "int8: " not in float_result.summary()
    # The int8 export stores int8 variables; the float32 one none.
    dtypes = tf.train.load_checkpoint(str(result.path / "variables" / "variables"))
    assert tf.int8 in set(dtypes.get_variable_to_dtype_map().values())

    # Outputs close to the float32 export's.
    got = _run_all(serving.load_text_export(result.path), kind)
    expected = _run_all(serving.load_text_export(float_result.path), kind)
    assert {k: v.dtype for k, v in got.items()} == {k: v.dtype for k, v in expected.items()}
    if kind == "classifier":
        np.testing.assert_allclose(
            got["probabilities"], expected["probabilities"], atol=SCORE_TOLERANCE
        )
    else:
        assert _cosines(got["embedding"].numpy(), expected["embedding"].numpy()).min() >= COSINE
        np.testing.assert_allclose(got["score"], expected["score"], atol=SCORE_TOLERANCE)


def test_cli_quantize_and_its_errors(preprocessor, make_tiny_teacher, tmp_path, capsys):
    teacher = make_tiny_teacher(hidden_dim=8, intermediate_dim=16, sequence_length=LENGTH)
    teacher.save(tmp_path / "teacher.keras")
    out = tmp_path / "teacher-int8"
    argv = ["export", "--teacher", str(tmp_path / "teacher.keras"), "--out", str(out)]
    assert cli.main([*argv, "--quantize", "int8"]) == 0
    assert "int8: 15 layers" in capsys.readouterr().out
    assert _metadata(out)["quantize"] == "int8"

    keras.utils.set_random_seed(1)
    student = build_static_encoder(len(preprocessor.vocabulary), embedding_dim=4, output_dim=4)
    path, _ = serving.save_student(student, tmp_path / "student.keras", preprocessor)
    argv = ["export", "--student", str(path), "--out", str(tmp_path / "student-int8")]
    assert cli.main([*argv, "--quantize", "int8"]) == 0
    assert _metadata(tmp_path / "student-int8")["quantization"]["layers"] == [
        "projection",
        "token_embedding",
    ]
    with pytest.raises(SystemExit) as exit_:  # argparse's own one-line usage error
        cli.main([*argv, "--quantize", "int4"])
    assert exit_.value.code == 2
    assert "--quantize: invalid choice: 'int4'" in capsys.readouterr().err
    # The Python API: one line, before anything is written.
    with pytest.raises(ValueError, match=r"Unsupported quantize='float8'"):
        serving.export_student(
            student, tmp_path / "x", preprocessor=preprocessor, quantize="float8"
        )
    with pytest.raises(ValueError, match=r"Unsupported quantize='int4'"):
        serving.export_teacher(teacher, tmp_path / "y", quantize="int4")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


@pytest.mark.slow
def test_default_teacher_int8_export_agrees_with_float32(tmp_path):
    """The real all-MiniLM-L6-v2: int8 embeddings against the in-memory float32 teacher."""
    from kd_keras.data import data_path, read_stsb
    from kd_keras.models.teachers import load_teacher
    from kd_keras.teacher_pass import run_teacher

    teacher = load_teacher("default")
    result = serving.export_teacher(teacher, tmp_path / "teacher-int8", quantize="int8")
    # 6 layers x (4 attention projections + 2 feedforward) + pooler + 2 tables.
    assert len(result.quantized_layers) == 39
    a, b, _ = read_stsb(data_path("stsb", "sts-test.csv"), limit=128)
    sentences = a + b
    loaded = serving.load_text_export(result.path)
    got = loaded.signatures["embed"](sentences=tf.constant(sentences))["embedding"].numpy()
    cosines = _cosines(got, run_teacher(teacher, sentences))
    assert cosines.min() >= COSINE, (cosines.mean(), cosines.min())
