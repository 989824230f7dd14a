"""Quality and speed measurements for reports: correlations and throughput."""

import time

import numpy as np

__all__ = ["rank", "pearson", "spearman", "cosine", "throughput"]


def rank(x):
    """Ranks from 0, ties sharing their average rank (as `scipy.stats.rankdata - 1`)."""
    x = np.asarray(x, dtype=np.float64).ravel()
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    # Start index of each run of equal values, and the run each item is in.
    starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])
    ends = np.r_[starts[1:], len(x)] - 1
    run = np.cumsum(np.r_[True, sorted_x[1:] != sorted_x[:-1]]) - 1
    ranks = np.empty(len(x))
    ranks[order] = ((starts + ends) / 2.0)[run]
    return ranks


def pearson(a, b):
    """Pearson correlation of two 1-D arrays."""
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if len(a) != len(b) or len(a) < 2:
        raise ValueError(f"Need two arrays of equal length >= 2; got {len(a)} and {len(b)}.")
    return float(np.corrcoef(a, b)[0, 1])


def spearman(a, b):
    """Spearman rank correlation (Pearson of the tie-averaged ranks)."""
    return pearson(rank(a), rank(b))


def cosine(a, b):
    """Row-wise cosine similarity of two `[N, D]` arrays (0 for a zero row)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    norms = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    return np.where(norms > 0, (a * b).sum(-1) / np.where(norms > 0, norms, 1.0), 0.0)


def throughput(fn, sentences, batch_size=64, warmup=1, min_seconds=2.0, max_batches=None):
    """Sentences per second of `fn(batch_of_strings)` over `sentences`.

    Runs `warmup` batches first (tracing, caches), then whole passes over the
    batches until at least `min_seconds` have passed.

    Returns:
        dict with `sentences_per_second`, `seconds`, `sentences`.
    """
    batches = [sentences[i : i + batch_size] for i in range(0, len(sentences), batch_size)]
    if max_batches is not None:
        batches = batches[:max_batches]
    for batch in batches[:warmup]:
        fn(batch)
    count, start = 0, time.perf_counter()
    while True:
        for batch in batches:
            fn(batch)
            count += len(batch)
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            break
    return {"sentences_per_second": count / elapsed, "seconds": elapsed, "sentences": count}
