"""The fidelity step of `kd-keras distill`: the student's agreement with its teacher
on sentences without labels, per source, through the two exports.

By default the sentences are the held-out tails of the transfer corpus files
(`kd_keras.transfer.split_heldout`: never sampled for training), `--fidelity-limit`
(300) of each, a seeded sample; `--fidelity FILES` takes your own files
instead (a transfer-en or transfer-zh file among them still gives only its tail), and
`--fidelity none` skips the step. Both raw-text exports embed them in a fresh
process, as they are measured on STS-B; the teacher's embeddings are cached
beside its export (keyed by its `fingerprint.pb` and the sentences). The
figures are `kd_keras.fidelity`'s.
"""

import os
import pathlib

from kd_keras import evaluation
from kd_keras.data import DataError, corpus_files, read_sentences
from kd_keras.fidelity import NEIGHBOURS, PAIRS, per_source, sample_sentences, summarize
from kd_keras.storage import cached_arrays, digest, file_sha256
from kd_keras.transfer import heldout_sentences, is_heldout_source

__all__ = ["fidelity_metrics", "fidelity_sets", "measure_fidelity"]


def fidelity_sets(c, heldout=None):
    """`{source name: {"path", "held_out", "sentences"}}` to measure on, or a str saying
    why there are none (`held_out`: the file's held-out tail, a transfer corpus file).

    Read before the teacher pass, so that a bad file stops the run early.

    Args:
        c: the resolved `DistillConfig`.
        heldout: `{absolute path: held-out sentences}` already read (the
            sampler's by-product), so that those files are not read again.

    Raises:
        DataError: a missing file, or a file with fewer than 3 sentences.
    """
    if c.fidelity == "none":
        return "off (--fidelity none)"
    if c.fidelity is None:
        return (
            "skipped: the data folder has no transfer-en corpus (--fidelity FILES measures it on "
            "your own sentences)"
        )
    heldout = heldout or {}
    sets = {}
    for path in corpus_files(p.strip() for p in c.fidelity.split(",") if p.strip()):
        if os.path.abspath(path) in heldout:
            sentences = heldout[os.path.abspath(path)]
        elif is_heldout_source(path):
            sentences = heldout_sentences(path)
        else:
            sentences = read_sentences(path)
        sample = sample_sentences(sentences, c.fidelity_limit, c.seed)
        if len(sample) < 3:
            raise DataError(
                f"{path}: --fidelity needs at least 3 sentences per file; it has {len(sample)}"
            )
        name = os.path.basename(path)
        sets[path if name in sets else name] = {
            "path": str(path),
            "held_out": is_heldout_source(path),
            "sentences": sample,
        }
    return sets


def _teacher_embeddings(cache, teacher_dir, sentences, compute):
    """The teacher export's embeddings of `sentences`, cached in `cache`."""
    key = digest(file_sha256(pathlib.Path(teacher_dir) / "fingerprint.pb"), sentences)
    path = pathlib.Path(cache) / f"teacher-fidelity-{key}.npz"
    return cached_arrays(path, key, lambda: {"embeddings": compute()})["embeddings"]


def measure_fidelity(c, cache, teacher_dir, student_dir, sets):
    """Per-source fidelity of the student export to the teacher export.

    Args:
        c: the resolved `DistillConfig` (its `seed`).
        cache: the cache folder.
        teacher_dir, student_dir: the two raw-text exports.
        sets: `fidelity_sets(...)`, a dict.

    Returns:
        The metrics' `fidelity` dict: `sentences_per_source` (the limit),
        `pairs` and `k` (the settings), `sources`: `{name: fidelity result
        with named disagreements, its "file" and whether "held_out"}`, and
        `mean` and `worst` (`summarize`).
    """
    every = [s for source in sets.values() for s in source["sentences"]]
    both = []

    def teacher_and_student():  # one process for both on a cold cache
        both.extend(evaluation.embed_text_exports_in_subprocess([teacher_dir, student_dir], every))
        return both[0]

    teacher = _teacher_embeddings(cache, teacher_dir, every, teacher_and_student)
    student = (
        both[1] if both else evaluation.embed_text_exports_in_subprocess([student_dir], every)[0]
    )
    results = per_source(
        teacher,
        student,
        {name: source["sentences"] for name, source in sets.items()},
        pairs=PAIRS,
        k=NEIGHBOURS,
        seed=c.seed,
    )
    sources = {
        name: {"file": source["path"], "held_out": source["held_out"], **results[name]}
        for name, source in sets.items()
    }
    return {
        "sentences_per_source": c.fidelity_limit,
        "pairs": PAIRS,
        "k": NEIGHBOURS,
        "sources": sources,
        **summarize(sources),
    }


def fidelity_metrics(c, teacher_dir, student_dir, sets, log):
    """The metrics' `fidelity` dict: `measure_fidelity`'s, or `{"skipped": why}` when
    `sets` is a str (`fidelity_sets`); says the result in one line through `log`."""
    if isinstance(sets, str):
        log(f"fidelity on unlabeled sentences: {sets}")
        return {"skipped": sets}
    fidelity = measure_fidelity(c, c.cache_dir, teacher_dir, student_dir, sets)
    mean, worst = fidelity["mean"], fidelity["worst"]["spearman"]
    log(
        f"fidelity on {len(fidelity['sources'])} source(s) of unlabeled sentences: mean "
        f"Spearman {mean['spearman']:.2f}, recall@{fidelity['k']} {mean['recall_at_k']:.2f}; "
        f"worst Spearman {worst['value']:.2f} ({worst['source']})"
    )
    return fidelity
