"""Teacher-pass throughput on this CPU: length bucketing versus padding to 128.

Runs the default teacher (all-MiniLM-L6-v2) over the STS-B training
sentences (both columns of `sts-train.csv`) and prints, per setting,
sentences per second, the FLOPs the model executed per second (padding
included) and the useful FLOPs per second (real tokens only), against the
machine's peak:

- *theoretical peak*: cores x clock x FP32 FLOPs per cycle per core. The
  clock is read from `/proc/cpuinfo` (`cpu MHz`, the nominal clock; boost
  may be higher), FLOPs/cycle from the CPU flags: 32 for AVX-512 or AVX2
  with FMA (AMD Zen 4 runs 512-bit FMAs as two 256-bit halves on two FMA
  pipes: 2 x 8 lanes x 2; Intel parts with two 512-bit FMA units reach 64),
  16 without FMA. Pass `--flops-per-cycle` to change it.
- *measured peak*: a 2048 x 2048 float32 matmul in TensorFlow.

Model FLOPs per batch of B rows padded to width W (L layers, hidden H,
intermediate I), multiply-adds counted as 2:
`B * W * L * (8 H^2 + 4 H I + 4 W H)` (Q, K, V, O projections; the
feedforward; attention scores and weighted values). Embeddings, layer
norms, softmax and GELU are left out (< 2%).

```
.venv/bin/python benchmarks/teacher_pass.py            # 3000 sentences, ~2-3 min
.venv/bin/python benchmarks/teacher_pass.py --limit 0  # all 11498 (~8 min)
.venv/bin/python benchmarks/teacher_pass.py --corpus 'data/transfer-en/*.txt.gz' \
    --limit 8000 --no-padded --bfloat16            # the shipped corpus, with bfloat16
```

With the `reference` extra installed (`pip install -e '.[reference]'`: torch from the
local wheel, sentence-transformers), it also runs sentence-transformers on torch over
the same sentences in the same process and prints its speed and our ratio to it;
without it, it says so.
"""

import argparse
import os
import sys
import time

import numpy as np


def cpu_peak_flops(flops_per_cycle=None):
    """`(peak FLOP/s, description)` from the core count, clock and flags."""
    cores = len(os.sched_getaffinity(0))
    mhz, flags = None, set()
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("cpu MHz") and mhz is None:
                mhz = float(line.split(":")[1])
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":")[1].split())
    if flops_per_cycle is None:
        flops_per_cycle = 32 if "fma" in flags and ("avx2" in flags or "avx512f" in flags) else 16
    peak = cores * (mhz or 0) * 1e6 * flops_per_cycle
    text = f"{cores} cores x {mhz / 1000:.2f} GHz x {flops_per_cycle} FP32 FLOP/cycle"
    return peak, text


def measured_matmul_flops(size=2048, repeats=10):
    import tensorflow as tf

    a = tf.random.normal([size, size])
    b = tf.random.normal([size, size])
    matmul = tf.function(lambda x, y: tf.linalg.matmul(x, y))
    matmul(a, b).numpy()
    start = time.perf_counter()
    for _ in range(repeats):
        c = matmul(a, b)
    c.numpy()
    return 2 * size**3 * repeats / (time.perf_counter() - start)


def batch_flops(rows, width, config):
    layers, hidden, inner = config
    return rows * width * layers * (8 * hidden**2 + 4 * hidden * inner + 4 * width * hidden)


