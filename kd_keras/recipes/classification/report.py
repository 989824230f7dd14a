"""The classification recipe's `report.md`: the run's data and teacher, one table of the
three models, from the metrics dict."""

import pathlib

__all__ = ["report_text"]


def _teacher_name(spec):
    return "MiniLM-L6" if spec == "default" else pathlib.PurePath(spec).name or spec


def _data_line(metrics):
    data = metrics["data"]
    counts = {"train": data["train_examples"], "dev": metrics["dev_examples"]}
    if metrics["test_examples"] is not None:
        counts["test"] = metrics["test_examples"]
    if data["sst2"]:
        sizes = ", ".join(f"{n} {split}" for split, n in counts.items())
        return f"Data: SST-2, the shipped files ({sizes} phrases; labels 0 and 1)."
    files = ", ".join(
        f"{split} `{data['files'][split]}` ({n} texts)" for split, n in counts.items()
    )
    classes = data["classes"]
    return f"Data: {files}; {len(classes)} classes: {', '.join(str(x) for x in classes)}."


def _teacher_line(teacher):
    name = _teacher_name(teacher["source"])
    if teacher["fine_tuned_here"]:
        reused = ", reused from the run's cache" if teacher.get("reused") else ""
        return (
            f"Teacher: {name} with a classification head, fine-tuned here on "
            f"{teacher['train_examples']} texts ({teacher['train_seconds']:.0f} s{reused})."
        )
    names = teacher.get("class_names")
    mapping = (
        "its outputs taken as the training classes in sorted order"
        if names is None
        else f"its classes {', '.join(names)} matched to the training classes"
    )
    return (
        f"Teacher: `{teacher['source']}`, already fine-tuned, used as it is (no fine-tuning; "
        f"{teacher['outputs']}; {mapping})."
    )


def report_text(metrics):
    """The Markdown report of a run (`kd_keras.recipes.classification.job.run`'s metrics)."""
    settings, teacher = metrics["settings"], metrics["teacher"]
    sst2 = metrics["data"]["sst2"]
    what = "+ head, fine-tuned here" if teacher["fine_tuned_here"] else "(given, fine-tuned)"
    rows = [
        ("teacher", f"{_teacher_name(teacher['source'])} {what}"),
        ("baseline", "BiLSTM, labels only"),
        ("distilled", f"BiLSTM, distilled ({settings['objective']})"),
    ]
    init = settings["embedding_init"]
    if init == "random":
        embeddings = " (random token embeddings)"
    elif teacher["fine_tuned_here"]:
        embeddings = (
            f" apart from the token embeddings ({init}: the labels-only student's from the "
            "encoder before fine-tuning, the distilled student's from the fine-tuned teacher)"
        )
    else:
        embeddings = f", token embeddings included ({init}, from the given teacher's encoder)"
    prefix = "SST-2 " if sst2 else ""
    title = (
        "SST-2"
        if sst2
        else f"Text classifier ({pathlib.PurePath(metrics['data']['files']['train']).name})"
    )
    lines = [
        f"# {title} distillation",
        "",
        _data_line(metrics),
        _teacher_line(teacher),
        f"Transfer set: {metrics['transfer_set']['gold']} gold texts + "
        f"{metrics['transfer_set']['augmented']} augmented sentences. Students: "
        f"{settings['epochs']} epoch(s) each, same initial weights{embeddings}.",
        "",
        "Accuracy and throughput measured through the exported SavedModels "
        "(`classify` signature, CPU, batch 64).",
        "",
        f"| model | what | {prefix}dev acc. | {prefix}test acc. | sentences/s | params |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for key, description in rows:
        m = metrics[key]
        test = "-" if m["test_accuracy"] is None else f"{m['test_accuracy']:.2f}"
        lines.append(
            f"| {key} | {description} | {m['dev_accuracy']:.2f} | {test} | "
            f"{m['sentences_per_second']:.0f} | {m['params']:,} |"
        )
    gain = metrics["distilled"]["dev_accuracy"] - metrics["baseline"]["dev_accuracy"]
    lines += ["", f"Distilled vs labels-only on dev: {gain:+.2f} points."]
    return "\n".join(lines) + "\n"
