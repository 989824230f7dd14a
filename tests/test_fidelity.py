"""Teacher-student fidelity without labels (`kd_keras.fidelity`) against brute-force references."""

import itertools
import math

import numpy as np
import pytest

from kd_keras import fidelity as fid


def _cosine(u, v):
    return float(np.dot(u, v) / (np.linalg.norm(u) * np.linalg.norm(v)))


def _spearman(a, b):
    """Pearson of the ranks, ties averaged, written out with loops."""

    def ranks(x):
        order = sorted(range(len(x)), key=lambda i: x[i])
        r = [0.0] * len(x)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and x[order[j + 1]] == x[order[i]]:
                j += 1
            for m in range(i, j + 1):
                r[order[m]] = (i + j) / 2
            i = j + 1
        return r

    ra, rb = ranks(a), ranks(b)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb, strict=True))
    var_a = sum((x - ma) ** 2 for x in ra)
    var_b = sum((y - mb) ** 2 for y in rb)
    return cov / math.sqrt(var_a * var_b)


def _recall(teacher, student, k):
    """Recall@k by sorting every row's cosines (distinct cosines: no ties)."""
    n, total = len(teacher), 0.0
    for i in range(n):
        others = [j for j in range(n) if j != i]
        near_t = sorted(others, key=lambda j: -_cosine(teacher[i], teacher[j]))[:k]
        near_s = sorted(others, key=lambda j: -_cosine(student[i], student[j]))[:k]
        total += len(set(near_t) & set(near_s)) / k
    return 100 * total / n


def _embeddings(n=40, d=6, seed=0):
    return np.random.default_rng(seed).normal(size=(n, d))


def test_identical_embeddings_agree_fully_whatever_their_scale():
    teacher = _embeddings()
    r = fid.fidelity(teacher, 3.0 * teacher)  # cosines ignore the length
    assert r["spearman"] == pytest.approx(100.0)
    assert r["recall_at_k"] == 100.0 and r["k"] == 10
    assert r["sentences"] == 40 and r["pairs"] == 40 * 39 // 2  # fewer than 2000: all pairs
    for d in r["disagreements"]:
        assert d["teacher"] == pytest.approx(d["student"])


def test_a_permuted_student_agrees_little():
    teacher = _embeddings(200, 8)
    student = teacher[np.random.default_rng(1).permutation(200)]  # right vectors, wrong rows
    r = fid.fidelity(teacher, student)
    assert abs(r["spearman"]) < 15
    assert r["recall_at_k"] < 15  # chance is 10 / 199, about 5%


def test_figures_match_brute_force_references():
    teacher = _embeddings(30, 5, seed=2)
    student = teacher + np.random.default_rng(3).normal(scale=0.6, size=teacher.shape)
    r = fid.fidelity(teacher, student, pairs=None, k=4, top=3)
    pairs = list(itertools.combinations(range(30), 2))
    t = [_cosine(teacher[i], teacher[j]) for i, j in pairs]
    s = [_cosine(student[i], student[j]) for i, j in pairs]
    assert r["pairs"] == len(pairs)
    assert r["spearman"] == pytest.approx(100 * _spearman(t, s), abs=1e-9)
    assert r["recall_at_k"] == pytest.approx(_recall(teacher, student, 4), abs=1e-9)
    gaps = sorted(range(len(pairs)), key=lambda p: -abs(t[p] - s[p]))[:3]
    assert [(d["first"], d["second"]) for d in r["disagreements"]] == [pairs[p] for p in gaps]
    for d, p in zip(r["disagreements"], gaps, strict=True):
        assert d["teacher"] == pytest.approx(t[p]) and d["student"] == pytest.approx(s[p])


def test_sampled_pairs_are_distinct_seeded_and_those_scored():
    first, second = fid.random_pairs(100, pairs=500, seed=7)
    assert len(first) == 500 and (first < second).all() and second.max() < 100
    assert len(set(zip(first.tolist(), second.tolist(), strict=True))) == 500
    again = fid.random_pairs(100, pairs=500, seed=7)
    assert (again[0] == first).all() and (again[1] == second).all()
    # The index-to-pair mapping against NumPy's own upper triangle.
    rows, cols = np.triu_indices(100, 1)
    every = fid.random_pairs(100, pairs=len(rows) - 1, seed=0)
    mapped = set(zip(every[0].tolist(), every[1].tolist(), strict=True))
    assert mapped <= set(zip(rows.tolist(), cols.tolist(), strict=True))
    assert len(mapped) == len(rows) - 1
    # The Spearman is over exactly those pairs.
    teacher, student = _embeddings(100, 4, 4), _embeddings(100, 4, 5) + _embeddings(100, 4, 4)
    r = fid.fidelity(teacher, student, pairs=500, seed=7)
    t = [_cosine(teacher[i], teacher[j]) for i, j in zip(first, second, strict=True)]
    s = [_cosine(student[i], student[j]) for i, j in zip(first, second, strict=True)]
    assert r["pairs"] == 500
    assert r["spearman"] == pytest.approx(100 * _spearman(t, s), abs=1e-9)