def run_setting(
    teacher, sentences, ids, name, batch_size, bucketing, pad_to, jit_compile, config, precision
):
    """Times one teacher pass; returns the table row."""
    from kd_keras.batching import length_batches
    from kd_keras.teacher_pass import run_teacher

    preprocessor = teacher.preprocessor
    max_length = pad_to or preprocessor.sequence_length
    lengths = np.minimum(ids.row_lengths().numpy() + 2, max_length)
    executed = useful = 0
    for rows in length_batches(lengths, batch_size, bucketing=bucketing):
        if pad_to is None:
            width = min(-(-int(lengths[rows].max()) // 8) * 8, max_length)
        else:
            width = pad_to
        executed += batch_flops(len(rows), width, config)
        useful += sum(batch_flops(1, int(n), config) for n in lengths[rows])
    options = dict(
        batch_size=batch_size,
        bucketing=bucketing,
        pad_to=pad_to,
        jit_compile=jit_compile,
        precision=precision,
    )
    run_teacher(teacher, sentences[:batch_size], **options)  # warm-up: trace the forward pass
    start = time.perf_counter()
    # Timed end to end: tokenization, batching, the model, reordering.
    outputs = run_teacher(teacher, sentences, progress=True, **options)
    seconds = time.perf_counter() - start
    return {
        "outputs": outputs,
        "setting": name,
        "sentences": len(sentences),
        "seconds": seconds,
        "sent_per_s": len(sentences) / seconds,
        "gflops_executed": executed / seconds / 1e9,
        "gflops_useful": useful / seconds / 1e9,
        "padding": 1 - useful / executed,
    }


def reference_pass(sentences, batch_size, ours):
    """sentence-transformers on torch over the same sentences, if the `reference` extra is in.

    Returns `(row or None, message)`: sentences per second (encode end to end,
    after a warm-up batch) and the largest difference from `ours`.
    """
    try:
        import sentence_transformers
        import torch
    except ImportError:
        return None, (
            "sentence-transformers on torch: not installed (pip install -e '.[reference]'); "
            "no side-by-side row"
        )
    from kd_keras.models.teachers import default_model_dir

    model = sentence_transformers.SentenceTransformer(str(default_model_dir()), device="cpu")
    model.encode(sentences[:batch_size], batch_size=batch_size)  # warm-up
    start = time.perf_counter()
    theirs = model.encode(sentences, batch_size=batch_size, convert_to_numpy=True)
    seconds = time.perf_counter() - start
    row = {"setting": "sentence-transformers (torch)", "sentences": len(sentences)}
    row.update(seconds=seconds, sent_per_s=len(sentences) / seconds)
    diff = float(np.abs(np.asarray(theirs) - ours).max())
    return row, (
        f"sentence-transformers {sentence_transformers.__version__} on torch "
        f"{torch.__version__} ({torch.get_num_threads()} threads), same sentences, batch "
        f"{batch_size}: max abs difference from ours {diff:.1e}"
    )


def _parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", default=None, help="STS-B sts-train.csv (default: the data folder's)"
    )
    parser.add_argument(
        "--limit", type=int, default=3000, help="sentences to run (0: all); default 3000"
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--corpus",
        default=None,
        help="glob of unlabeled text files (e.g. 'data/transfer-en/*.txt.gz') to use instead "
        "of STS-B: an evenly spaced sample of --limit of their sentences",
    )
    parser.add_argument("--xla", action="store_true", help="also time jit_compile=True")
    parser.add_argument(
        "--bfloat16", action="store_true", help="also time the bfloat16 pass (--precision)"
    )
    parser.add_argument("--no-padded", action="store_true", help="skip the padded-to-128 row")
    parser.add_argument("--flops-per-cycle", type=int, default=None)
    return parser.parse_args(argv)


def _print_rows(rows, flops_per_cycle):
    peak, peak_text = cpu_peak_flops(flops_per_cycle)
    matmul = measured_matmul_flops()
    print(f"theoretical peak: {peak / 1e9:.0f} GFLOP/s ({peak_text})")
    print(f"measured peak:    {matmul / 1e9:.0f} GFLOP/s (2048x2048 float32 matmul)")
    print()
    header = (
        f"{'setting':<30} {'sent/s':>8} {'time s':>7} {'padding':>8} "
        f"{'GFLOP/s exec':>13} {'GFLOP/s useful':>15} {'% peak':>7} {'% matmul':>9}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        if "gflops_executed" not in r:  # the reference: speed only
            print(f"{r['setting']:<30} {r['sent_per_s']:>8.1f} {r['seconds']:>7.1f}")
            continue
        print(
            f"{r['setting']:<30} {r['sent_per_s']:>8.1f} {r['seconds']:>7.1f} "
            f"{r['padding']:>7.0%} {r['gflops_executed']:>13.1f} {r['gflops_useful']:>15.1f} "
            f"{r['gflops_executed'] * 1e9 / peak:>7.0%} {r['gflops_executed'] * 1e9 / matmul:>9.0%}"
        )


def main(argv=None):
    args = _parse_args(argv)

    import tensorflow as tf

    from kd_keras.data import data_path, read_stsb
    from kd_keras.models.teachers import load_teacher

    if args.corpus:
        from kd_keras.data import corpus_files, iter_corpus

        sentences = list(iter_corpus(corpus_files([args.corpus])))
        source = f"{args.corpus}"
    else:
        first, second, _ = read_stsb(args.data or data_path("stsb", "sts-train.csv"))
        sentences, source = first + second, "STS-B train"
    total = len(sentences)
    if args.limit:
        # An evenly spaced subset, so both columns and all genres (or every
        # file of a corpus) are present.
        step = max(1, total // args.limit)
        sentences = sentences[::step][: args.limit]
    teacher = load_teacher("default")
    encoder = teacher.encoder
    config = (encoder.num_layers, encoder.hidden_dim, encoder.intermediate_dim)
    ids = teacher.preprocessor.tokenize(sentences)

    settings = [("bucketed (dynamic padding)", True, None, False, "float32")]
    if not args.no_padded:
        settings.append(("padded to 128", False, 128, False, "float32"))
    if args.xla:
        settings += [
            ("bucketed + XLA", True, None, True, "float32"),
            ("padded to 128 + XLA", False, 128, True, "float32"),
        ]
    if args.bfloat16:
        settings.append(("bucketed, bfloat16", True, None, False, "bfloat16"))
    rows = [
        run_setting(
            teacher, sentences, ids, setting[0], args.batch_size, *setting[1:4], config, setting[4]
        )
        for setting in settings
    ]
    reference, reference_text = reference_pass(sentences, args.batch_size, rows[0]["outputs"])

    lengths = ids.row_lengths().numpy() + 2
    print()
    print(
        f"all-MiniLM-L6-v2 teacher pass, {source}: {len(sentences)} of {total} sentences, "
        f"batch {args.batch_size}, tokens/sentence mean {lengths.mean():.1f} max {lengths.max()}"
    )
    print(f"TensorFlow {tf.__version__}, {len(os.sched_getaffinity(0))} CPU threads")
    print(reference_text)
    _print_rows(rows + ([reference] if reference else []), args.flops_per_cycle)
    by_name = {r["setting"]: r for r in rows}
    exact = rows[0]
    if "padded to 128" in by_name:
        speedup = exact["sent_per_s"] / by_name["padded to 128"]["sent_per_s"]
        print(f"\nbucketing speed-up over padding to 128: {speedup:.1f}x")
    if "bucketed, bfloat16" in by_name:
        half = by_name["bucketed, bfloat16"]
        cosine = np.sum(half["outputs"] * exact["outputs"], axis=-1)
        print(
            f"bfloat16 / float32: {half['sent_per_s'] / exact['sent_per_s']:.2f}x; max abs "
            f"difference {np.abs(half['outputs'] - exact['outputs']).max():.1e}, cosine to "
            f"float32 min {cosine.min():.4f} mean {cosine.mean():.5f}"
        )
    if reference:
        for r in rows:
            if r["setting"] in ("bucketed (dynamic padding)", "bucketed, bfloat16"):
                ratio = r["sent_per_s"] / reference["sent_per_s"]
                print(f"ours ({r['setting']}) / sentence-transformers on torch: {ratio:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
