"""The tiny BERT student: DistilBERT-style copies of teacher layers, widths, saving."""

import keras
import keras_hub
import numpy as np
import pytest

from kd_keras.models.bert_encoder import BertEncoder
from kd_keras.models.bert_tokenizer import BertPreprocessor
from kd_keras.models.teachers import Teacher
from kd_keras.models.tiny_bert import build_tiny_bert_student, default_layer_indices

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list("abcdefghijklmnopqrstuvwxyz")
SENTENCES = ["a b c", "hello world", "z", "the quick brown fox jumps over"]
CONFIG = dict(
    vocabulary_size=len(VOCAB),
    num_layers=4,
    num_heads=2,
    hidden_dim=16,
    intermediate_dim=32,
    max_sequence_length=32,
    dropout=0.0,
)


def spread_weights(encoder, seed):
    """Large random weights, so that each layer (and GELU's form) matters."""
    rng = np.random.default_rng(seed)
    for variable in encoder.weights:
        variable.assign(variable.numpy() + rng.normal(0.0, 0.3, variable.shape))


@pytest.fixture(scope="module")
def teacher(make_tiny_teacher):
    # Large random weights, so that each layer (and GELU's form) matters.
    return make_tiny_teacher(num_layers=4, sequence_length=32, spread=0.3)


@pytest.fixture(scope="module")
def inputs(teacher):
    return teacher.preprocessor(SENTENCES)


def encoder_of(student):
    return student.get_layer("tiny_bert_encoder")


def weights_of(layer):
    return [v.numpy() for v in layer.weights]


def assert_same_weights(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)


def test_default_layer_indices():
    assert default_layer_indices(6, 2) == [0, 5]
    assert default_layer_indices(6, 3) == [0, 3, 5]
    assert default_layer_indices(12, 6) == [0, 2, 4, 7, 9, 11]
    assert default_layer_indices(6, 1) == [0]
    assert default_layer_indices(4, 4) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="out of the teacher's 6"):
        default_layer_indices(6, 7)


def test_all_layers_copied_reproduce_the_teacher(teacher, inputs):
    student = build_tiny_bert_student(teacher, num_layers=4)
    expected = keras.ops.convert_to_numpy(teacher(inputs))
    np.testing.assert_allclose(student(inputs).numpy(), expected, atol=1e-5)
    assert encoder_of(student).hidden_activation == "gelu"

    # The check above can fail: the same layers in another order do not match.
    shuffled = build_tiny_bert_student(teacher, layer_indices=[1, 0, 2, 3])
    assert np.abs(shuffled(inputs).numpy() - expected).max() > 1e-2


def test_plain_keras_hub_teacher_keeps_its_tanh_gelu():
    keras.utils.set_random_seed(1)
    backbone = keras_hub.models.BertBackbone(**CONFIG)
    spread_weights(backbone, 1)
    teacher = Teacher(backbone, BertPreprocessor(VOCAB, sequence_length=32), normalize=True)
    inputs = teacher.preprocessor(SENTENCES)
    student = build_tiny_bert_student(teacher, num_layers=4)
    assert encoder_of(student).hidden_activation == "gelu_approximate"
    np.testing.assert_allclose(
        student(inputs).numpy(), keras.ops.convert_to_numpy(teacher(inputs)), atol=1e-5
    )


def test_layer_selection_copies_the_chosen_layers(teacher):
    source = teacher.encoder
    student = build_tiny_bert_student(teacher, layer_indices=[3, 1], max_sequence_length=8)
    encoder = encoder_of(student)

    assert len(encoder.transformer_layers) == 2
    assert_same_weights(
        weights_of(encoder.transformer_layers[0]), weights_of(source.transformer_layers[3])
    )
    assert_same_weights(
        weights_of(encoder.transformer_layers[1]), weights_of(source.transformer_layers[1])
    )
    for name in ("token_embedding", "segment_embedding", "embeddings_layer_norm", "pooled_dense"):
        assert_same_weights(weights_of(getattr(encoder, name)), weights_of(getattr(source, name)))
    np.testing.assert_array_equal(
        encoder.position_embedding.position_embeddings.numpy(),
        source.position_embedding.position_embeddings.numpy()[:8],
    )
    # Teacher layers differ, so the comparisons above identify the layer.
    first, other = (
        weights_of(source.transformer_layers[3]),
        weights_of(source.transformer_layers[0]),
    )
    assert not np.array_equal(first[0], other[0])

    default = encoder_of(build_tiny_bert_student(teacher, num_layers=2))
    assert_same_weights(
        weights_of(default.transformer_layers[1]), weights_of(source.transformer_layers[3])
    )


