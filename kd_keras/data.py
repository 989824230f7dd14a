"""The data kd-keras trains on: where it lives, and readers that name bad input.

`data_dir()` finds the data folder the same way from a checkout and from an
installed wheel: an explicit folder (`--data-dir`), else the environment
variable `KD_KERAS_DATA`, else the checkout's own `data/` when kd-keras runs
from a checkout; with none of them, a `DataError` names both ways to give it.
`data_path("stsb", "sts-train.csv")` is a file in it.

Readers: `read_lines` (UTF-8, byte-order mark skipped, a line at a time),
`read_stsb`, `read_pairs` (STS-B, CSV, TSV, JSON lines), `read_sentences` (one
per line), `read_sst2` (`sentence<TAB>label`) and `read_labeled_texts`
(labeled texts: CSV, TSV, JSON lines). A bad file stops with a
`DataError` naming the file and the line.

The corpus that `corpus_files` and `iter_corpus` read (`kd-keras label`'s
`--input`) may also be on an object store (`gs://bucket/corpus/*.txt.gz`),
globbed and read through `tf.io.gfile` (`kd_keras.filesystems`; TensorFlow
loads only for such a path).
"""

import contextlib
import csv
import glob
import gzip
import io
import json
import os
import pathlib
import sys

import numpy as np

from kd_keras import filesystems

__all__ = [
    "DATA_ENV",
    "DataError",
    "data_dir",
    "corpus_files",
    "data_path",
    "iter_corpus",
    "label_classes",
    "read_lines",
    "read_cnsd",
    "read_labeled_texts",
    "read_pairs",
    "read_sentences",
    "read_sst2",
    "read_stsb",
]

DATA_ENV = "KD_KERAS_DATA"
# The checkout this module runs from, if it runs from one (a wheel has no
# pyproject.toml beside its package).
_CHECKOUT = pathlib.Path(__file__).resolve().parent.parent


class DataError(ValueError):
    """A data file is missing, unreadable or malformed; the message names the
    file and, where it applies, the line."""


def data_dir(override=None):
    """The data folder: `override`, else `$KD_KERAS_DATA`, else the checkout's `data/`.

    Args:
        override: str, path or `None` (`--data-dir`).

    Returns:
        `pathlib.Path` of an existing folder.

    Raises:
        DataError: the folder given does not exist, or none was given and
            kd-keras does not run from a checkout.
    """
    for given, source in ((override, "--data-dir"), (os.environ.get(DATA_ENV), DATA_ENV)):
        if given:
            path = pathlib.Path(given).expanduser()
            if not path.is_dir():
                raise DataError(f"{path}: no such data folder (given by {source})")
            return path
    checkout_data = _CHECKOUT / "data"
    if (_CHECKOUT / "pyproject.toml").is_file() and checkout_data.is_dir():
        return checkout_data
    raise DataError(
        "No data folder: pass --data-dir DIR or set the environment variable "
        f"{DATA_ENV}=DIR (a folder with stsb/ and sst2/, as the repository's data/)."
    )


def data_path(*parts, override=None):
    """A path inside the data folder (`data_dir(override) / parts...`), as a `str`."""
    return str(data_dir(override).joinpath(*parts))


def read_lines(path):
    """Yields `(line_number, text)` for each line of a UTF-8 file, line end removed.

    A line ends with `\n`, `\r\n` or a lone `\r`; a UTF-8 byte-order mark at
    the start of the file is skipped. A `.gz` file is read through gzip. An
    object-store path (`gs://...`) is read through `tf.io.gfile`.

    Raises:
        DataError: the file is missing or a folder, or a line is not valid UTF-8.
    """
    if filesystems.is_dir(path):
        raise DataError(f"{path}: is a folder, not a file")
    if not filesystems.is_file(path):
        raise DataError(f"{path}: no such file")
    number = 0
    with _open_lines(path) as f:
        for chunk in f:
            if number == 0 and chunk.startswith(b"\xef\xbb\xbf"):
                chunk = chunk[3:]
            # Line ends: "\n", "\r\n" and a lone "\r" (old Mac files).
            for raw in chunk.rstrip(b"\n").removesuffix(b"\r").split(b"\r"):
                number += 1
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise DataError(
                        f"{path}:{number}: not valid UTF-8 (byte 0x{raw[e.start]:02x} at column "
                        f"{e.start + 1}: {e.reason})"
                    ) from None
                yield number, text


