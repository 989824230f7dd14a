"""Teacher-student agreement on unlabeled sentences: fidelity without gold labels.

Given the two models' embeddings of the same `N` sentences (`[N, D]` each,
teacher first), three figures say how closely the student imitates the
teacher where there is nothing else to compare it with:

- `spearman`: Spearman x100 between the teacher's and the student's cosine
  similarities of `pairs` random sentence pairs (two different sentences,
  each unordered pair at most once, seeded; all `N (N - 1) / 2` pairs when
  there are no more than `pairs`);
- `recall_at_k`: nearest-neighbour recall@k x100: for each sentence, the share
  of its `k` nearest neighbours by the teacher (cosine, itself excluded) that
  are also among its `k` nearest by the student, averaged over the sentences;
  with fewer than `k + 1` sentences `k` is clipped to `N - 1` (the result says
  which `k` it used);
- `disagreements`: of the sampled pairs, the `top` whose two cosines differ
  most (largest |teacher cosine - student cosine|), with both cosines.

Pure NumPy; `kd-keras evaluate` and the `kd-keras distill` report use it.

Example:

```python
import numpy as np
from kd_keras.fidelity import fidelity

teacher = np.random.default_rng(0).normal(size=(100, 8))
r = fidelity(teacher, teacher)
assert r["spearman"] == 100.0 and r["recall_at_k"] == 100.0
```
"""

import numpy as np

from kd_keras.correlation import spearman

__all__ = [
    "NEIGHBOURS",
    "PAIRS",
    "TOP",
    "fidelity",
    "name_pairs",
    "neighbour_recall",
    "pair_cosines",
    "per_source",
    "random_pairs",
    "sample_sentences",
    "summarize",
]

PAIRS = 2000  # random pairs for the Spearman
NEIGHBOURS = 10  # k of recall@k
TOP = 5  # disagreeing pairs listed
_BLOCK = 1024  # rows of the cosine matrix held at once (recall@k)


def _unit_rows(embeddings, name):
    """`embeddings` as float64 rows of unit length; a clear `ValueError` otherwise."""
    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"{name} embeddings must be [sentences, dimensions]; got shape {x.shape}")
    bad = np.flatnonzero(~np.isfinite(x).all(axis=1))
    if bad.size:
        raise ValueError(
            f"{name} embeddings are not finite (NaN or infinity) in {bad.size} of {len(x)} rows, "
            f"the first row {bad[0]}"
        )
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    zero = np.flatnonzero(norms[:, 0] == 0)
    if zero.size:
        raise ValueError(
            f"{name} embeddings have {zero.size} all-zero row(s) (no cosine), the first row "
            f"{zero[0]}"
        )
    return x / norms


def _checked(teacher, student):
    t = _unit_rows(teacher, "teacher")
    s = _unit_rows(student, "student")
    if len(t) != len(s):
        raise ValueError(
            f"teacher and student embed different numbers of sentences: {len(t)} and {len(s)}"
        )
    if len(t) < 3:
        raise ValueError(f"fidelity needs at least 3 sentences; got {len(t)}")
    return t, s


def random_pairs(n, pairs=PAIRS, seed=0):
    """`(first, second)` index arrays of distinct unordered sentence pairs, `first < second`.

    All `n (n - 1) / 2` pairs (in row order) when there are no more than
    `pairs`; else `pairs` of them drawn without replacement (seeded), sorted.
    """
    total = n * (n - 1) // 2
    if pairs is None or total <= pairs:
        return np.triu_indices(n, 1)
    index = np.sort(np.random.default_rng(seed).choice(total, size=int(pairs), replace=False))
    # Row i of the upper triangle starts at pair number i * (2n - i - 1) / 2.
    starts = np.arange(n) * (2 * n - np.arange(n) - 1) // 2
    first = np.searchsorted(starts, index, side="right") - 1
    second = index - starts[first] + first + 1
    return first, second


def pair_cosines(unit, first, second):
    """Cosines of the pairs `(first[i], second[i])` of unit-length rows."""
    return np.einsum("ij,ij->i", unit[first], unit[second])


def _neighbours(unit, k):
    """Each row's `k` nearest other rows by cosine, `[N, k]` (ties in any order)."""
    found = np.empty((len(unit), k), dtype=np.int64)
    for start in range(0, len(unit), _BLOCK):
        rows = np.arange(start, min(start + _BLOCK, len(unit)))
        cosines = unit[rows] @ unit.T
        cosines[np.arange(len(rows)), rows] = -np.inf  # never itself
        found[rows] = np.argpartition(-cosines, k - 1, axis=1)[:, :k]
    return found