def test_other_widths_are_random_and_reject_layer_indices(teacher, inputs):
    with pytest.raises(ValueError, match="teacher's widths"):
        build_tiny_bert_student(teacher, hidden_dim=8, num_heads=2, layer_indices=[0, 1])
    with pytest.raises(ValueError, match="teacher's widths"):
        build_tiny_bert_student(teacher, intermediate_dim=64, layer_indices=[0, 1])

    narrow = build_tiny_bert_student(teacher, hidden_dim=8, num_heads=2)
    assert narrow(inputs).shape == (len(SENTENCES), 8)
    assert encoder_of(narrow).token_embedding.embeddings.shape == (len(VOCAB), 8)
    np.testing.assert_allclose(np.linalg.norm(narrow(inputs).numpy(), axis=-1), 1.0, atol=1e-5)

    wider_ffn = encoder_of(build_tiny_bert_student(teacher, intermediate_dim=64))
    assert not np.array_equal(
        wider_ffn.token_embedding.embeddings.numpy(),
        teacher.encoder.token_embedding.embeddings.numpy(),
    )
    random = encoder_of(build_tiny_bert_student(teacher, copy_weights=False))
    assert not np.array_equal(
        random.token_embedding.embeddings.numpy(),
        teacher.encoder.token_embedding.embeddings.numpy(),
    )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"layer_indices": [0, 4]}, "out of range"),
        ({"layer_indices": [1, 1]}, "repeated"),
        ({"layer_indices": [0, 1], "num_layers": 3}, "2 entries for 3 layers"),
        ({"vocabulary_size": 99}, "vocabulary_size"),
        ({"max_sequence_length": 64}, "position embeddings"),
        ({"layer_indices": [0], "copy_weights": False}, "copy_weights"),
    ],
)
def test_clear_errors(teacher, kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_tiny_bert_student(teacher, **kwargs)


def test_without_teacher():
    with pytest.raises(ValueError, match="vocabulary_size"):
        build_tiny_bert_student()
    with pytest.raises(ValueError, match="needs a teacher"):
        build_tiny_bert_student(vocabulary_size=10, layer_indices=[0])
    student = build_tiny_bert_student(vocabulary_size=len(VOCAB), hidden_dim=32, num_layers=1)
    encoder = encoder_of(student)
    assert (encoder.num_heads, encoder.intermediate_dim, encoder.hidden_activation) == (
        1,
        128,
        "gelu",
    )


def test_keras_round_trip(teacher, inputs, tmp_path):
    student = build_tiny_bert_student(teacher, num_layers=2, pooling="cls", normalize=False)
    path = tmp_path / "student.keras"
    student.save(path)
    reloaded = keras.saving.load_model(path)
    encoder = encoder_of(reloaded)
    assert isinstance(encoder, BertEncoder) and encoder.hidden_activation == "gelu"
    np.testing.assert_allclose(reloaded(inputs).numpy(), student(inputs).numpy(), atol=1e-6)


def test_narrower_feedforward_keeps_the_teachers_strongest_units(teacher, inputs):
    from kd_keras.models.tiny_bert import feedforward_units_to_keep

    source = teacher.encoder
    student = build_tiny_bert_student(teacher, intermediate_dim=20, layer_indices=[0, 3])
    pruned = encoder_of(student)
    assert pruned.intermediate_dim == 20
    assert student(inputs).shape == (len(SENTENCES), CONFIG["hidden_dim"])
    for layer, index in zip(pruned.transformer_layers, [0, 3], strict=True):
        weights = {v.path.split("/", 1)[1]: v.numpy() for v in layer.weights}
        reference = {
            v.path.split("/", 1)[1]: v.numpy() for v in source.transformer_layers[index].weights
        }
        w_in = reference["feedforward_intermediate_dense/kernel"]
        w_out = reference["feedforward_output_dense/kernel"]
        score = np.linalg.norm(w_in, axis=0) * np.linalg.norm(w_out, axis=1)
        keep = np.sort(np.argsort(-score)[:20])
        np.testing.assert_array_equal(
            feedforward_units_to_keep(source.transformer_layers[index], 20), keep
        )
        for name, value in reference.items():
            if name == "feedforward_intermediate_dense/kernel":
                value = value[:, keep]
            elif name == "feedforward_intermediate_dense/bias":
                value = value[keep]
            elif name == "feedforward_output_dense/kernel":
                value = value[keep]
            np.testing.assert_array_equal(weights[name], value, err_msg=name)
    np.testing.assert_array_equal(
        pruned.token_embedding.embeddings.numpy(), source.token_embedding.embeddings.numpy()
    )
    # Keeping every unit is the plain copy.
    full = encoder_of(build_tiny_bert_student(teacher, intermediate_dim=32, layer_indices=[0, 3]))
    assert_same_weights(
        weights_of(full.transformer_layers[1]), weights_of(source.transformer_layers[3])
    )
    with pytest.raises(ValueError, match="Cannot keep 0"):
        feedforward_units_to_keep(source.transformer_layers[0], 0)