@contextlib.contextmanager
def _open_lines(path):
    """The lines of a file, as bytes with their ends (`.gz` decompressed)."""
    if not filesystems.has_scheme(str(path)):
        opener = gzip.open if str(path).endswith(".gz") else open
        with opener(path, "rb") as f:
            yield f
        return
    with filesystems.open_read(path) as raw:
        if str(path).endswith(".gz"):
            with gzip.GzipFile(fileobj=raw, mode="rb") as f:
                yield filesystems.iter_lines(f)
        else:
            yield filesystems.iter_lines(raw)


def read_stsb(path, limit=None, max_score=5.0):
    """Reads an STS Benchmark file: `(sentences_a, sentences_b, scores)`.

    The format is tab-separated without a header or quoting: genre, file,
    year, id, score (0-5), sentence 1, sentence 2, and sometimes two licence
    columns after them.

    Args:
        path: str. E.g. `data_path("stsb", "sts-train.csv")`.
        limit: int or `None`. Read only the first `limit` pairs.
        max_score: float. Scores must lie in `[0, max_score]`.

    Returns:
        Two lists of str and a float32 array of gold scores in [0, max_score].

    Raises:
        DataError: naming the file and line of a missing column, a score that
            is not a number in [0, 5], or an empty sentence; or an empty file.
    """
    layout = (
        "\t",
        7,
        (4, 5, 6),
        "tab-separated columns (genre, file, year, id, score, sentence1, sentence2)",
    )
    return _read_fixed_columns(path, layout, limit, max_score)


def read_cnsd(path, limit=None, max_score=5.0):
    """Reads a CNSD (Chinese STS-B) file: `id||sentence1||sentence2||score` lines, no header.

    Args and returns as `read_stsb`.
    """
    layout = ("||", 4, (3, 1, 2), "'||'-separated fields (id, sentence1, sentence2, score)")
    return _read_fixed_columns(path, layout, limit, max_score)


def _read_fixed_columns(path, layout, limit, max_score):
    """Pairs from header-less lines; `layout` is `(separator, at least this many
    fields, (score, sentence1, sentence2) field indices, description)`."""
    separator, count, (i_score, i_a, i_b), description = layout
    sentences_a, sentences_b, scores = [], [], []
    for number, line in read_lines(path):
        if limit is not None and len(scores) >= limit:
            break
        if not line.strip():
            continue
        columns = line.split(separator)
        if len(columns) < count:
            raise DataError(
                f"{path}:{number}: expected at least {count} {description}, found {len(columns)}"
            )
        score = _check_score(path, number, columns[i_score], max_score)
        a, b = columns[i_a].strip(), columns[i_b].strip()
        if not a or not b:
            raise DataError(f"{path}:{number}: empty sentence")
        sentences_a.append(a)
        sentences_b.append(b)
        scores.append(score)
    if not scores:
        raise DataError(f"{path}: no sentence pairs found")
    return sentences_a, sentences_b, np.asarray(scores, dtype="float32")


def _check_score(path, number, value, scale):
    try:
        score = float(value)
    except (TypeError, ValueError):
        raise DataError(f"{path}:{number}: score {value!r} is not a number") from None
    if not np.isfinite(score):
        raise DataError(f"{path}:{number}: score {value!r} is not a finite number")
    if scale is not None and not 0.0 <= score <= scale:
        raise DataError(f"{path}:{number}: score {score:g} is outside [0, {scale:g}]")
    return score


def _sniff_format(path):
    ext = os.path.splitext(path)[1].lower()
    if ext in (".jsonl", ".json"):
        return "jsonl"
    for _, line in read_lines(path):
        if line.strip():
            if len(line.split("||")) == 4:
                return "cnsd"
            columns = line.split("\t")
            if len(columns) >= 7:
                try:
                    float(columns[4])
                    return "stsb"
                except ValueError:
                    pass
            return "tsv" if ext == ".tsv" or "\t" in line else "csv"
    raise DataError(f"{path}: no sentence pairs found")


