"""The quality/speed frontier: exported students against their teacher, in one run.

Every model is a raw-text SavedModel (`kd_keras.serving`; the `student/` of a
`kd-keras distill` run folder, or a teacher export) and is measured the same
way, its quality and latency in a fresh process of its own
(`kd_keras.evaluation.evaluate_text_export_in_subprocess`):

- STS-B test Spearman x100 of the cosine of the two sentences' embeddings
  (and dev Spearman);
- batch-64 sentences per second through `embed` over the test sentences, all
  models timed in turns in one process (`compare_throughput`), so that a
  machine whose speed drifts weighs on all alike; the speed-up is the median
  of the rounds' ratios to the first model;
- batch-1 latency (p50) through `embed`, one test sentence per call;
- the SavedModel's size on disk.

It prints the table, writes it as JSON and draws quality against throughput
(log x axis).

```
.venv/bin/python benchmarks/students.py \\
    --model teacher=runs/cache/teacher-export-<key> \\
    --model static=runs/<static run>/student --model bilstm=runs/<run>/student \\
    --plot frontier.png --json frontier.json
```

Run it on a quiet machine: the speeds are compared with each other.
"""

import argparse
import pathlib
import sys


def _parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model",
        action="append",
        required=True,
        metavar="NAME=EXPORT",
        help="a name and a raw-text SavedModel folder; the first is the reference (teacher)",
    )
    parser.add_argument("--test", default=None, help="test pairs (default: STS-B test)")
    parser.add_argument("--dev", default=None, help="dev pairs (default: STS-B dev)")
    parser.add_argument(
        "--seconds", type=float, default=10.0, help="throughput duration per model, all rounds"
    )
    parser.add_argument("--rounds", type=int, default=5, help="turns of the throughput timing")
    parser.add_argument("--latency-calls", type=int, default=200, help="batch-1 calls")
    parser.add_argument("--plot", type=pathlib.Path, default=None, help="PNG of the frontier")
    parser.add_argument("--json", type=pathlib.Path, default=None, help="the table as JSON")
    return parser.parse_args(argv)


def measure(models, test, dev, seconds, latency_calls, rounds=5):
    """One row per model: Spearman, throughput, latency, size.

    The throughput of all models is timed in turns in one process
    (`compare_throughput`: `rounds` rounds sharing `seconds` per model); the
    speed-up is the median of the rounds' ratios to the first model.
    """
    from kd_keras.evaluation import (
        compare_throughput_in_subprocess,
        evaluate_text_export_in_subprocess,
    )
    from kd_keras.storage import directory_size

    rows = []
    speed_sentences = list(test[0]) + list(test[1])
    speeds = compare_throughput_in_subprocess(
        [path for _, path in models], speed_sentences, rounds, seconds / rounds
    )
    print("measured the throughput", file=sys.stderr)
    for (name, path), speed in zip(models, speeds, strict=True):
        r = evaluate_text_export_in_subprocess(
            path,
            *test,
            speed_sentences,
            None,
            other_sets={"dev": dev},
            latency_calls=latency_calls,
        )
        rows.append(
            {
                "model": name,
                "export": str(path),
                "test_spearman": r["spearman"],
                "dev_spearman": r["sets"]["dev"]["spearman"],
                "sentences_per_second": speed["sentences_per_second"],
                "speed_rounds": speed["rounds"],
                "speedup": speed["ratio"],
                "p50_ms": r["latency"]["p50_ms"],
                "size_mib": directory_size(path) / 2**20,
            }
        )
        print(f"measured {name}", file=sys.stderr)
    return rows


def print_table(rows):
    header = (
        f"{'model':<14} {'test Spearman':>13} {'dev Spearman':>12} {'sent/s b64':>11} "
        f"{'x ref':>7} {'p50 ms b1':>10} {'size MiB':>9}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['model']:<14} {r['test_spearman']:>13.2f} {r['dev_spearman']:>12.2f} "
            f"{r['sentences_per_second']:>11.1f} {r['speedup']:>7.1f} {r['p50_ms']:>10.2f} "
            f"{r['size_mib']:>9.1f}"
        )


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    from kd_keras.storage import atomic_path

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for r in rows:
        ax.scatter(r["sentences_per_second"], r["test_spearman"], s=60)
        ax.annotate(
            f"{r['model']} ({r['speedup']:.1f}x)",
            (r["sentences_per_second"], r["test_spearman"]),
            textcoords="offset points",
            xytext=(6, 6),
        )
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:,.0f}"))
    ax.set_xlabel("CPU sentences/s, batch 64 (log scale)")
    ax.set_ylabel("STS-B test Spearman x100")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def main(argv=None):
    args = _parse_args(argv)
    models = []
    for spec in args.model:
        name, sep, path = spec.partition("=")
        if not sep or not pathlib.Path(path, "saved_model.pb").is_file():
            sys.exit(f"--model {spec}: expected NAME=FOLDER of a SavedModel")
        models.append((name, pathlib.Path(path)))

    from kd_keras.data import data_path, read_pairs
    from kd_keras.evaluation import cpu_description
    from kd_keras.storage import write_json_atomic

    test = read_pairs(args.test or data_path("stsb", "sts-test.csv"))
    dev = read_pairs(args.dev or data_path("stsb", "sts-dev.csv"))
    rows = measure(models, test, dev, args.seconds, args.latency_calls, args.rounds)
    print(f"{cpu_description()}; {len(test[0])} test pairs; speed over their sentences")
    print_table(rows)
    if args.json:
        write_json_atomic(args.json, rows)
    if args.plot:
        plot(rows, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
