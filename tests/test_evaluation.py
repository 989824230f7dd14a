"""`kd_keras.evaluation`: correlations, throughput and latency helpers."""

import time

import numpy as np
import pytest

from kd_keras.evaluation import latency, pearson, spearman, throughput


def test_spearman_is_pearson_of_tie_averaged_ranks():
    a = [1.0, 2.0, 2.0, 5.0, 4.0]
    b = [10.0, 30.0, 20.0, 50.0, 40.0]
    ranks_a = np.array([1, 2.5, 2.5, 5, 4])
    ranks_b = np.array([1, 3, 2, 5, 4])
    assert spearman(a, b) == pytest.approx(np.corrcoef(ranks_a, ranks_b)[0, 1], abs=1e-12)
    assert pearson(a, a) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="equal length"):
        pearson([1.0, 2.0], [1.0])


def test_throughput_and_latency_count_what_they_ran():
    calls = []

    def fn(batch):
        calls.append(len(batch))
        time.sleep(0.002)

    sentences = [f"s{i}" for i in range(10)]
    speed = throughput(fn, sentences, batch_size=4, warmup=1, min_seconds=0.01)
    assert calls[0] == 4  # the warm-up batch, not counted
    assert speed["sentences"] == sum(calls[1:]) and speed["sentences"] % 10 == 0
    calls.clear()
    timed = latency(fn, sentences, calls=7, warmup=2)
    assert calls == [1] * 9 and timed["calls"] == 7
    assert 1.5 <= timed["p50_ms"] <= timed["p99_ms"] < 1000
