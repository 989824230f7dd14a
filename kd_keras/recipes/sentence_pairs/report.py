"""`report.md` and its PNG plots for a sentence-pair distillation run."""

import json
import pathlib

from kd_keras.evaluation import machine_description
from kd_keras.storage import write_text_atomic

__all__ = ["SIZE_CURVE", "plot_transfer_size", "write_report"]

# The stored dev-Spearman-against-size sweep (`benchmarks/transfer_size.py`) of
# a checkout; a report shows it when the run has the sweep's setup.
SIZE_CURVE = pathlib.Path(__file__).resolve().parents[3] / "benchmarks/results/transfer_size.json"


def plot_transfer_size(rows, path):
    """Draws student dev Spearman against sentences labeled (log x) into the PNG `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullFormatter

    xs = [r["transfer_sentences"] for r in rows]
    ys = [r["student_dev_spearman"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(xs, ys, "o-", label="student")
    ax.axhline(rows[0]["teacher_dev_spearman"], color="k", ls="--", lw=1, label="teacher")
    for x, y in zip(xs, ys, strict=True):
        ax.annotate(f"{y:.2f}", (x, y), xytext=(0, 6), textcoords="offset points", ha="center")
    ax.set_xscale("log")
    ax.set_xticks(xs)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v / 1000:.0f}k"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("sentences labeled by the teacher (transfer set)")
    ax.set_ylabel("STS-B dev Spearman x100")
    ax.set_title("Dev Spearman against transfer-set size")
    ax.legend(loc="center right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _size_curve_section(out, c, curve_file=SIZE_CURVE):
    """The stored size sweep as a report section, or "" when absent or of another setup."""
    try:
        curve = json.loads(pathlib.Path(curve_file).read_text())
        rows = curve["rows"]
    except (OSError, ValueError, KeyError):
        return ""
    keys = ("teacher", "student", "objective")
    if not rows or any(r["config"][k] != c[k] for r in rows for k in keys):
        return ""
    plot_transfer_size(rows, out / "transfer_size.png")
    lines = [
        f"| {r['unlabeled_limit']:,} | {r['transfer_sentences']:,} | "
        f"{r['student_dev_spearman']:.2f} |"
        for r in rows
    ]
    return f"""
## Dev Spearman against transfer-set size

Not measured in this run: the stored sweep of this setup (`{curve_file.name}`), made with
`{curve["command"]}` on {curve["machine"]}, each size trained for the same number of steps.

| unlabeled sentences | sentences labeled (with augmented variants) | student dev Spearman |
|---|---|---|
{chr(10).join(lines)}