def test_fewer_than_k_plus_one_sentences_clip_k():
    teacher = _embeddings(6, 4, 8)
    student = teacher + 0.3 * _embeddings(6, 4, 9)
    r = fid.fidelity(teacher, student)
    assert r["k"] == 5  # every other sentence: recall@5 of 6 sentences is always 100
    assert r["recall_at_k"] == 100.0
    assert fid.neighbour_recall(teacher, student, k=2) == (
        pytest.approx(_recall(teacher, student, 2)),
        2,
    )
    with pytest.raises(ValueError, match="at least 3 sentences; got 2"):
        fid.fidelity(teacher[:2], student[:2])


@pytest.mark.parametrize(
    "change, message",
    [
        (
            lambda t, s: (t, np.where(np.arange(20)[:, None] == 4, np.nan, s)),
            "student .* not finite",
        ),
        (
            lambda t, s: (np.where(np.arange(20)[:, None] == 2, np.inf, t), s),
            "teacher .* first row 2",
        ),
        (lambda t, s: (t, np.where(np.arange(20)[:, None] == 3, 0.0, s)), "all-zero row.*row 3"),
        (lambda t, s: (t, s[:-1]), "different numbers of sentences: 20 and 19"),
        (lambda t, s: (t[0], s[0]), r"\[sentences, dimensions\]"),
    ],
)
def test_bad_embeddings_are_clear_errors(change, message):
    teacher, student = change(_embeddings(20), _embeddings(20, seed=1))
    with pytest.raises(ValueError, match=message):
        fid.fidelity(teacher, student)


def test_summary_and_samples():
    results = {
        "a": {"spearman": 80.0, "recall_at_k": 40.0},
        "b": {"spearman": 60.0, "recall_at_k": 50.0},
    }
    assert fid.summarize(results) == {
        "mean": {"spearman": 70.0, "recall_at_k": 45.0},
        "worst": {
            "spearman": {"source": "b", "value": 60.0},
            "recall_at_k": {"source": "a", "value": 40.0},
        },
    }
    sentences = [f"s{i}" for i in range(50)]
    sample = fid.sample_sentences(sentences, 10, seed=3)
    assert len(sample) == 10 and sample == sorted(sample, key=sentences.index)
    assert sample == fid.sample_sentences(sentences, 10, seed=3)
    assert fid.sample_sentences(sentences, 0) == sentences
    assert fid.sample_sentences(sentences, 60) == sentences
    named = fid.name_pairs({"disagreements": [{"first": 2, "second": 5}]}, sentences)
    assert named["disagreements"] == [
        {"first": 2, "second": 5, "first_sentence": "s2", "second_sentence": "s5"}
    ]


def test_per_source_scores_each_sources_own_rows():
    rng = np.random.default_rng(3)
    teacher = rng.normal(size=(30, 6))
    student = teacher.copy()
    student[10:20] = rng.permutation(student[10:20])  # source "b" scrambled
    sets = {name: [f"{name} {i}" for i in range(10)] for name in ("a", "b", "c")}
    results = fid.per_source(teacher, student, sets, pairs=None, seed=1)
    assert list(results) == ["a", "b", "c"]
    for name, rows in (("a", slice(0, 10)), ("b", slice(10, 20)), ("c", slice(20, 30))):
        expected = fid.name_pairs(
            fid.fidelity(teacher[rows], student[rows], None, seed=1), sets[name]
        )
        assert results[name] == expected
    assert results["a"]["spearman"] == pytest.approx(100.0) and results["b"]["spearman"] < 90.0
    assert results["b"]["disagreements"][0]["first_sentence"].startswith("b ")
    with pytest.raises(ValueError, match="The sets hold 20 sentences; the embeddings 30 rows"):
        fid.per_source(teacher, student, {"a": sets["a"], "b": sets["b"]})
