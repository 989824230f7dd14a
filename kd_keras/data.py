"""Readers for the sentence-pair data kd-keras trains on."""

import os

import numpy as np

__all__ = ["DataError", "read_lines", "read_stsb", "STSB_DIR"]

# The STS Benchmark shipped with the project (see data/stsb/LICENSE.txt).
STSB_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "stsb")


class DataError(ValueError):
    """A data file is missing, unreadable or malformed; the message names the
    file and, where it applies, the line."""


def read_lines(path):
    """Yields `(line_number, text)` for each line of a UTF-8 file, newline removed.

    Raises:
        DataError: the file is missing, or a line is not valid UTF-8.
    """
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such file")
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(
                    f"{path}:{number}: not valid UTF-8 ({e.reason} at byte {e.start})"
                ) from None
            yield number, text.rstrip("\r\n")


def read_stsb(path, limit=None):
    """Reads an STS Benchmark file: `(sentences_a, sentences_b, scores)`.

    The format is tab-separated without a header or quoting: genre, file,
    year, id, score (0-5), sentence 1, sentence 2, and sometimes two licence
    columns after them.

    Args:
        path: str. E.g. `os.path.join(STSB_DIR, "sts-train.csv")`.
        limit: int or `None`. Read only the first `limit` pairs.

    Returns:
        Two lists of str and a float32 array of gold scores in [0, 5].

    Raises:
        DataError: naming the file and line of a missing column, a score that
            is not a number in [0, 5], or an empty sentence; or an empty file.
    """
    sentences_a, sentences_b, scores = [], [], []
    for number, line in read_lines(path):
        if limit is not None and len(scores) >= limit:
            break
        if not line.strip():
            continue
        columns = line.split("\t")
        if len(columns) < 7:
            raise DataError(
                f"{path}:{number}: expected at least 7 tab-separated columns "
                f"(genre, file, year, id, score, sentence1, sentence2), found {len(columns)}"
            )
        try:
            score = float(columns[4])
        except ValueError:
            raise DataError(f"{path}:{number}: score {columns[4]!r} is not a number") from None
        if not 0.0 <= score <= 5.0:
            raise DataError(f"{path}:{number}: score {score} is outside [0, 5]")
        a, b = columns[5].strip(), columns[6].strip()
        if not a or not b:
            raise DataError(f"{path}:{number}: empty sentence")
        sentences_a.append(a)
        sentences_b.append(b)
        scores.append(score)
    if not scores:
        raise DataError(f"{path}: no sentence pairs found")
    return sentences_a, sentences_b, np.asarray(scores, dtype="float32")
