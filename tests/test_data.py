"""The data folder, the readers and their errors."""

import os
import pathlib
import re

import numpy as np
import pytest

from kd_keras import data
from kd_keras.data import DataError, data_dir, data_path, read_lines, read_sentences, read_stsb

STSB_DIR = data_path("stsb")


def test_data_folder_from_flag_environment_or_checkout(tmp_path, monkeypatch):
    monkeypatch.delenv(data.DATA_ENV, raising=False)
    checkout_data = pathlib.Path(__file__).resolve().parents[1] / "data"
    assert data_dir() == checkout_data  # running from a checkout
    monkeypatch.setenv(data.DATA_ENV, str(tmp_path))
    assert data_dir() == tmp_path
    assert data_dir(str(checkout_data)) == checkout_data  # the flag wins
    assert data_path("stsb", "x.csv", override=str(tmp_path)) == str(tmp_path / "stsb" / "x.csv")
    with pytest.raises(DataError, match=r"missing.*given by --data-dir"):
        data_dir(str(tmp_path / "missing"))
    # An installed wheel: no checkout around the package, nothing given.
    monkeypatch.delenv(data.DATA_ENV)
    monkeypatch.setattr(data, "_CHECKOUT", tmp_path)
    with pytest.raises(DataError, match=r"--data-dir.*KD_KERAS_DATA"):
        data_dir()


def test_read_sentences_blank_lines_bom_and_whole_lines(tmp_path):
    path = tmp_path / "s.txt"
    path.write_bytes("\ufeffone\ttab\r\n\n  two  \n".encode())
    assert read_sentences(str(path)) == ["one", "two"]
    assert read_sentences(str(path), column=None, keep_blank=True) == ["one\ttab", "", "  two  "]
    with pytest.raises(DataError, match="is a folder"):
        read_sentences(str(tmp_path))


def test_shipped_stsb_splits_have_the_published_sizes():
    sizes = {"train": 5749, "dev": 1500, "test": 1379}
    for split, size in sizes.items():
        a, b, scores = read_stsb(os.path.join(STSB_DIR, f"sts-{split}.csv"))
        assert len(a) == len(b) == len(scores) == size
        assert scores.dtype == np.float32
        assert 0.0 <= scores.min() and scores.max() <= 5.0
    assert os.path.isfile(os.path.join(STSB_DIR, "LICENSE.txt"))


def test_first_training_row_and_limit():
    a, b, scores = read_stsb(os.path.join(STSB_DIR, "sts-train.csv"), limit=2)
    assert a == ["A plane is taking off.", "A man is playing a large flute."]
    assert b[0] == "An air plane is taking off."
    np.testing.assert_array_equal(scores, np.float32([5.0, 3.8]))


def test_bare_quotes_and_licence_columns_are_kept(tmp_path):
    path = tmp_path / "pairs.tsv"
    path.write_text(
        'g\tf\t2012\t1\t2.5\tHe said "hi.\tShe said "bye"\textra\tcolumns\n', encoding="utf-8"
    )
    a, b, _ = read_stsb(str(path))
    assert a == ['He said "hi.'] and b == ['She said "bye"']


@pytest.mark.parametrize(
    "content, message",
    [
        ("g\tf\t2012\t1\t2.5\tonly one sentence\n", r":1: expected at least 7"),
        (
            "g\tf\t2012\t1\t2.5\ta\tb\ng\tf\t2012\t2\tfive\ta\tb\n",
            r":2: score 'five' is not a number",
        ),
        ("g\tf\t2012\t1\t7.0\ta\tb\n", r":1: score 7 is outside \[0, 5\]"),
        ("g\tf\t2012\t1\t1.0\t \tb\n", r":1: empty sentence"),
        ("", r"no sentence pairs"),
    ],
)
def test_malformed_files_name_file_and_line(tmp_path, content, message):
    path = tmp_path / "bad.tsv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=message) as info:
        read_stsb(str(path))
    assert str(path) in str(info.value)


