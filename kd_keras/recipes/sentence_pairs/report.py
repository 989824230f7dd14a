"""`report.md` and its PNG plots for a sentence-pair distillation run."""

from kd_keras.evaluation import machine_description
from kd_keras.storage import write_text_atomic

__all__ = ["write_report"]


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
alpha {c["alpha"]}, {c["epochs"]} epoch(s), batch {c["batch_size"]}.

All numbers below were measured in this run, on this machine
({machine_description()}), through the two exported raw-text SavedModels.
Quality is on the STS-B **test** split ({d["test_pairs"]} pairs), and Spearman on the dev
split (where settings are chosen): correlation x100 between the cosine similarity of the
two sentence embeddings and the gold score. Speed is
CPU sentences per second through the `embed` signature, batch 64, over the test
sentences.

| model | dev Spearman | test Spearman | test Pearson | parameters | SavedModel size | sentences/s |
|---|---|---|---|---|---|---|
{chr(10).join(rows)}

The student keeps **{s["spearman_kept_pct"]:.1f}%** of the teacher's Spearman at
**{s["speedup"]:.1f}x** its throughput. {_model2vec_line()}

Transfer set: {d["transfer_pairs"]:,} pairs ({d["labeled_pairs"]:,} with gold scores),
{d["transfer_sentences"]:,} sentences labeled by the teacher, {d.get("streamed_sentences", 0):,}
of them streamed from label shards (paired anew on every pass). Teacher pass in
`{c.get("teacher_precision", "float32")}`, labels stored in `{c.get("store", "float32")}`.

Time: teacher pass {t["teacher_pass_s"]:.0f} s, training {t["training_s"]:.0f} s,
exports {t["export_s"]:.0f} s, evaluation {t["evaluation_s"]:.0f} s, total
{t["total_s"] / 60:.1f} min.

![training curves]({files["curves"]})

![teacher versus student similarity]({files["scatter"]})

![quality against throughput]({files["tradeoff"]})
"""
    return write_text_atomic(out / "report.md", text)
