"""Shared test fixtures: tiny random BERT encoders and teachers, the MiniLM vocabulary.

Every test file that needs a teacher builds it here, with only what is special
about it as arguments (`make_tiny_teacher(hidden_dim=8, sequence_length=64)`).
"""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

TINY_VOCABULARY = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list(
    "abcdefghijklmnopqrstuvwxyz"
)


def _bert_encoder(
    vocabulary_size=31,  # len(TINY_VOCABULARY)
    num_layers=2,
    num_heads=2,
    hidden_dim=16,
    intermediate_dim=32,
    sequence_length=16,
    seed=0,
    spread=0.0,
):
    """A random `BertEncoder` (exact GELU), seeded; `spread` adds N(0, spread) to every
    weight (BERT's initializer makes all token outputs nearly equal)."""
    import keras

    from kd_keras.models.bert_encoder import BertEncoder

    keras.utils.set_random_seed(seed)
    encoder = BertEncoder(
        vocabulary_size=vocabulary_size,
        num_layers=num_layers,
        num_heads=num_heads,
        hidden_dim=hidden_dim,
        intermediate_dim=intermediate_dim,
        max_sequence_length=sequence_length,
        dropout=0.0,
    )
    if spread:
        rng = np.random.default_rng(seed)
        for variable in encoder.weights:
            variable.assign(variable.numpy() + rng.normal(0.0, spread, variable.shape))
    return encoder


def _tiny_teacher(vocabulary=None, pooling="mean", normalize=True, **encoder_kwargs):
    """A `Teacher` around `_bert_encoder(...)` with a `BertPreprocessor` of `vocabulary`."""
    from kd_keras.models.bert_tokenizer import BertPreprocessor
    from kd_keras.models.teachers import Teacher

    vocabulary = list(TINY_VOCABULARY if vocabulary is None else vocabulary)
    encoder = _bert_encoder(vocabulary_size=len(vocabulary), **encoder_kwargs)
    preprocessor = BertPreprocessor(
        vocabulary, sequence_length=encoder_kwargs.get("sequence_length", 16)
    )
    return Teacher(encoder, preprocessor, pooling=pooling, normalize=normalize)


@pytest.fixture(scope="session")
def tiny_vocabulary():
    """`[PAD] [UNK] [CLS] [SEP] [MASK] a ... z`."""
    return list(TINY_VOCABULARY)


def _hf_tensors(google_weights):
    """BERT weights under Google names, renamed and laid out as a Hugging Face `BertModel`'s."""
    tensors = {}
    for name, value in google_weights.items():
        key = name[len("bert/") :].replace("/", ".").replace("encoder.layer_", "encoder.layer.")
        if key.endswith(".kernel"):
            key, value = key[: -len("kernel")] + "weight", value.T
        elif key.endswith("LayerNorm.gamma"):
            key = key[: -len("gamma")] + "weight"
        elif key.endswith("LayerNorm.beta"):
            key = key[: -len("beta")] + "bias"
        elif key.startswith("embeddings.") and "LayerNorm" not in key:
            key += ".weight"
        tensors[key] = np.ascontiguousarray(value, "float32")
    return tensors


@pytest.fixture(scope="session")
def hf_tensors():
    """`fn(google_weights) -> HF-named float32 tensors` (see `_hf_tensors`)."""
    return _hf_tensors


@pytest.fixture(scope="session")
def make_bert_encoder():
    """Factory of random `BertEncoder`s (see `_bert_encoder`)."""
    return _bert_encoder


@pytest.fixture(scope="session")
def make_tiny_teacher():
    """Factory of tiny random `Teacher`s (see `_tiny_teacher`)."""
    return _tiny_teacher


@pytest.fixture(scope="session")
def finite_numbers():
    """`fn(tree) -> list`: every int and float (not bool) in a nested dict of metrics."""

    def numbers(tree):
        if isinstance(tree, dict):
            return [x for v in tree.values() for x in numbers(v)]
        if isinstance(tree, (int, float)) and not isinstance(tree, bool):
            return [tree]
        return []

    return numbers


@pytest.fixture(scope="session")
def minilm_vocabulary():
    """The WordPiece vocabulary of the offline all-MiniLM-L6-v2 (30,522 tokens)."""
    from kd_keras.models.bert_tokenizer import load_vocabulary
    from kd_keras.models.teachers import default_model_dir

    return load_vocabulary(default_model_dir() / "vocab.txt")