def test_missing_and_non_utf8_files(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        read_stsb(str(tmp_path / "missing.tsv"))
    path = tmp_path / "latin1.txt"
    path.write_bytes("fine\ncaf\xe9\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1.txt:2: not valid UTF-8"):
        list(read_lines(str(path)))


def test_line_ends_bom_and_long_csv_fields(tmp_path):
    from kd_keras.data import read_pairs

    cr_only = tmp_path / "mac.txt"
    cr_only.write_bytes(b"one\rtwo\rthree")
    assert [t for _, t in read_lines(str(cr_only))] == ["one", "two", "three"]
    mixed = tmp_path / "mixed.txt"
    mixed.write_bytes(b"a\r\nb\nc\rd\r")
    assert [t for _, t in read_lines(str(mixed))] == ["a", "b", "c", "d"]

    long_sentence = "word " * 40000  # 200,000 characters: over csv's default field limit
    csv_path = tmp_path / "pairs.csv"
    csv_path.write_text(
        "\ufeffsentence1,sentence2,score\n" + f'"{long_sentence}",short,4\n', encoding="utf-8"
    )  # with a byte-order mark, as spreadsheet programs write
    a, b, scores = read_pairs(str(csv_path))
    assert a == [long_sentence.strip()] and b == ["short"] and scores.tolist() == [4.0]


@pytest.mark.parametrize(
    "record, message",
    [
        ({"sentence1": "a", "sentence2": "b", "score": True}, "'score' must be a number, got bool"),
        ({"sentence1": "a", "sentence2": "b", "score": [1]}, "'score' must be a number, got list"),
        (
            {"sentence1": ["a", "list"], "sentence2": "b", "score": 1},
            "'sentence1' must be a string",
        ),
        (
            {"sentence1": "a", "sentence2": 12345, "score": 1},
            "'sentence2' must be a string, got int",
        ),
    ],
)
def test_json_lines_of_the_wrong_type_name_file_and_line(tmp_path, record, message):
    import json

    from kd_keras.data import read_pairs

    path = tmp_path / "pairs.jsonl"
    good = {"sentence1": "x", "sentence2": "y", "score": 2.5}
    path.write_text(json.dumps(good) + "\n" + json.dumps(record) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=rf"pairs\.jsonl:2: {re.escape(message)}"):
        read_pairs(str(path))


def test_stsb_scores_are_checked_against_max_score(tmp_path):
    path = tmp_path / "sts.tsv"
    path.write_text("g\tf\t2012\t1\t4.5\tA cat.\tA dog.\n", encoding="utf-8")
    assert read_stsb(str(path))[2].tolist() == [4.5]
    with pytest.raises(DataError, match=r"sts\.tsv:1: score 4\.5 is outside \[0, 3\]"):
        read_stsb(str(path), max_score=3.0)


def test_cnsd_files_are_read_and_sniffed(tmp_path):
    from kd_keras.data import read_cnsd

    for split, size in (("train", 5231), ("dev", 1458), ("test", 1361)):
        a, b, scores = data.read_pairs(data_path("cnsd-sts-zh", f"cnsd-sts-{split}.txt"))
        assert len(a) == len(b) == len(scores) == size
        assert scores.min() == 0.0 and scores.max() == 5.0
    assert (a[0], b[0], float(scores[0])) == (
        "一个女孩在给她的头发做发型。",
        "一个女孩在梳头。",
        2.0,
    )
    bad = tmp_path / "bad.txt"
    bad.write_text("1||一||二||3\n2||只有两个字段\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"bad\.txt:2: expected at least 4 '\|\|'-separated"):
        read_cnsd(bad)
    bad.write_text("1||一||二||9\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"bad\.txt:1"):
        data.read_pairs(bad)  # sniffed as CNSD; 9 is above max_score 5
