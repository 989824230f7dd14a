"""Correlations of two score lists: Pearson, Spearman (tie-averaged ranks). Pure NumPy.

Used on gold scores (`kd_keras.evaluation`, which exports them as its own)
and between two models' scores (`kd_keras.fidelity`), with no TensorFlow.
"""

import numpy as np

__all__ = ["pearson", "rank", "spearman"]


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
