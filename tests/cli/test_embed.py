"""`kd-keras embed`: embeddings file, errors that name the file and line."""

import json
import pathlib

import numpy as np

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
