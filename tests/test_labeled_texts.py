"""`kd_keras.data.read_labeled_texts`: labeled texts from CSV, TSV and JSON lines."""

import json

import numpy as np
import pytest

from kd_keras.data import DataError, label_classes, read_labeled_texts

ROWS = [("a fine film", "positive"), ("so dull", "negative"), ("it is a film", "neutral")] * 2


def _write(path, rows, format, columns=("text", "label")):
    if format == "jsonl":
        lines = [json.dumps(dict(zip(columns, row, strict=True))) for row in rows]
    else:
        separator = "\t" if format == "tsv" else ","
        lines = [separator.join(columns)] + [separator.join(map(str, row)) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


@pytest.mark.parametrize("format", ["csv", "tsv", "jsonl"])
def test_reads_each_format_and_sorts_the_classes(tmp_path, format):
    path = _write(tmp_path / f"train.{format}", ROWS, format)
    texts, labels, classes = read_labeled_texts(path)
    assert texts == [text for text, _ in ROWS]
    assert classes == ["negative", "neutral", "positive"]
    assert labels.dtype == np.int32
    np.testing.assert_array_equal(labels, [2, 0, 1, 2, 0, 1])
    # The format is sniffed from the first line when the extension says nothing.
    plain = tmp_path / "train.txt"
    plain.write_text((tmp_path / f"train.{format}").read_text(encoding="utf-8"))
    assert read_labeled_texts(str(plain))[0] == texts


def test_quoted_csv_fields_and_other_column_names(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text('id,sentence,y\n1,"one, two",b\n2,"say ""hi""",a\n', encoding="utf-8")
    texts, labels, classes = read_labeled_texts(str(path), text="sentence", label="y")
    assert texts == ["one, two", 'say "hi"'] and classes == ["a", "b"]
    np.testing.assert_array_equal(labels, [1, 0])


def test_integer_labels_sort_as_numbers_and_map_dev_files(tmp_path):
    train = _write(tmp_path / "train.csv", [("x", "10"), ("y", "9"), ("z", "2")], "csv")
    _, labels, classes = read_labeled_texts(train)
    assert classes == [2, 9, 10]
    np.testing.assert_array_equal(labels, [2, 1, 0])
    # JSON numbers and digit strings are the same class.
    dev = tmp_path / "dev.jsonl"
    dev.write_text('{"text": "a", "label": 9}\n{"text": "b", "label": "10"}\n', encoding="utf-8")
    _, dev_labels, same = read_labeled_texts(str(dev), classes=classes)
    assert same == classes
    np.testing.assert_array_equal(dev_labels, [1, 2])
    assert label_classes([1, "x"]) == ["1", "x"]  # mixed: all strings


def test_limit_keeps_the_first_rows_but_the_classes_of_the_whole_file(tmp_path):
    path = _write(tmp_path / "train.tsv", ROWS, "tsv")
    texts, labels, classes = read_labeled_texts(path, limit=2)
    assert texts == ["a fine film", "so dull"] and len(classes) == 3
    np.testing.assert_array_equal(labels, [2, 0])


def _error(path, **kwargs):
    with pytest.raises(DataError) as info:
        read_labeled_texts(str(path), **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_unseen_dev_label_names_file_and_line(tmp_path):
    train = _write(tmp_path / "train.tsv", ROWS, "tsv")
    classes = read_labeled_texts(train)[2]
    dev = _write(tmp_path / "dev.tsv", [("good", "positive"), ("meh", "mixed")], "tsv")
    message = _error(dev, classes=classes)
    assert message.startswith(f"{dev}:3: label 'mixed' does not occur in the training data")
    assert "negative, neutral, positive" in message
    ints = _write(tmp_path / "ints.csv", [("a", "0"), ("b", "1")], "csv")
    assert _error(ints, classes=[0, 2]).startswith(f"{ints}:3: label '1' does not occur")


def test_malformed_files_are_one_line_errors(tmp_path):
    header_only = tmp_path / "h.csv"
    header_only.write_text("text,label\n", encoding="utf-8")
    assert _error(header_only) == f"{header_only}: no labeled texts found"
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n", encoding="utf-8")
    assert "no labeled texts found" in _error(empty)
    missing = _write(tmp_path / "m.csv", [("a", "b")], "csv", columns=("sentence", "label"))
    assert _error(missing).startswith(f"{missing}:1: missing column 'text'")
    extra = tmp_path / "extra.csv"
    extra.write_text("text,label\nfine,a\none,two,b\n", encoding="utf-8")
    assert _error(extra) == f"{extra}:3: 3 fields, the header has 2"
    short = tmp_path / "short.tsv"
    short.write_text("text\tlabel\nfine\ta\nlonely\n", encoding="utf-8")
    assert _error(short) == f"{short}:3: missing column 'label'"
    blank = _write(tmp_path / "b.tsv", [("fine", "a"), ("  ", "b")], "tsv")
    assert _error(blank) == f"{blank}:3: empty text"
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "a", "label": "x"}\n{"text": "b",\n', encoding="utf-8")
    assert _error(broken).startswith(f"{broken}:2: not valid JSON")
    for value, shown in ((1.5, "float 1.5"), (True, "bool True"), ("", "an empty string")):
        bad = tmp_path / "bad.jsonl"
        bad.write_text(json.dumps({"text": "a", "label": value}) + "\n", encoding="utf-8")
        assert _error(bad) == f"{bad}:1: 'label' must be a string or an integer, got {shown}"
    assert _error(tmp_path / "nope.csv") == f"{tmp_path / 'nope.csv'}: no such file"
