"""The STS-B reader and its errors."""

import os

import numpy as np
import pytest

from kd_keras.data import STSB_DIR, DataError, read_lines, read_stsb


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
