"""The data kd-keras trains on: where it lives, and readers that name bad input.

`data_dir()` finds the data folder the same way from a checkout and from an
installed wheel: an explicit folder (`--data-dir`), else the environment
variable `KD_KERAS_DATA`, else the checkout's own `data/` when kd-keras runs
from a checkout; with none of them, a `DataError` names both ways to give it.
`data_path("stsb", "sts-train.csv")` is a file in it.

Readers: `read_lines` (UTF-8, byte-order mark skipped, a line at a time),
`read_stsb`, `read_pairs` (STS-B, CSV, TSV, JSON lines), `read_sentences` (one
per line) and `read_sst2` (`sentence<TAB>label`). A bad file stops with a
`DataError` naming the file and the line.
"""

import csv
import glob
import gzip
import io
import json
import os
import pathlib
import sys

import numpy as np

__all__ = [
    "DATA_ENV",
    "DataError",
    "data_dir",
    "corpus_files",
    "data_path",
    "iter_corpus",
    "read_lines",
    "read_cnsd",
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
    the start of the file is skipped. A `.gz` file is read through gzip.

    Raises:
        DataError: the file is missing or a folder, or a line is not valid UTF-8.
    """
    if os.path.isdir(path):
        raise DataError(f"{path}: is a folder, not a file")
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such file")
    number = 0
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
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


def corpus_files(patterns):
    """The files that paths and glob patterns name, in order, each once.

    Raises:
        DataError: a pattern that matches no file, a missing file or a folder.
    """
    files = []
    for pattern in patterns:
        pattern = str(pattern)
        matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        if not matches:
            raise DataError(f"{pattern}: no file matches")
        for path in matches:
            if os.path.isdir(path):
                raise DataError(f"{path}: is a folder, not a file")
            if not os.path.isfile(path):
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
