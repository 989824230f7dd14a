"""`kd_keras.labels` and `kd-keras label`: sharded, streaming, resumable teacher labels."""

import gzip
import json

import numpy as np
import pytest

from kd_keras import cli, teacher_pass
from kd_keras.data import DataError
from kd_keras.labels import MANIFEST, label_files, read_labels
from kd_keras.storage import CacheError, read_arrays
from kd_keras.teacher_pass import run_teacher

WORDS = "the a cat dog sat ran on under mat tree big small red".split()


@pytest.fixture(scope="module")
def teacher(make_tiny_teacher):
    return make_tiny_teacher(hidden_dim=8, intermediate_dim=16, sequence_length=32)


@pytest.fixture
def corpus(tmp_path):
    rng = np.random.default_rng(0)
    sentences = [" ".join(rng.choice(WORDS, size=rng.integers(1, 12))) for _ in range(23)]
    plain = tmp_path / "part1.txt"
    plain.write_text("\n".join(sentences[:10]) + "\n\n   \n", encoding="utf-8")  # blank lines
    packed = tmp_path / "part2.txt.gz"
    with gzip.open(packed, "wt", encoding="utf-8") as f:
        f.write("\r\n".join(sentences[10:]))
    return [str(plain), str(packed)], sentences


def _all(directory):
    sentences, embeddings = [], []
    for s, e in read_labels(directory):
        sentences += s
        embeddings.append(e)
    return sentences, np.concatenate(embeddings)


def test_labels_match_the_teacher_shard_by_shard(teacher, corpus, tmp_path):
    files, sentences = corpus
    out = tmp_path / "labels"
    result = label_files(teacher, files, out, shard_size=5, progress=False, teacher_spec="tiny")
    assert (result.rows, result.shards, result.reused) == (23, 5, 0)
    got_sentences, got = _all(out)
    assert got_sentences == sentences  # blank lines skipped, .gz read, \r\n handled
    np.testing.assert_allclose(got, run_teacher(teacher, sentences), atol=1e-6)
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["complete"] and manifest["rows"] == 23 and manifest["dim"] == 8
    assert [s["rows"] for s in manifest["shards"]] == [
        [0, 5],
        [5, 10],
        [10, 15],
        [15, 20],
        [20, 23],
    ]
    assert manifest["teacher"]["spec"] == "tiny" and manifest["settings"]["shard_size"] == 5
    assert all(len(s["sha256"]) == 64 for s in manifest["shards"])