def neighbour_recall(teacher, student, k=NEIGHBOURS):
    """Nearest-neighbour recall@k x100 and the `k` used: `(recall, k)`.

    Formula: `100 * mean_i |T_k(i) & S_k(i)| / k`, where `T_k(i)` and `S_k(i)`
    are the `k` sentences of highest cosine to sentence `i` (itself excluded)
    by the teacher and by the student; `k` is clipped to `N - 1`.
    """
    t, s = _checked(teacher, student)
    k = min(int(k), len(t) - 1)
    if k < 1:
        raise ValueError(f"k must be at least 1; got {k}")
    t_near, s_near = _neighbours(t, k), _neighbours(s, k)
    hits = np.count_nonzero(t_near[:, :, None] == s_near[:, None, :])  # rows hold no repeats
    return 100.0 * hits / (len(t) * k), k


def fidelity(teacher, student, pairs=PAIRS, k=NEIGHBOURS, top=TOP, seed=0):
    """Teacher-student agreement on the same sentences (see the module's docstring).

    Args:
        teacher: float array `[N, D]`, the teacher's embeddings (any length;
            cosines are taken).
        student: float array `[N, D']`, the student's, same rows.
        pairs: int. Random pairs for the Spearman (`None`: all pairs).
        k: int. Neighbours of recall@k (clipped to `N - 1`).
        top: int. Disagreeing pairs to list.
        seed: int. Seed of the pairs.

    Returns:
        dict: `sentences`, `pairs` (how many were compared), `spearman` (x100;
        NaN when either model's cosines of the pairs are all equal), `k`,
        `recall_at_k` (x100) and `disagreements`: a list of `{"first",
        "second", "teacher", "student"}` (sentence indices, both cosines),
        largest |difference| first.

    Raises:
        ValueError: not 2-D, a NaN, infinite or all-zero row, a different
            number of rows, or fewer than 3 sentences.
    """
    t, s = _checked(teacher, student)
    first, second = random_pairs(len(t), pairs, seed)
    t_cos, s_cos = pair_cosines(t, first, second), pair_cosines(s, first, second)
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = 100.0 * spearman(t_cos, s_cos)
    recall, used_k = neighbour_recall(t, s, k)
    worst = np.argsort(-np.abs(t_cos - s_cos), kind="stable")[: int(top)]
    return {
        "sentences": len(t),
        "pairs": len(first),
        "spearman": float(rho),
        "k": used_k,
        "recall_at_k": float(recall),
        "disagreements": [
            {
                "first": int(first[i]),
                "second": int(second[i]),
                "teacher": float(t_cos[i]),
                "student": float(s_cos[i]),
            }
            for i in worst
        ],
    }


def name_pairs(result, sentences):
    """A copy of a `fidelity` result whose disagreements also hold their two sentences
    (`first_sentence`, `second_sentence`)."""
    named = [
        {**d, "first_sentence": sentences[d["first"]], "second_sentence": sentences[d["second"]]}
        for d in result["disagreements"]
    ]
    return {**result, "disagreements": named}


def per_source(teacher, student, sets, **settings):
    """`fidelity` of each source's rows, with its disagreements named (`name_pairs`).

    Args:
        teacher, student: float arrays `[N, D]`, `[N, D']`: the embeddings of
            every source's sentences, one source after the other, in the
            order of `sets`.
        sets: dict `{source: list of its sentences}`.
        **settings: `pairs`, `k`, `top`, `seed` of `fidelity`.

    Returns:
        `{source: result}`, ready for `summarize`.
    """
    results, start = {}, 0
    for source, sentences in sets.items():
        rows = slice(start, start + len(sentences))
        start += len(sentences)
        results[source] = name_pairs(
            fidelity(np.asarray(teacher[rows]), np.asarray(student[rows]), **settings), sentences
        )
    if start != len(teacher):
        raise ValueError(f"The sets hold {start} sentences; the embeddings {len(teacher)} rows.")
    return results


def summarize(results):
    """The mean and the worst of per-source `fidelity` results.

    Args:
        results: dict `{source: fidelity(...) result}`, at least one.

    Returns:
        `{"mean": {"spearman", "recall_at_k"}, "worst": {"spearman":
        {"source", "value"}, "recall_at_k": {"source", "value"}}}`, each
        figure's worst source on its own.
    """
    figures = ("spearman", "recall_at_k")
    mean = {f: float(np.mean([r[f] for r in results.values()])) for f in figures}
    worst = {}
    for f in figures:
        source = min(results, key=lambda name, f=f: results[name][f])
        worst[f] = {"source": source, "value": float(results[source][f])}
    return {"mean": mean, "worst": worst}


def sample_sentences(sentences, limit, seed=0):
    """At most `limit` of `sentences`, drawn without replacement (seeded), in their order.

    `limit` `None` or 0 keeps them all.
    """
    sentences = list(sentences)
    if not limit or len(sentences) <= limit:
        return sentences
    keep = np.sort(np.random.default_rng(seed).choice(len(sentences), int(limit), replace=False))
    return [sentences[i] for i in keep]