![dev Spearman against transfer-set size](transfer_size.png)
"""


def _mix_text(c, d):
    """The training-data mix, in words."""
    mix = d.get("unlabeled_mix") or {}
    total = sum(mix.values())
    parts = ", ".join(
        f"`{name}` {n:,} ({100 * n / total:.0f}%)"
        for name, n in sorted(mix.items(), key=lambda kv: -kv[1])
    )
    text = f"Training-data mix: {d['labeled_pairs']:,} gold pairs from `{c['train']}`"
    if total:
        text += f"; {total:,} unlabeled sentences: {parts}"
    return text + f"; {c['augment']} augmented variant(s) of every sentence."


def _plots(out, metrics, teacher_scores, student_scores):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = {}
    # Training curves.
    fig, ax = plt.subplots(figsize=(6, 4))
    steps = metrics["training"]["step_loss"]
    if steps:
        xs, ys = zip(*steps, strict=True)
        ax.plot(xs, ys, label="training loss (mean of 10 steps)", lw=1)
    history = metrics["training"]["history"]
    if history.get("val_loss"):
        per_chunk = len(steps) and steps[-1][0] / max(len(history["val_loss"]), 1)
        val_x = [(i + 1) * per_chunk for i in range(len(history["val_loss"]))]
        ax.plot(val_x, history["val_loss"], "o-", label="validation loss (dev)")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.legend()
    ax.set_title("Training curves")
    fig.tight_layout()
    files["curves"] = "training_curves.png"
    fig.savefig(out / files["curves"], dpi=100)
    plt.close(fig)

    # Teacher versus student similarity on the test split.
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(teacher_scores, student_scores, s=4, alpha=0.4)
    lo = float(min(teacher_scores.min(), student_scores.min()))
    ax.plot([lo, 1], [lo, 1], "k--", lw=1)
    ax.set_xlabel("teacher cosine similarity")
    ax.set_ylabel("student cosine similarity")
    ax.set_title("STS-B test pairs")
    fig.tight_layout()
    files["scatter"] = "similarity_scatter.png"
    fig.savefig(out / files["scatter"], dpi=100)
    plt.close(fig)

    # Quality against throughput.
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, m in metrics["models"].items():
        ax.scatter(m["sentences_per_second"], m["spearman"], s=60)
        ax.annotate(
            name,
            (m["sentences_per_second"], m["spearman"]),
            xytext=(5, 5),
            textcoords="offset points",
        )
    ax.set_xscale("log")
    ax.set_xlabel("CPU sentences per second (batch 64, exported SavedModel)")
    ax.set_ylabel("STS-B test Spearman x100")
    ax.set_title("Quality against throughput")
    fig.tight_layout()
    files["tradeoff"] = "quality_vs_throughput.png"
    fig.savefig(out / files["tradeoff"], dpi=100)
    plt.close(fig)
    return files


def _model2vec_line():
    import importlib.util

    if importlib.util.find_spec("model2vec") is None:
        return (
            "(A Model2Vec baseline distilled from the same teacher, `model2vec[distill]`, is "
            "not installed here, so it has no row.)"
        )
    return "(Model2Vec is installed, but this report does not measure it yet.)"


def _rounds(metrics):
    return len(metrics["models"]["student"].get("speed_rounds", [])) or 1


def _epochs_text(c):
    steps = c.get("steps_per_epoch")
    return f"{c['epochs']} epoch(s)" + (f" of {steps} steps" if steps else "")


def write_report(out, metrics, teacher_scores, student_scores):
    """Writes `report.md` and its plots into the run folder `out`.

    Args:
        out: `pathlib.Path` of the run folder.
        metrics: the run's metrics dict (as written to `metrics.json`).
        teacher_scores, student_scores: float arrays of the two models' test
            pair similarities.
    """
    files = _plots(out, metrics, teacher_scores, student_scores)
    c = metrics["config"]
    rows = []
    for name, m in metrics["models"].items():
        rows.append(
            f"| {name} | {m.get('dev_spearman', float('nan')):.2f} | {m['spearman']:.2f} | "
            f"{m['pearson']:.2f} | {m['parameters']:,} | "
            f"{m['size_bytes'] / 2**20:.1f} MiB | {m['sentences_per_second']:.1f} |"
        )
    s = metrics["summary"]
    t = metrics["timings"]
    d = metrics["data"]
    text = f"""# Distillation report

Teacher `{c["teacher"]}` -> {c["student"]} student, objective `{c["objective"]}`,
alpha {c["alpha"]}, {_epochs_text(c)}, batch {c["batch_size"]}.

All numbers below were measured in this run, on this machine
({machine_description()}), through the two exported raw-text SavedModels.
Quality is on the STS-B **test** split ({d["test_pairs"]} pairs), and Spearman on the dev
split (where settings are chosen): correlation x100 between the cosine similarity of the
two sentence embeddings and the gold score. Speed is
CPU sentences per second through the `embed` signature, batch 64, over the test
sentences, the two models timed in turns in one process ({_rounds(metrics)} rounds; the
median round, and the speed-up is the median of the rounds' ratios).

| model | dev Spearman | test Spearman | test Pearson | parameters | SavedModel size | sentences/s |
|---|---|---|---|---|---|---|
{chr(10).join(rows)}

The student keeps **{s["spearman_kept_pct"]:.1f}%** of the teacher's Spearman at
**{s["speedup"]:.1f}x** its throughput. {_model2vec_line()}

Transfer set: {d["transfer_pairs"]:,} pairs ({d["labeled_pairs"]:,} with gold scores),
{d["transfer_sentences"]:,} sentences labeled by the teacher, {d.get("streamed_sentences", 0):,}
of them streamed from label shards (paired anew on every pass). Teacher pass in
`{c.get("teacher_precision", "float32")}`, labels stored in `{c.get("store", "float32")}`.

{_mix_text(c, d)}

Time: teacher pass {t["teacher_pass_s"]:.0f} s, training {t["training_s"]:.0f} s,
exports {t["export_s"]:.0f} s, evaluation {t["evaluation_s"]:.0f} s, total
{t["total_s"] / 60:.1f} min.

![training curves]({files["curves"]})

![teacher versus student similarity]({files["scatter"]})

![quality against throughput]({files["tradeoff"]})
{_size_curve_section(out, c)}"""
    return write_text_atomic(out / "report.md", text)