def test_an_interrupted_run_keeps_its_shards_and_ends_identical(
    teacher, corpus, tmp_path, monkeypatch
):
    files, _ = corpus
    whole = tmp_path / "whole"
    label_files(teacher, files, whole, shard_size=5, progress=False)
    calls = []
    real = teacher_pass.run_teacher

    def dies_on_the_third_shard(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(teacher_pass, "run_teacher", dies_on_the_third_shard)
    out = tmp_path / "labels"
    with pytest.raises(KeyboardInterrupt):
        label_files(teacher, files, out, shard_size=5, progress=False)
    assert not json.loads((out / MANIFEST).read_text())["complete"]
    with pytest.raises(CacheError, match="no finished labels"):
        list(read_labels(out))

    calls.clear()
    monkeypatch.setattr(
        teacher_pass, "run_teacher", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    result = label_files(teacher, files, out, shard_size=5, progress=False)
    assert result.reused == 2 and len(calls) == 3  # only the three unfinished shards
    for (a, x), (b, y) in zip(read_labels(out), read_labels(whole), strict=True):
        assert a == b
        np.testing.assert_array_equal(x, y)

    # A rerun of a finished folder labels nothing; a damaged shard is labeled again.
    calls.clear()
    assert label_files(teacher, files, out, shard_size=5, progress=False).reused == 5
    assert not calls
    (out / "shard-00001.npz").write_bytes(b"damaged")
    label_files(teacher, files, out, shard_size=5, progress=False)
    assert len(calls) == 1
    np.testing.assert_array_equal(_all(out)[1], _all(whole)[1])


def test_other_settings_or_inputs_relabel_and_float16_halves_the_disk(teacher, corpus, tmp_path):
    files, sentences = corpus
    out = tmp_path / "labels"
    label_files(teacher, files, out, shard_size=5, progress=False)
    bytes32 = read_arrays(out / "shard-00000.npz")[1]["embeddings"].nbytes
    result = label_files(teacher, files, out, shard_size=5, store="float16", progress=False)
    assert result.reused == 0
    stored = read_arrays(out / "shard-00000.npz")[1]["embeddings"]
    assert stored.dtype == np.float16 and stored.nbytes == bytes32 // 2
    np.testing.assert_allclose(_all(out)[1], run_teacher(teacher, sentences), atol=2e-3)
    result = label_files(teacher, files, out, shard_size=5, store="float16", limit=7)
    assert (result.rows, result.reused) == (7, 0)
    assert sorted(p.name for p in out.glob("shard-*.npz")) == ["shard-00000.npz", "shard-00001.npz"]


def test_bad_inputs_name_the_file(tmp_path, teacher):
    good = tmp_path / "good.txt"
    good.write_text("a cat\n", encoding="utf-8")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n \n", encoding="utf-8")
    latin = tmp_path / "latin.txt"
    latin.write_bytes("fine\ncaf\xe9\n".encode("latin-1"))
    for inputs, message in (
        ([str(tmp_path / "missing.txt")], r"missing\.txt: no such file"),
        ([str(tmp_path)], "is a folder"),
        ([str(tmp_path / "*.csv")], "no file matches"),
        ([str(good), str(empty)], r"empty\.txt: no sentences found"),
        ([str(latin)], r"latin\.txt:2: not valid UTF-8"),
    ):
        with pytest.raises(DataError, match=message):
            label_files(teacher, inputs, tmp_path / "out", progress=False)
    # Bad bytes met after some shards were written: the folder stays unfinished,
    # never taken as complete by a reader.
    with pytest.raises(DataError, match=r"latin\.txt:2: not valid UTF-8"):
        label_files(
            teacher, [str(good), str(latin)], tmp_path / "half", shard_size=1, progress=False
        )
    assert (tmp_path / "half" / "shard-00000.npz").is_file()
    assert not json.loads((tmp_path / "half" / MANIFEST).read_text())["complete"]
    with pytest.raises(CacheError, match="no finished labels"):
        next(read_labels(tmp_path / "half"))
    # A very long line is one sentence, truncated by the teacher's tokenizer.
    long = tmp_path / "long.txt"
    long.write_text("a cat " * 200_000 + "\nthe dog\n", encoding="utf-8")
    result = label_files(teacher, [str(long)], tmp_path / "long-out", progress=False)
    assert result.rows == 2


def test_command_line(tmp_path, teacher, corpus, capsys):
    files, _ = corpus
    teacher_path = tmp_path / "teacher.keras"
    teacher.save(teacher_path)
    argv = ["label", "--teacher", str(teacher_path), "--input", *files, "--output"]
    assert cli.main([*argv, str(tmp_path / "out"), "--shard-size", "10", "--no-progress"]) == 0
    assert "23 sentences in 3 shards (0 kept" in capsys.readouterr().out
    assert cli.main([*argv, str(tmp_path / "x"), "--shard-size", "0"]) == 2
    assert "--shard-size must be at least 1" in capsys.readouterr().err
    assert cli.main(["label", "--input", str(tmp_path / "nope.txt"), "--output", "x"]) == 2
    assert "nope.txt: no such file" in capsys.readouterr().err


def test_int8_labels_record_their_agreement_with_float32(tmp_path, teacher, corpus, capsys):
    files, sentences = corpus
    teacher_path = tmp_path / "teacher.keras"
    teacher.save(teacher_path)
    argv = ["label", "--teacher", str(teacher_path), "--input", *files, "--output"]
    out = tmp_path / "int8"
    assert cli.main([*argv, str(out), "--precision", "int8", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "int8 against float32 on the first 23 sentences: cosine mean" in printed
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["settings"]["precision"] == "int8"
    agreement = manifest["precision_agreement"]
    assert agreement["sentences"] == 23 and 0.999 <= agreement["min_cosine"] <= 1.0 + 1e-6
    _, got = _all(out)
    expected = run_teacher(teacher, sentences)
    np.testing.assert_allclose(np.sum(got * expected, -1).min(), agreement["min_cosine"], atol=1e-5)
    np.testing.assert_allclose(got, run_teacher(teacher, sentences, precision="int8"), atol=1e-6)
    # float32 labels record none.
    result = label_files(teacher, files, tmp_path / "float32", progress=False)
    assert result.agreement is None
    assert json.loads((tmp_path / "float32" / MANIFEST).read_text())["precision_agreement"] is None


def test_labels_dataset_streams_every_row_once_shards_in_a_new_order(teacher, corpus, tmp_path):
    import tensorflow as tf

    from kd_keras.labels import labels_dataset

    files, sentences = corpus
    out = tmp_path / "labels"
    label_files(teacher, files, out, shard_size=4, progress=False)
    expected = dict(zip(sentences, run_teacher(teacher, sentences), strict=True))

    def encode(batch):  # the sentence itself, to follow every row
        return tf.constant(batch)

    ds, rows = labels_dataset([out], encode, shuffle=True, seed=3, cycle_length=2)
    assert rows == 23
    passes = []
    for _ in range(2):
        seen = [(s.numpy().decode(), e.numpy()) for s, e in ds]
        assert sorted(s for s, _ in seen) == sorted(sentences)
        for s, e in seen:
            np.testing.assert_allclose(e, expected[s], atol=1e-6)
        passes.append([s for s, _ in seen])
    assert passes[0] != passes[1]  # shard order reshuffled on each pass

    # A shard damaged after the run is an error naming it when the stream reaches it.
    shard = out / "shard-00003.npz"
    shard.write_bytes(shard.read_bytes()[:-5])
    with pytest.raises(Exception, match="shard-00003.npz is missing or fails its checksum"):
        list(ds)


def test_labels_dataset_refuses_unfinished_folders_and_mixed_widths(teacher, corpus, tmp_path):
    import tensorflow as tf

    from kd_keras.labels import labels_dataset

    files, _ = corpus
    with pytest.raises(CacheError, match="no finished labels"):
        labels_dataset([tmp_path / "nothing"], tf.constant)
    label_files(teacher, files, tmp_path / "a", shard_size=8, progress=False)
    manifest = json.loads((tmp_path / "a" / MANIFEST).read_text())
    manifest["dim"] = 5
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="different widths"):
        labels_dataset([tmp_path / "a", tmp_path / "b"], tf.constant)
