"""The LM recipe's `report.md`: held-out perplexity of the teacher and every student."""

__all__ = ["LABELS", "report_text"]

LABELS = {
    "student_only": "student alone (cross-entropy)",
    "forward_kl": "forward KL",
    "reverse_kl": "reverse KL",
    "skewed_forward_kl": "skewed forward KL",
    "skewed_reverse_kl": "skewed reverse KL",
    "forward_kl_ce": "forward KL + cross-entropy",
}


def report_text(metrics):
    """The Markdown report of a run (`kd_keras.recipes.causal_lm.job.run`'s metrics)."""
    teacher = metrics["teacher"]
    students = metrics["students"]
    baseline = students.get("student_only", {}).get("perplexity")
    lines = [
        "# Token-level LM distillation",
        "",
        f"Teacher: GPT-2 {metrics['settings']['teacher_layers']} layers x "
        f"{metrics['settings']['teacher_dim']}, vocabulary {teacher['vocabulary_size']} "
        f"({metrics['settings']['extra_teacher_tokens']} tokens more than the student's, "
        "truncated by the losses). "
        f"Students: GPT-2 {metrics['settings']['student_layers']} layers x "
        f"{metrics['settings']['student_dim']}, vocabulary {metrics['vocabulary_size']}, "
        f"{metrics['settings']['student_epochs']} epochs x {metrics['train_examples']} "
        "examples each, same initial weights, same batches.",
        "",
        f"Held-out perplexity on the answer tokens of {metrics['test_examples']} examples "
        f"({teacher['tokens']} tokens; prompt and padding ignored).",
        "",
        "| model | objective | held-out perplexity | vs student alone | train s |",
        "|---|---|---:|---:|---:|",
        f"| teacher | cross-entropy (corpus + instructions) | {teacher['perplexity']:.3f} | "
        f"| {teacher['train_seconds']:.0f} |",
    ]
    for name, row in students.items():
        delta = ""
        if baseline is not None and name != "student_only":
            delta = f"{100.0 * (row['perplexity'] - baseline) / baseline:+.1f}%"
        lines.append(
            f"| student | {LABELS[name]} | {row['perplexity']:.3f} | {delta} | "
            f"{row['train_seconds']:.0f} |"
        )
    distilled = {k: v for k, v in students.items() if k != "student_only"}
    if distilled:
        best = min(distilled, key=lambda k: distilled[k]["perplexity"])
        lines += ["", f"Best distillation objective: {LABELS[best]} "]
        lines[-1] += f"(perplexity {distilled[best]['perplexity']:.3f}"
        if baseline is not None:
            gain = baseline - distilled[best]["perplexity"]
            side = "below" if gain >= 0 else "above"
            lines[-1] += f", {abs(gain):.3f} {side} the student alone at {baseline:.3f}"
        lines[-1] += ")."
    return "\n".join(lines) + "\n"
