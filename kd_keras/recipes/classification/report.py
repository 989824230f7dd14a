"""The SST-2 recipe's `report.md`: one table of the three models, from the metrics dict."""

__all__ = ["report_text"]


def report_text(metrics):
    """The Markdown report of a run (`kd_keras.recipes.classification.job.run`'s metrics)."""
    rows = [
        ("teacher", "MiniLM-L6 + head, fine-tuned"),
        ("baseline", "BiLSTM, labels only"),
        ("distilled", f"BiLSTM, distilled ({metrics['settings']['objective']})"),
    ]
    init = metrics["settings"]["embedding_init"]
    embeddings = (
        " (random token embeddings)"
        if init == "random"
        else f" apart from the token embeddings ({init}: the labels-only student's from the "
        "encoder before fine-tuning, the distilled student's from the fine-tuned teacher)"
    )
    lines = [
        "# SST-2 distillation",
        "",
        f"Transfer set: {metrics['transfer_set']['gold']} gold phrases + "
        f"{metrics['transfer_set']['augmented']} augmented sentences. Teacher fine-tuned on "
        f"{metrics['teacher']['train_examples']} phrases "
        f"({metrics['teacher']['train_seconds']:.0f} s). Students: "
        f"{metrics['settings']['epochs']} epochs each, same initial weights{embeddings}.",
        "",
        "Accuracy and throughput measured through the exported SavedModels "
        "(`classify` signature, CPU, batch 64).",
        "",
        "| model | what | SST-2 dev acc. | SST-2 test acc. | sentences/s | params |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for key, what in rows:
        m = metrics[key]
        lines.append(
            f"| {key} | {what} | {m['dev_accuracy']:.2f} | {m['test_accuracy']:.2f} | "
            f"{m['sentences_per_second']:.0f} | {m['params']:,} |"
        )
    gain = metrics["distilled"]["dev_accuracy"] - metrics["baseline"]["dev_accuracy"]
    target = metrics["targets"]
    lines += [
        "",
        f"Distilled vs labels-only on dev: {gain:+.2f} points. Targets: dev >= "
        f"{target['dev_accuracy']} ({'met' if target['dev_met'] else 'not met'}), gain >= "
        f"+{target['gain']} ({'met' if target['gain_met'] else 'not met'}).",
    ]
    return "\n".join(lines) + "\n"
