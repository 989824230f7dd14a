"""Quality and speed measurements for reports: correlations, throughput, the machine.

The correlations are `kd_keras.correlation`'s (pure NumPy), exported here too.
Raw-text SavedModels are loaded through `kd_keras.serving.load_text_export`;
the `*_in_subprocess` functions run the same measurements in a fresh Python
process (`python -m kd_keras.evaluation REQUEST RESULT`).
"""

import importlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np
import tensorflow as tf
from keras import ops

from kd_keras import serving
from kd_keras.correlation import pearson, rank, spearman
from kd_keras.models.heads import cosine_similarity

__all__ = [
    "compare_throughput",
    "compare_throughput_in_subprocess",
    "cpu_description",
    "embed_text_export",
    "embed_text_exports_in_subprocess",
    "evaluate_text_export",
    "evaluate_text_export_in_subprocess",
    "machine_description",
    "pearson",
    "rank",
    "spearman",
    "text_embedder",
    "throughput",
]


def cpu_description():
    """The CPU's model name and the number of cores this process may use."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{cpu}, {len(os.sched_getaffinity(0))} cores"


def machine_description():
    """`cpu_description()` and the TensorFlow version."""
    return f"{cpu_description()}, TensorFlow {tf.__version__}"


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


def text_embedder(model):
    """`embed(list of str)` of a model given as an export, a function or a factory.

    Args:
        model: the folder of a raw-text SavedModel (`kd_keras.serving`: its
            `embed` signature, whose outputs are left as TensorFlow gives
            them); a function `embed(list of str) -> [N, D] array`; or a
            factory spec `{"factory": "MODULE:FUNCTION", "kwargs": {...}}`,
            the function that, called with `kwargs`, returns such a function
            (what the `*_in_subprocess` functions take where a function cannot
            cross to the other process; `kd_keras.reference.onnx_embedder`).

    Returns:
        The function.
    """
    if callable(model):
        return model
    if isinstance(model, dict):
        module, _, name = model["factory"].partition(":")
        return getattr(importlib.import_module(module), name)(**model.get("kwargs", {}))
    embed = serving.load_text_export(model).signatures["embed"]
    return lambda batch: embed(sentences=tf.constant(batch))


def _is_export(model):
    return not callable(model) and not isinstance(model, dict)


def _portable(model):
    """`model` as the JSON of a request to another process (`text_embedder`)."""
    if callable(model):
        raise TypeError(
            f"{model!r}: a function cannot be passed to another process; give a factory spec "
            '{"factory": "MODULE:FUNCTION", "kwargs": {...}} (`text_embedder`).'
        )
    return model if isinstance(model, dict) else str(model)


def _label(model):
    if isinstance(model, dict):
        return f"{model['factory']}({model.get('kwargs', {})})"
    return str(model)


def compare_throughput(models, sentences, rounds=5, seconds=2.0, batch_size=64):
    """Sentences per second of several text encoders, timed in turns.

    Every model is loaded in this one process and warmed up; then each of
    `rounds` rounds runs every model's `embed`, one model after the other,
    over the round's share of the batches (every `rounds`-th batch), repeated
    until `seconds` have passed (`throughput`). A machine whose speed drifts
    while it is measured (a shared or throttled CPU) so weighs on all models
    alike, and the speed-up of a model over the first one is the median of
    the per-round ratios. A slow model runs each batch at least once, so one
    round takes it about a `rounds`-th of a pass over `sentences`.

    Args:
        models: folders of raw-text SavedModels (`kd_keras.serving`),
            functions `embed(list of str) -> [N, D] array` or factory specs,
            in any mix (`text_embedder`); the first is the reference of the
            ratios.
        sentences: list of str, run through `embed` in batches.
        rounds: int >= 1.
        seconds: float. Minimum duration of each model's turn in a round.
        batch_size: int.

    Returns:
        A list, one dict per model: `sentences_per_second` (median over the
        rounds), `rounds` (each round's figure) and `ratio` (median over the
        rounds of this model's speed over the first's).
    """
    if int(rounds) < 1:
        raise ValueError(f"`rounds` must be at least 1; received {rounds!r}.")
    fns = [text_embedder(model) for model in models]
    for fn in fns:  # tracing and caches before any turn
        throughput(fn, sentences, batch_size, warmup=1, min_seconds=0.0, max_batches=2)
    batches = [sentences[i : i + batch_size] for i in range(0, len(sentences), batch_size)]
    shares = [[s for b in batches[r :: int(rounds)] for s in b] for r in range(int(rounds))]
    speeds = np.array(
        [
            [
                throughput(fn, share or sentences, batch_size, warmup=0, min_seconds=seconds)[
                    "sentences_per_second"
                ]
                for fn in fns
            ]
            for share in shares
        ]
    )
    ratios = np.median(speeds / speeds[:, :1], axis=0)
    return [
        {
            "sentences_per_second": float(np.median(speeds[:, i])),
            "rounds": speeds[:, i].tolist(),
            "ratio": float(ratios[i]),
        }
        for i in range(len(fns))
    ]


def latency(fn, sentences, calls=200, warmup=3, max_seconds=30.0):
    """Per-call milliseconds of `fn([one sentence])`, over `calls` sentences in turn.

    Returns:
        dict with `p50_ms`, `p99_ms` and `calls` (fewer when `max_seconds` ran out).
    """
    for sentence in sentences[:warmup]:
        fn([sentence])
    times, start = [], time.perf_counter()
    for i in range(calls):
        t0 = time.perf_counter()
        fn([sentences[i % len(sentences)]])
        times.append(time.perf_counter() - t0)
        if time.perf_counter() - start > max_seconds:
            break
    times = 1e3 * np.asarray(times)
    return {
        "p50_ms": float(np.percentile(times, 50)),
        "p99_ms": float(np.percentile(times, 99)),
        "calls": len(times),
    }


def evaluate_text_export(
    model,
    sentences_a,
    sentences_b,
    gold,
    speed_sentences,
    seconds=10.0,
    other_sets=None,
    latency_calls=0,
):
    """Pair scores, correlations and CPU speed of a raw-text SavedModel or another encoder.

    Args:
        model: folder of an export with `similarity` and `embed` signatures
            (`kd_keras.serving`), or a function `embed(list of str) -> [N, D]
            array` or a factory spec (`text_embedder`), whose pair score is
            the cosine of the two embeddings (`kd_keras.models.heads.cosine_similarity`,
            as the exports' `similarity`).
        sentences_a, sentences_b: lists of str, the evaluation pairs.
        gold: gold scores of the pairs.
        speed_sentences: list of str run through `embed`, batch 64, for the
            throughput.
        seconds: float. Minimum duration of the throughput measurement;
            `None` for none (`compare_throughput` times several models).
        other_sets: dict `{name: (sentences_a, sentences_b, gold)}` of more
            pair sets to score (a dev split).
        latency_calls: int. Batch-1 calls of `embed` to time after the
            throughput (`latency`); 0 for none.

    Returns:
        dict: `scores` (list of the pairs' cosine similarities), `spearman`
        and `pearson` (x100), `sentences_per_second`, and `sets`:
        `{name: {"spearman", "pearson"}}` of `other_sets`, and with
        `latency_calls` a `latency` dict (`p50_ms`, `p99_ms`, `calls`).
    """
    if _is_export(model):
        loaded = serving.load_text_export(model)
        similarity = loaded.signatures["similarity"]
        signature = loaded.signatures["embed"]

        def embed(batch):
            return signature(sentences=tf.constant(batch))

        def batch_scores(a, b):
            out = similarity(sentence_a=tf.constant(a), sentence_b=tf.constant(b))
            return out["score"].numpy()
    else:
        embed = text_embedder(model)

        def batch_scores(a, b):
            a, b = (np.asarray(embed(x), dtype=np.float32) for x in (a, b))
            return ops.convert_to_numpy(cosine_similarity(a, b))

    def pair_scores(a, b):
        return np.concatenate(
            [batch_scores(a[i : i + 64], b[i : i + 64]) for i in range(0, len(a), 64)]
        )

    scores = pair_scores(sentences_a, sentences_b)
    sets = {}
    for name, (a, b, g) in (other_sets or {}).items():
        other = pair_scores(a, b)
        sets[name] = {"spearman": 100 * spearman(other, g), "pearson": 100 * pearson(other, g)}
    result = {
        "scores": scores.tolist(),
        "spearman": 100 * spearman(scores, gold),
        "pearson": 100 * pearson(scores, gold),
        "sets": sets,
    }
    if seconds is not None:
        result["sentences_per_second"] = throughput(
            embed, speed_sentences, batch_size=64, min_seconds=seconds
        )["sentences_per_second"]
    if latency_calls:
        result["latency"] = latency(embed, speed_sentences, latency_calls)
    return result


def embed_text_export(model, sentences, batch_size=64, progress=None):
    """Embeddings of `sentences` by a raw-text SavedModel's `embed` signature, `[N, D]` float32.

    Batches of similar length (sorted by characters), rows in the order given.

    Args:
        model: folder of an export with an `embed` signature (`kd_keras.serving`),
            or any other model `text_embedder` takes (a function or a factory
            spec giving `[n, D]` arrays).
        sentences: list of str.
        batch_size: int.
        progress: an object with `update(n)` (a progress bar), or `None`.

    Raises:
        ValueError: the export has no `embed` signature.
    """
    if _is_export(model):
        signatures = serving.load_text_export(model).signatures
        if "embed" not in signatures:
            raise ValueError(
                f"{model}: the export has no `embed` signature (it has "
                f"{', '.join(sorted(signatures))}); a sentence encoder is needed."
            )
        signature = signatures["embed"]

        def embed(batch):
            return signature(sentences=tf.constant(batch, tf.string))["embedding"].numpy()

    else:
        embed = text_embedder(model)
    order = np.argsort([len(s) for s in sentences], kind="stable")
    embeddings = None
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        vectors = np.asarray(embed([sentences[i] for i in rows]), np.float32)
        if embeddings is None:
            embeddings = np.empty((len(sentences), vectors.shape[1]), np.float32)
        embeddings[rows] = vectors
        if progress is not None:
            progress.update(len(rows))
    return embeddings


def embed_text_exports_in_subprocess(paths, sentences, batch_size=64):
    """`embed_text_export` of several exports in one fresh Python process: a list of arrays."""
    with tempfile.TemporaryDirectory() as tmp:
        outputs = [os.path.join(tmp, f"embeddings-{i}.npy") for i in range(len(paths))]
        request = {
            "task": "embed",
            "paths": [str(p) for p in paths],
            "sentences": list(sentences),
            "batch_size": int(batch_size),
            "outputs": outputs,
        }
        _in_subprocess(request, "Embedding with " + ", ".join(request["paths"]))
        return [np.load(o) for o in outputs]


def evaluate_text_export_in_subprocess(
    model,
    sentences_a,
    sentences_b,
    gold,
    speed_sentences,
    seconds=10.0,
    other_sets=None,
    latency_calls=0,
):
    """`evaluate_text_export` in a fresh Python process.

    So that every model is timed alike, free of whatever the calling process
    still runs (input pipelines, thread pools of a finished `fit`). `model`
    is an export folder or a factory spec (`text_embedder`), not a function.
    """
    request = {
        "task": "evaluate",
        "model": _portable(model),
        "sentences_a": list(sentences_a),
        "sentences_b": list(sentences_b),
        "gold": np.asarray(gold, dtype=np.float64).tolist(),
        "speed_sentences": list(speed_sentences),
        "seconds": None if seconds is None else float(seconds),
        "latency_calls": int(latency_calls),
        "other_sets": {
            name: [list(a), list(b), np.asarray(g, dtype=np.float64).tolist()]
            for name, (a, b, g) in (other_sets or {}).items()
        },
    }
    return _in_subprocess(request, f"Evaluating {_label(model)}")


def compare_throughput_in_subprocess(models, sentences, rounds=5, seconds=2.0):
    """`compare_throughput` in a fresh Python process (see
    `evaluate_text_export_in_subprocess`): export folders and factory specs."""
    request = {
        "task": "throughput",
        "models": [_portable(m) for m in models],
        "sentences": list(sentences),
        "rounds": int(rounds),
        "seconds": float(seconds),
    }
    return _in_subprocess(request, "Timing " + ", ".join(_label(m) for m in models))


def _in_subprocess(request, what):
    with tempfile.TemporaryDirectory() as tmp:
        request_path = os.path.join(tmp, "request.json")
        result_path = os.path.join(tmp, "result.json")
        with open(request_path, "w", encoding="utf-8") as f:
            json.dump(request, f)
        done = subprocess.run(
            [sys.executable, "-m", "kd_keras.evaluation", request_path, result_path],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            raise RuntimeError(f"{what} failed:\n{done.stderr[-4000:]}")
        with open(result_path, encoding="utf-8") as f:
            return json.load(f)


def _main(argv):
    request_path, result_path = argv
    with open(request_path, encoding="utf-8") as f:
        request = json.load(f)
    if request["task"] == "embed":
        for path, output in zip(request["paths"], request["outputs"], strict=True):
            embeddings = embed_text_export(path, request["sentences"], request["batch_size"])
            np.save(output, embeddings)
        with open(result_path, "w", encoding="utf-8") as f:
            json.dump({"outputs": request["outputs"]}, f)
        return
    if request["task"] == "throughput":
        result = compare_throughput(
            request["models"], request["sentences"], request["rounds"], request["seconds"]
        )
        with open(result_path, "w", encoding="utf-8") as f:
            json.dump(result, f)
        return
    result = evaluate_text_export(
        request["model"],
        request["sentences_a"],
        request["sentences_b"],
        np.asarray(request["gold"]),
        request["speed_sentences"],
        request["seconds"],
        {name: (a, b, np.asarray(g)) for name, (a, b, g) in request["other_sets"].items()},
        request["latency_calls"],
    )
    with open(result_path, "w", encoding="utf-8") as f:
        json.dump(result, f)


if __name__ == "__main__":
    _main(sys.argv[1:])
