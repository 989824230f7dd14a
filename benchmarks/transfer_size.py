"""Dev Spearman against transfer-set size: `kd-keras distill` at several corpus sizes.

Runs `kd-keras distill` once per `--unlabeled-limit` size, one after the
other, with the same other arguments (those after `--`) and one shared teacher
cache, each into `<runs>/size-<N>/`. A size whose run folder already holds a
finished run is read, not run again, so a killed sweep resumes. It then
writes the figures as JSON and draws STS-B **dev** Spearman against the number
of sentences the teacher labeled (log x axis): settings are chosen on dev, so
the sweep records no test figure.

The default run's report shows the stored result
(`benchmarks/results/transfer_size.json`) when its teacher, student and
objective are the sweep's.

```
.venv/bin/python benchmarks/transfer_size.py --sizes 10000,20000,40000,80000 \\
    --runs runs/sizes --json benchmarks/results/transfer_size.json \\
    --plot benchmarks/results/transfer_size.png -- --cache-dir runs/cache
```
"""

import argparse
import json
import pathlib
import shlex
import subprocess
import sys


def _parse_args(argv):
    argv = list(argv)
    extra = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1 :]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes", required=True, help="comma-separated --unlabeled-limit values, e.g. 10000,20000"
    )
    parser.add_argument("--runs", type=pathlib.Path, default=pathlib.Path("runs/sizes"))
    parser.add_argument("--json", type=pathlib.Path, required=True, help="the figures as JSON")
    parser.add_argument("--plot", type=pathlib.Path, default=None, help="PNG of the curve")
    args = parser.parse_args(argv)
    try:
        args.sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        parser.error(f"--sizes: expected comma-separated integers, got {args.sizes!r}")
    if not args.sizes or min(args.sizes) < 0:
        parser.error("--sizes: give at least one size >= 0")
    args.extra = extra
    return args


def _run(size, folder, extra):
    """Runs (or reads) one size; returns its row."""
    metrics = folder / "metrics.json"
    if not metrics.exists():
        command = [sys.executable, "-m", "kd_keras", "distill"]
        command += ["--unlabeled-limit", str(size), "--output-dir", str(folder), *extra]
        print("$", shlex.join(command), flush=True)
        subprocess.run(command, check=True)
    m = json.loads(metrics.read_text())
    c, d, t = m["config"], m["data"], m["timings"]
    return {
        "unlabeled_limit": size,
        "transfer_sentences": d["transfer_sentences"],
        "transfer_pairs": d["transfer_pairs"],
        "student_dev_spearman": m["models"]["student"]["dev_spearman"],
        "teacher_dev_spearman": m["models"]["teacher"]["dev_spearman"],
        "training_steps": c["epochs"] * (c.get("steps_per_epoch") or 0) or None,
        "teacher_pass_s": t["teacher_pass_s"],
        "training_s": t["training_s"],
        "config": {k: c[k] for k in ("teacher", "student", "objective", "unlabeled", "augment")},
    }


def main(argv=None):
    args = _parse_args(sys.argv[1:] if argv is None else argv)
    rows = [_run(size, args.runs / f"size-{size}", args.extra) for size in args.sizes]
    command = "python benchmarks/transfer_size.py " + shlex.join(
        [
            "--sizes",
            ",".join(map(str, args.sizes)),
            "--runs",
            str(args.runs),
            "--json",
            str(args.json),
        ]
        + ([] if args.extra == [] else ["--", *args.extra])
    )
    print("| unlabeled limit | sentences labeled | pairs | student dev Spearman | teacher pass s |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['unlabeled_limit']:,} | {r['transfer_sentences']:,} | "
            f"{r['transfer_pairs']:,} | {r['student_dev_spearman']:.2f} | "
            f"{r['teacher_pass_s']:.0f} |"
        )
    from kd_keras.evaluation import machine_description
    from kd_keras.storage import write_json_atomic

    args.json.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(
        args.json, {"command": command, "machine": machine_description(), "rows": rows}
    )
    if args.plot:
        from kd_keras.recipes.sentence_pairs.report import plot_transfer_size

        plot_transfer_size(rows, args.plot)
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
