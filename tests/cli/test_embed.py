"""`kd-keras embed`: embeddings file, errors that name the file and line; every model kind."""

import json
import pathlib

import numpy as np
import pytest

from kd_keras import cli
from kd_keras.data import read_sentences

FIXTURES = pathlib.Path(__file__).resolve().parents[1] / "fixtures"
REFERENCE = json.loads((FIXTURES / "minilm_reference.json").read_text(encoding="utf-8"))
REFERENCE_VECTORS = np.load(FIXTURES / "minilm_reference_vectors.npz")["embeddings"]


def run(argv):
    return cli.main(["embed", *argv])


def test_embed_default_model_matches_reference(tmp_path):
    # Lines that contain no newline characters themselves.
    picked = [i for i, s in enumerate(REFERENCE["sentences"]) if "\n" not in s and "\r" not in s]
    picked = picked[:6] + [len(REFERENCE["sentences"]) - 1]  # with the > 256-token text
    text = "\r\n".join(REFERENCE["sentences"][i] for i in picked) + "\n"
    source = tmp_path / "sentences.txt"
    source.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))  # with a BOM
    output = tmp_path / "embeddings.npy"
    assert run(["--input", str(source), "--output", str(output), "--no-progress"]) == 0
    embeddings = np.load(output)
    assert embeddings.dtype == np.float32
    assert embeddings.shape == (len(picked), 384)
    assert np.abs(embeddings - REFERENCE_VECTORS[picked]).max() < 1e-5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["embeddings.npy", "sentences.txt"]


def test_read_sentences_keeps_line_numbers(tmp_path):
    path = tmp_path / "s.txt"
    path.write_bytes(b"one\n\nthree\r\nfour")
    assert read_sentences(path, column=None, keep_blank=True) == ["one", "", "three", "four"]
    old_mac = tmp_path / "cr.txt"  # lone carriage returns end lines too
    old_mac.write_bytes(b"one\rtwo\r\rfour\r")
    assert read_sentences(old_mac, column=None, keep_blank=True) == ["one", "two", "", "four"]


def test_missing_input_names_the_file(tmp_path, capsys):
    missing = tmp_path / "nowhere.txt"
    assert run(["--input", str(missing), "--output", str(tmp_path / "o.npy")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("kd-keras embed: error: ") and "nowhere.txt: no such file" in err
    assert not (tmp_path / "o.npy").exists()


def test_non_utf8_input_names_file_and_line(tmp_path, capsys):
    path = tmp_path / "latin1.txt"
    path.write_bytes("fine\nalso fine\ncaf\xe9 au lait\n".encode("latin-1"))
    assert run(["--input", str(path), "--output", str(tmp_path / "o.npy")]) == 2
    err = capsys.readouterr().err
    assert "latin1.txt:3: not valid UTF-8" in err and "0xe9 at column 4" in err


def test_empty_input_and_missing_output_folder(tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert run(["--input", str(empty), "--output", str(tmp_path / "o.npy")]) == 2
    assert "no sentences" in capsys.readouterr().err
    good = tmp_path / "good.txt"
    good.write_text("a\n")
    assert run(["--input", str(good), "--output", str(tmp_path / "no" / "o.npy")]) == 2
    assert "Output folder does not exist" in capsys.readouterr().err
    assert run(["--input", str(good), "--output", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err


# === The project's own outputs: a student .keras with its sidecar, an export folder ===

EMBED_LINES = ["a b c", "d e f g h", "", "z", "q r s t u v w x y"]


@pytest.fixture(scope="module")
def student_files(tmp_path_factory, tiny_vocabulary):
    """A tiny BiLSTM student saved with its sidecar, its export, and the reference embeddings."""
    import keras

    from kd_keras import serving
    from kd_keras.models.bert_tokenizer import BertPreprocessor
    from kd_keras.models.bilstm import build_bilstm_encoder

    folder = tmp_path_factory.mktemp("student")
    preprocessor = BertPreprocessor(tiny_vocabulary, sequence_length=8)
    keras.utils.set_random_seed(4)
    student = build_bilstm_encoder(len(tiny_vocabulary), embedding_dim=6, hidden_dim=4)
    model_path, _ = serving.save_student(student, folder / "student.keras", preprocessor)
    serving.export_student(student, folder / "export", preprocessor)
    ids = preprocessor(EMBED_LINES)["token_ids"]  # the preprocessor's own fixed-length call
    source = folder / "sentences.txt"
    source.write_text("\n".join(EMBED_LINES) + "\n", encoding="utf-8")
    return folder, source, np.asarray(student(ids))


@pytest.mark.parametrize("model", ["student.keras", "export"])
def test_embed_takes_a_student_keras_and_an_export_folder(student_files, model, tmp_path):
    folder, source, expected = student_files
    output = tmp_path / "e.npy"
    argv = ["--model", str(folder / model), "--input", str(source), "--output", str(output)]
    assert run([*argv, "--no-progress", "--batch-size", "2"]) == 0
    got = np.load(output)
    assert got.dtype == np.float32 and got.shape == expected.shape == (len(EMBED_LINES), 8)
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_embed_refuses_what_it_cannot_embed_in_one_line(student_files, tmp_path, capsys):
    from kd_keras import serving

    folder, source, _ = student_files
    out = ["--input", str(source), "--output", str(tmp_path / "o.npy")]
    # A student .keras without its sidecar.
    bare = tmp_path / "bare.keras"
    bare.write_bytes((folder / "student.keras").read_bytes())
    assert run(["--model", str(bare), *out]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "bare.preprocessor.json does not exist" in err
    # An export with no `embed` signature (a classifier), and XLA on an export.
    student, preprocessor = serving.load_student(folder / "student.keras")
    import keras

    ids = keras.Input(shape=(None,), dtype="int32", name="token_ids")
    classes = keras.layers.Dense(3, activation="softmax")(student(ids))
    serving.export_student(keras.Model(ids, classes), tmp_path / "classifier", preprocessor)
    assert run(["--model", str(tmp_path / "classifier"), *out]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "has no `embed` signature (it has classify" in err
    assert run(["--model", str(folder / "export"), "--jit-compile", *out]) == 2
    assert "is a SavedModel export" in capsys.readouterr().err
    assert not (tmp_path / "o.npy").exists()