def read_pairs(
    path,
    format=None,
    sentence_a="sentence1",
    sentence_b="sentence2",
    score="score",
    max_score=5.0,
    limit=None,
):
    """Reads scored sentence pairs from STS-B, CSV, TSV or JSON-lines files.

    Args:
        path: str.
        format: `"stsb"`, `"cnsd"`, `"csv"`, `"tsv"`, `"jsonl"` or `None` to
            infer it (`.jsonl`/`.json` is JSON lines; a line of four
            `||`-separated fields is CNSD; a tab-separated line with a number
            in its fifth column is STS-B; else TSV or CSV by the delimiter).
            CSV and TSV files have a header row.
        sentence_a, sentence_b, score: str. Column (or JSON key) names.
        max_score: float or `None`. Scores must lie in `[0, max_score]`.
        limit: int or `None`. Read only the first `limit` pairs.

    Returns:
        `(sentences_a, sentences_b, scores)` as in `read_stsb`.

    Raises:
        DataError: naming the file and line of a missing column, a score that
            is not a number, an empty sentence, a malformed JSON line; or an
            empty file.
    """
    format = format or _sniff_format(path)
    if format in ("stsb", "cnsd"):
        reader = read_stsb if format == "stsb" else read_cnsd
        return reader(path, limit=limit, max_score=max_score)
    if format not in ("csv", "tsv", "jsonl"):
        raise ValueError(f"Unknown data format {format!r}; use stsb, cnsd, csv, tsv or jsonl.")
    names = (sentence_a, sentence_b, score)
    rows = []
    if format == "jsonl":
        for number, line in read_lines(path):
            if line.strip():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{number}: not valid JSON ({e.msg})") from None
                if not isinstance(record, dict):
                    raise DataError(f"{path}:{number}: expected a JSON object")
                rows.append((number, record))
    else:
        lines = list(read_lines(path))
        text = io.StringIO("\n".join(line for _, line in lines))
        # A sentence may be long: no field-size limit (Python's default is 131,072).
        csv.field_size_limit(sys.maxsize)
        reader = csv.DictReader(text, delimiter="\t" if format == "tsv" else ",")
        if reader.fieldnames is None:
            raise DataError(f"{path}: no sentence pairs found")
        missing = [n for n in names if n not in reader.fieldnames]
        if missing:
            raise DataError(
                f"{path}:1: missing column {missing[0]!r} (header has {reader.fieldnames})"
            )
        for record in reader:
            rows.append((lines[reader.line_num - 1][0], record))
    sentences_a, sentences_b, scores = [], [], []
    for number, record in rows:
        if limit is not None and len(scores) >= limit:
            break
        missing = [n for n in names if record.get(n) is None]
        if missing:
            raise DataError(f"{path}:{number}: missing column {missing[0]!r}")
        for name in (sentence_a, sentence_b):
            if not isinstance(record[name], str):
                raise DataError(
                    f"{path}:{number}: {name!r} must be a string, got "
                    f"{type(record[name]).__name__} {record[name]!r:.60}"
                )
        if isinstance(record[score], (bool, list, dict)):
            raise DataError(
                f"{path}:{number}: {score!r} must be a number, got "
                f"{type(record[score]).__name__} {record[score]!r:.60}"
            )
        a, b = record[sentence_a].strip(), record[sentence_b].strip()
        if not a or not b:
            raise DataError(f"{path}:{number}: empty sentence")
        scores.append(_check_score(path, number, record[score], max_score))
        sentences_a.append(a)
        sentences_b.append(b)
    if not scores:
        raise DataError(f"{path}: no sentence pairs found")
    return sentences_a, sentences_b, np.asarray(scores, dtype="float32")


def read_sentences(path, column=0, limit=None, keep_blank=False):
    """Reads one sentence per line (the `column`-th tab-separated field).

    Suits plain text files and the SST-2 `sentence<TAB>label` files.

    Args:
        path: str.
        column: int or `None`. Which tab-separated field holds the sentence;
            `None` takes the whole line as it is (tabs and spaces kept).
        limit: int or `None`.
        keep_blank: bool. Keep blank lines as empty sentences, so that
            sentence `i` is line `i + 1` (`kd-keras embed`); by default they
            are skipped.

    Returns:
        list of str.

    Raises:
        DataError: a missing file, a non-UTF-8 line, or no sentence at all.
    """
    sentences = []
    for number, line in read_lines(path):
        if limit is not None and len(sentences) >= limit:
            break
        if column is None:
            text = line
        else:
            fields = line.split("\t")
            if len(fields) <= column:
                if not line.strip() and keep_blank:
                    fields = [""] * (column + 1)
                else:
                    raise DataError(
                        f"{path}:{number}: expected at least {column + 1} tab-separated fields"
                    )
            text = fields[column].strip()
        if text.strip() or keep_blank:
            sentences.append(text)
    if not sentences:
        raise DataError(f"{path}: no sentences found")
    return sentences


