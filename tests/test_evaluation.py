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


def test_compare_throughput_times_the_models_in_turns(monkeypatch):
    import types

    from kd_keras import evaluation, serving

    order, firsts = [], []

    def fake_export(name, pause):
        def embed(sentences):
            order.append(name)
            firsts.append((name, sentences.numpy()[0].decode()))
            time.sleep(pause)

        return types.SimpleNamespace(signatures={"embed": embed})

    exports = {"teacher": fake_export("teacher", 0.004), "student": fake_export("student", 0.001)}
    monkeypatch.setattr(serving, "load_text_export", lambda path: exports[path])
    sentences = [f"s{i}" for i in range(9)]
    rows = evaluation.compare_throughput(
        ["teacher", "student"], sentences, rounds=3, seconds=0.01, batch_size=3
    )
    # Warm-up of each, then three rounds of teacher turn, student turn.
    turns = [name for i, name in enumerate(order) if i == 0 or order[i - 1] != name]
    assert turns == ["teacher", "student"] * 4
    # Round r times every model on the same share: the r-th batch of three.
    timed = firsts[6:]  # after the warm-up: three calls of each
    shares = [sorted({first for _, first in group}) for group in _turns(timed)]
    assert shares == [["s0"], ["s0"], ["s3"], ["s3"], ["s6"], ["s6"]]
    for row in rows:
        assert len(row["rounds"]) == 3
        assert row["sentences_per_second"] == pytest.approx(np.median(row["rounds"]))
    ratios = np.array(rows[1]["rounds"]) / np.array(rows[0]["rounds"])
    assert rows[1]["ratio"] == pytest.approx(np.median(ratios))
    assert rows[0]["ratio"] == 1.0
    with pytest.raises(ValueError, match="rounds"):
        evaluation.compare_throughput(["teacher"], sentences, rounds=0)


def _turns(calls):
    """Consecutive calls of one model, grouped."""
    groups = []
    for name, first in calls:
        if not groups or groups[-1][0][0] != name:
            groups.append([])
        groups[-1].append((name, first))
    return groups


def test_compare_throughput_takes_functions_and_factories_beside_exports(monkeypatch):
    import sys
    import types

    from kd_keras import evaluation, serving

    order = []

    def export_embed(sentences):  # a SavedModel's `embed`: a tf.string tensor in
        order.append("export")
        assert sentences.dtype.name == "string"

    def function(batch):  # a plain `embed(list of str) -> array`
        order.append("function")
        assert isinstance(batch, list) and all(isinstance(s, str) for s in batch)
        return np.ones((len(batch), 4), np.float32)

    def make(width):
        assert width == 4
        return lambda batch: order.append("factory") or np.ones((len(batch), width))

    monkeypatch.setattr(
        serving,
        "load_text_export",
        lambda path: types.SimpleNamespace(signatures={"embed": export_embed}),
    )
    monkeypatch.setitem(sys.modules, "kd_test_factories", types.SimpleNamespace(make=make))
    factory = {"factory": "kd_test_factories:make", "kwargs": {"width": 4}}
    sentences = [f"s{i}" for i in range(6)]
    rows = evaluation.compare_throughput(
        ["teacher", function, factory], sentences, rounds=2, seconds=0.001, batch_size=3
    )
    turns = [name for i, name in enumerate(order) if i == 0 or order[i - 1] != name]
    assert turns == ["export", "function", "factory"] * 3  # the warm-up, then two rounds
    assert [len(row["rounds"]) for row in rows] == [2, 2, 2] and rows[0]["ratio"] == 1.0
    assert evaluation.text_embedder(function) is function
    with pytest.raises(TypeError, match="factory spec"):
        evaluation.compare_throughput_in_subprocess(["teacher", function], sentences)


def test_evaluate_scores_a_function_by_the_cosine_of_its_embeddings():
    from kd_keras import evaluation

    vectors = {"a": [1.0, 0.0], "b": [0.0, 2.0], "c": [3.0, 3.0], "d": [-1.0, 0.1]}

    def embed(batch):
        return np.array([vectors[s] for s in batch])

    a, b = ["a", "a", "c", "d"], ["b", "c", "c", "a"]
    gold = [0.0, 2.5, 5.0, 1.0]
    r = evaluation.evaluate_text_export(
        embed, a, b, gold, ["a", "b"], seconds=0.001, other_sets={"dev": (a, b, gold)}
    )
    cosines = [0.0, 1 / np.sqrt(2), 1.0, -1 / np.sqrt(1.01)]
    np.testing.assert_allclose(r["scores"], cosines, atol=1e-6)
    assert r["spearman"] == pytest.approx(100 * spearman(cosines, gold))
    assert r["sets"]["dev"]["spearman"] == r["spearman"] and r["sentences_per_second"] > 0
    timed = evaluation.evaluate_text_export(embed, a, b, gold, ["a"], None, latency_calls=3)
    assert timed["latency"]["calls"] == 3 and "sentences_per_second" not in timed
