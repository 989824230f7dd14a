"""Dev curves of `kd-keras distill` runs: the student's dev Spearman over training steps.

Every run records its student's dev Spearman at each checkpoint
(`metrics.json`, `training.dev_curve`; while a run is unfinished, or was
stopped on purpose once its curve had flattened, its newest checkpoint in
`<run>/backup` holds the same points). This script gathers the curves of
several runs, prints them side by side with each one's best point, and
writes them as JSON and a plot, so that the number of training steps of a
student kind is chosen on dev:

```
.venv/bin/kd-keras distill --student static --epochs 10 --steps-per-epoch 1600 \
    --checkpoints-per-epoch 4 --output-dir runs/curve-static      # a point every 400 steps
.venv/bin/python benchmarks/dev_curves.py --run static=runs/curve-static \
    --run bilstm=runs/curve-bilstm --json benchmarks/results/dev_curves.json \
    --plot benchmarks/results/dev_curves.png
```

With a constant learning rate (the default) the first N steps of a long run
are the steps of an N-step run, so one long run gives the curve of every
shorter budget.
"""

import argparse
import json
import pathlib
import re
import sys

_CHECKPOINT = re.compile(r"^epoch-(\d{6})\.json$")


def read_curve(run):
    """`(points, source)`: `[[step, dev Spearman]]` of a run folder, and where they came from."""
    run = pathlib.Path(run)
    metrics = run / "metrics.json"
    if metrics.is_file():
        training = json.loads(metrics.read_text(encoding="utf-8"))["training"]
        return training["dev_curve"], str(metrics)
    backups = sorted(p for p in (run / "backup").glob("epoch-*.json") if _CHECKPOINT.match(p.name))
    if not backups:
        sys.exit(f"--run {run}: no metrics.json and no checkpoint in {run / 'backup'}")
    newest = backups[-1]
    history = json.loads(newest.read_text(encoding="utf-8"))["history"]
    config = json.loads((run / "config.json").read_text(encoding="utf-8"))
    every = -(-config["steps_per_epoch"] // config["checkpoints_per_epoch"])
    points = [[(i + 1) * every, v] for i, v in enumerate(history.get("dev_spearman", []))]
    return points, str(newest)


def summary(points):
    """Best point, and the first step within 0.2 of it (where the curve has flattened)."""
    best_step, best = max(points, key=lambda p: p[1])
    flat = next(step for step, value in points if value >= best - 0.2)
    return {"best_step": best_step, "best": best, "within_0.2_of_best_from": flat}


def plot(curves, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from kd_keras.storage import atomic_path

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name, curve in curves.items():
        xs, ys = zip(*curve["points"], strict=True)
        ax.plot(xs, ys, "o-", ms=3, label=name)
    ax.set_xlabel("training step (batch 64 pairs)")
    ax.set_ylabel("STS-B dev Spearman x100")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", action="append", required=True, metavar="NAME=RUN_FOLDER")
    parser.add_argument("--json", type=pathlib.Path, default=None)
    parser.add_argument("--plot", type=pathlib.Path, default=None)
    args = parser.parse_args(argv)
    curves = {}
    for spec in args.run:
        name, sep, run = spec.partition("=")
        if not sep or not name:
            sys.exit(f"--run {spec}: expected NAME=RUN_FOLDER")
        points, source = read_curve(run)
        if not points:
            sys.exit(f"--run {spec}: the run has no dev curve (made before dev curves were kept)")
        curves[name] = {"run": run, "source": source, "points": points, **summary(points)}
    for name, c in curves.items():
        values = " ".join(f"{step}:{value:.2f}" for step, value in c["points"])
        print(
            f"{name}: best {c['best']:.2f} at step {c['best_step']}, within 0.2 of it from step "
            f"{c['within_0.2_of_best_from']}\n  {values}"
        )
    if args.json:
        from kd_keras.storage import write_json_atomic

        write_json_atomic(args.json, curves)
    if args.plot:
        plot(curves, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