def read_sst2(path, limit=None):
    """Reads an SST-2 file of `sentence<TAB>label` lines: `(sentences, int32 labels)`."""
    sentences, labels = [], []
    for number, line in read_lines(path):
        if limit is not None and len(labels) >= limit:
            break
        if not line.strip():
            continue
        text, _, label = line.rpartition("\t")
        if label.strip() not in ("0", "1") or not text.strip():
            raise DataError(f"{path}:{number}: expected 'sentence<TAB>0|1'")
        sentences.append(text.strip())
        labels.append(int(label))
    if not labels:
        raise DataError(f"{path}: no examples found")
    return sentences, np.asarray(labels, np.int32)


def _labeled_format(path):
    """`"jsonl"`, `"tsv"` or `"csv"`: by the extension, else by the first line."""
    name = str(path).lower().removesuffix(".gz")
    for ext, format in ((".jsonl", "jsonl"), (".json", "jsonl"), (".tsv", "tsv"), (".csv", "csv")):
        if name.endswith(ext):
            return format
    for _, line in read_lines(path):
        if line.strip():
            return "jsonl" if line.lstrip().startswith("{") else "tsv" if "\t" in line else "csv"
    raise DataError(f"{path}: no labeled texts found (the file is empty)")


def _table_records(path, format, names):
    """`(line number, dict)` of each row of a JSON-lines file, or of a CSV/TSV file
    with a header row that has the columns `names`."""
    if format == "jsonl":
        for number, line in read_lines(path):
            if line.strip():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{number}: not valid JSON ({e.msg})") from None
                if not isinstance(record, dict):
                    raise DataError(f"{path}:{number}: expected a JSON object")
                yield number, record
        return
    lines = list(read_lines(path))
    text = io.StringIO("\n".join(line for _, line in lines))
    csv.field_size_limit(sys.maxsize)  # a text may be long (Python's default is 131,072)
    reader = csv.DictReader(text, delimiter="\t" if format == "tsv" else ",")
    try:
        header = reader.fieldnames
        missing = [n for n in names if header is not None and n not in header]
        if missing:
            separator = "tab" if format == "tsv" else "comma"
            raise DataError(
                f"{path}:1: missing column {missing[0]!r} (the {separator}-separated header "
                f"has {header})"
            )
        for record in reader:
            number = lines[reader.line_num - 1][0]
            if None in record:
                raise DataError(
                    f"{path}:{number}: {len(header) + len(record[None])} fields, the header "
                    f"has {len(header)}"
                )
            yield number, record
    except csv.Error as e:
        raise DataError(f"{path}:{lines[reader.line_num - 1][0]}: malformed row ({e})") from None


def _check_label(path, number, name, value):
    """A label as read: an int, or a non-empty stripped string."""
    if isinstance(value, str) and value.strip():
        return value.strip()
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    got = "an empty string" if isinstance(value, str) else f"{type(value).__name__} {value!r:.60}"
    raise DataError(f"{path}:{number}: {name!r} must be a string or an integer, got {got}")


def _as_integer(label):
    """The int a label stands for (`3`, `"3"`, `" -1"`), else `None`."""
    if isinstance(label, int):
        return label
    text = label.strip()
    digits = text[1:] if text[:1] in "+-" else text
    return int(text) if digits.isdigit() and digits.isascii() else None


def label_classes(labels):
    """The sorted distinct classes of labels: ints when every label is an integer
    (`3` or `"3"`), else strings (ints written as strings)."""
    integers = [_as_integer(label) for label in labels]
    if all(i is not None for i in integers):
        return sorted(set(integers))
    return sorted({str(label) for label in labels})


def read_labeled_texts(path, text="text", label="label", classes=None, limit=None, format=None):
    """Reads labeled texts from a CSV or TSV file with a header row, or JSON lines.

    Labels are strings or integers. The training file (no `classes`) gives
    the classes: the distinct labels of the whole file, sorted (see
    `label_classes`). A dev or test file is read with those classes, and a
    label that is not one of them is an error naming its line.

    Args:
        path: str.
        text, label: str. Column (JSON key) names.
        classes: list of int or str (as returned for the training file), or
            `None` to take them from this file.
        limit: int or `None`. Keep only the first `limit` examples (the
            classes still come from the whole file).
        format: `"csv"`, `"tsv"`, `"jsonl"`, or `None`: by the extension
            (`.jsonl`, `.json`, `.tsv`, `.csv`, also with `.gz`), else JSON
            lines if the first line starts with `{`, TSV if it has a tab,
            else CSV.

    Returns:
        `(texts, labels, classes)`: list of str, int32 indices into
        `classes`, and the classes.

    Raises:
        DataError: naming the file and line of a missing column, a row with
            more fields than the header, malformed JSON, an empty text, a
            label that is not a string or an integer or not a known class;
            or an empty file.
    """
    format = format or _labeled_format(path)
    if format not in ("csv", "tsv", "jsonl"):
        raise ValueError(f"Unknown data format {format!r}; use csv, tsv or jsonl.")
    rows = []
    for number, record in _table_records(path, format, (text, label)):
        missing = [n for n in (text, label) if record.get(n) is None]
        if missing:
            raise DataError(f"{path}:{number}: missing column {missing[0]!r}")
        value = record[text]
        if not isinstance(value, str):
            raise DataError(
                f"{path}:{number}: {text!r} must be a string, got {type(value).__name__} "
                f"{value!r:.60}"
            )
        if not value.strip():
            raise DataError(f"{path}:{number}: empty text")
        rows.append((number, value.strip(), _check_label(path, number, label, record[label])))
    if not rows:
        raise DataError(f"{path}: no labeled texts found")
    if classes is None:
        classes = label_classes([row[2] for row in rows])
    rows = rows[:limit] if limit is not None else rows
    integers = all(isinstance(c, int) for c in classes)
    index = {c: i for i, c in enumerate(classes)}
    labels = []
    for number, _, value in rows:
        key = _as_integer(value) if integers else str(value)
        if key not in index:
            shown = ", ".join(str(c) for c in classes[:20]) + (" ..." if len(classes) > 20 else "")
            raise DataError(
                f"{path}:{number}: label {value!r} does not occur in the training data "
                f"(classes: {shown})"
            )
        labels.append(index[key])
    return [row[1] for row in rows], np.asarray(labels, np.int32), list(classes)


def corpus_files(patterns):
    """The files that paths and glob patterns name, in order, each once.

    Local paths, or object-store ones (`gs://bucket/*.txt.gz`, globbed by
    `tf.io.gfile`).

    Raises:
        DataError: a pattern that matches no file, a missing file or a folder.
    """
    files = []
    for pattern in patterns:
        pattern = str(pattern)
        matches = filesystems.glob(pattern) if glob.has_magic(pattern) else [pattern]
        if not matches:
            raise DataError(f"{pattern}: no file matches")
        for path in matches:
            if filesystems.is_dir(path):
                raise DataError(f"{path}: is a folder, not a file")
            if not filesystems.is_file(path):
                raise DataError(f"{path}: no such file")
            if path not in files:
                files.append(path)
    return files


def iter_corpus(patterns, limit=None):
    """Yields the sentences of text files, one per line, streaming (`.gz` too).

    Lines are stripped; blank lines are skipped. At most `limit` sentences,
    taken in file order.

    Args:
        patterns: paths or glob patterns (`corpus_files`).
        limit: int or `None`.

    Raises:
        DataError: naming the file (and line): a missing file, a folder, a
            line that is not UTF-8, or a file with no sentence at all.
    """
    count = 0
    for path in corpus_files(patterns):
        found = False
        for _, line in read_lines(path):
            if limit is not None and count >= limit:
                return
            text = line.strip()
            if text:
                found = True
                count += 1
                yield text
        if not found:
            raise DataError(f"{path}: no sentences found")
