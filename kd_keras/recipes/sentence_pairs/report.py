"""`report.md` and its PNG plots for a sentence-pair distillation run.

The report is about the user's run: it names their files and label folders,
and speaks of STS-B (or shows the stored STS-B size sweep) only when the run
used the shipped STS-B files, recognized by their bytes (`data_files`,
`is_stsb`, `sweep_matches`).
"""

import dataclasses
import hashlib
import importlib.util
import json
import os
import pathlib

from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, NullFormatter

from kd_keras.data import corpus_files
from kd_keras.evaluation import machine_description
from kd_keras.recipes.sentence_pairs.config import DistillConfig
from kd_keras.storage import atomic_path, file_sha256, write_text_atomic
from kd_keras.transfer import HELDOUT_SENTENCES

__all__ = [
    "SIZE_CURVE",
    "STSB_SHA256",
    "TRANSFER_EN_SHA256",
    "corpus_digest",
    "data_files",
    "is_stsb",
    "plot_transfer_size",
    "save_figure",
    "sweep_matches",
    "write_report",
]

# The stored dev-Spearman-against-size sweep (`benchmarks/transfer_size.py`) of
# a checkout; a report shows it when the run has the sweep's setup.
SIZE_CURVE = pathlib.Path(__file__).resolve().parents[3] / "benchmarks/results/transfer_size.json"

# SHA-256 of the shipped STS-B splits (`data/stsb/`, the SentEval copy).
STSB_SHA256 = {
    "train": "0f71910b59aa1ad973c5897f0791f3b0965a92b8f82b1a95f3eea9f4162fda82",
    "dev": "5d7e944d8b02734b07bfdb5df67db3420c64bed153fcaa1ba47ad03480cf4234",
    "test": "affe45928a66ee5a708531233c95b7dacbbdc57f974f002a3d32ea0180cf816a",
}
# `corpus_digest` of the 23 files of the shipped `data/transfer-en/*.txt.gz`
# (their SHA-256 as `data/transfer-en/SHA256SUMS` lists them).
TRANSFER_EN_SHA256 = "0958e2bcf249db58f114d43c024a5a79b03f14b25d4a814d809afc021ffc77e9"

# When the stored sweep is shown. It was measured for one setup, and a run
# matches it only when all of these hold:
# 1. its train, dev and test files are the shipped STS-B splits, and its
#    unlabeled files the whole shipped transfer-en corpus (by their bytes,
#    wherever they lie and whatever their names);
# 2. its teacher, student, objective and augment are those the sweep's rows
#    record, and its training steps (epochs x steps per epoch) the rows';
# 3. every other setting is at its default, as in the sweep's command (no
#    `--labels` folder, the default student sizes, learning rate, batch...),
#    except those in `_SWEEP_FREE`: the sweep's own axis (`unlabeled_limit`),
#    where files are read and written, the seed, and settings that leave the
#    training as it is (`overwrite`, `distribute`, `throughput_seconds`,
#    `fidelity`, `fidelity_limit`).
_SWEEP_ROW_KEYS = ("teacher", "student", "objective", "augment")
_SWEEP_FREE = frozenset(
    (
        "data_dir",
        "train",
        "dev",
        "test",
        "unlabeled",
        "unlabeled_limit",
        "seed",
        "output_dir",
        "cache_dir",
        "overwrite",
        "distribute",
        "throughput_seconds",
        "fidelity",
        "fidelity_limit",
    )
)


# === Which data the run used ===


def corpus_digest(hashes):
    """One SHA-256 for a set of files, from their SHA-256s (order and names ignored)."""
    return hashlib.sha256("\n".join(sorted(hashes)).encode("ascii")).hexdigest()


def data_files(c):
    """The run's data files and their SHA-256, as the metrics' `data.files` records them.

    Args:
        c: the resolved `DistillConfig`.

    Returns:
        `{"train" | "dev" | "test": {"path", "sha256"}, "unlabeled": [{"path",
        "sha256"}, ...]}`, the paths as given; `unlabeled` empty when the run
        samples no unlabeled sentences.
    """

    def record(path):
        return {"path": str(path), "sha256": file_sha256(path)}

    files = {split: record(getattr(c, split)) for split in ("train", "dev", "test")}
    patterns = [p.strip() for p in (c.unlabeled or "").split(",") if p.strip()]
    used = patterns and c.unlabeled_limit
    files["unlabeled"] = [record(path) for path in corpus_files(patterns)] if used else []
    return files


def is_stsb(files):
    """Whether the train, dev and test files of `data.files` are the shipped STS-B splits."""
    files = files or {}
    return all((files.get(s) or {}).get("sha256") == h for s, h in STSB_SHA256.items())


def sweep_matches(c, d, rows):
    """Whether a run (`config`, `data` of its metrics) has the setup of the sweep's `rows`.

    The rule is written out above `_SWEEP_ROW_KEYS`.
    """
    files = d.get("files") or {}
    unlabeled = [f["sha256"] for f in files.get("unlabeled", [])]
    if not is_stsb(files) or corpus_digest(unlabeled) != TRANSFER_EN_SHA256:
        return False
    steps = c.get("epochs", 0) * (c.get("steps_per_epoch") or 0) or None
    for r in rows:
        row_config = r.get("config") or {}
        if any(row_config.get(k) != c.get(k) for k in _SWEEP_ROW_KEYS):
            return False
        if r.get("training_steps") != steps:
            return False
    defaults = dataclasses.asdict(DistillConfig())
    return all(
        c.get(key, default) == default
        for key, default in defaults.items()
        if key not in _SWEEP_FREE and key not in _SWEEP_ROW_KEYS
    )


def _set_names(c, d):
    """How the report calls the dev and test pairs: `STS-B dev`, or `dev (pairs.tsv)`."""
    if is_stsb(d.get("files")):
        return {"dev": "STS-B dev", "test": "STS-B test"}
    return {s: f"{s} ({os.path.basename(str(c[s]))})" for s in ("dev", "test")}


def save_figure(fig, path):
    """`fig.savefig(path, dpi=100)`, atomically (`kd_keras.storage.atomic_path`): a full
    disk leaves no half-written PNG, and is a `DiskFullError` naming it."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100)


def plot_transfer_size(rows, path):
    """Draws student dev Spearman against sentences labeled (log x) into the PNG `path`."""
    xs = [r["transfer_sentences"] for r in rows]
    ys = [r["student_dev_spearman"] for r in rows]
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
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
    save_figure(fig, path)


def _size_curve_section(out, metrics, curve_file=SIZE_CURVE):
    """The stored size sweep as a report section, or "" when absent or of another setup."""
    try:
        curve = json.loads(pathlib.Path(curve_file).read_text())
        rows = curve["rows"]
    except (OSError, ValueError, KeyError, TypeError):
        return ""
    if not rows or not sweep_matches(metrics["config"], metrics["data"], rows):
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
    """The training-data mix, in words: the user's files and `--labels` folders."""
    mix = d.get("unlabeled_mix") or {}
    total = sum(mix.values())
    parts = ", ".join(
        f"`{name}` {n:,} ({100 * n / total:.0f}%)"
        for name, n in sorted(mix.items(), key=lambda kv: -kv[1])
    )
    text = f"Training-data mix: {d['labeled_pairs']:,} gold pairs from `{c['train']}`"
    if total:
        text += f"; {total:,} unlabeled sentences sampled from `{c.get('unlabeled')}`: {parts}"
    given = [s for s in d.get("label_streams", []) if s["given"]]
    if given:
        folders = ", ".join(f"`{s['folder']}` {s['rows']:,}" for s in given)
        text += (
            f"; {sum(s['rows'] for s in given):,} sentences labeled beforehand "
            f"(`--labels`): {folders}"
        )
    return text + (
        f"; {c['augment']} augmented variant(s) of every gold-pair and unlabeled sentence."
    )


def _store_text(c, d):
    """The dtypes the teacher's labels were kept in: the label folders' own (manifests)."""
    streams = d.get("label_streams")
    if streams is None:  # metrics written before folders were recorded
        return f"labels stored in `{c.get('store', 'float32')}`"
    memory = "the gold pairs' kept in `float32`"
    stores = sorted({s["store"] for s in streams})
    if not stores:
        return f"labels: {memory}"
    if len(stores) == 1:
        return f"streamed labels stored in `{stores[0]}`, {memory}"
    per_folder = ", ".join(f"`{s['folder']}` `{s['store']}`" for s in streams)
    return f"streamed labels stored per folder ({per_folder}), {memory}"


def _plots(out, metrics, teacher_scores, student_scores, names):
    files = {}
    # Training curves.
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
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
    handles, labels = ax.get_legend_handles_labels()
    dev_curve = metrics["training"].get("dev_curve")
    if dev_curve:  # the student's dev Spearman, on its own axis
        dev_ax = ax.twinx()
        xs, ys = zip(*dev_curve, strict=True)
        dev_ax.plot(xs, ys, "s-", color="tab:green", ms=3, label="dev Spearman x100")
        best = metrics["training"].get("early_stopping") or {}
        if best.get("patience") and best.get("best_step"):
            dev_ax.axvline(best["best_step"], color="tab:green", ls=":", lw=1)
        dev_ax.set_ylabel("dev Spearman x100")
        more = dev_ax.get_legend_handles_labels()
        handles, labels = handles + more[0], labels + more[1]
    ax.legend(handles, labels, fontsize=8)
    ax.set_title("Training curves")
    fig.tight_layout()
    files["curves"] = "training_curves.png"
    save_figure(fig, out / files["curves"])

    # Teacher versus student similarity on the test split.
    fig = Figure(figsize=(5, 5))
    ax = fig.subplots()
    ax.scatter(teacher_scores, student_scores, s=4, alpha=0.4)
    lo = float(min(teacher_scores.min(), student_scores.min()))
    ax.plot([lo, 1], [lo, 1], "k--", lw=1)
    ax.set_xlabel("teacher cosine similarity")
    ax.set_ylabel("student cosine similarity")
    ax.set_title(f"{names['test']} pairs")
    fig.tight_layout()
    files["scatter"] = "similarity_scatter.png"
    save_figure(fig, out / files["scatter"])

    # Quality against throughput.
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
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
    ax.set_ylabel(f"{names['test']} Spearman x100")
    ax.set_title("Quality against throughput")
    fig.tight_layout()
    files["tradeoff"] = "quality_vs_throughput.png"
    save_figure(fig, out / files["tradeoff"])
    return files


def _model2vec_line():
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


def _dev_curve_text(training):
    """The dev curve in one sentence: best point, last point, early stopping."""
    curve = training.get("dev_curve") or []
    if not curve:
        return ""
    best_step, best = max(curve, key=lambda point: point[1])
    last_step, last = curve[-1]
    text = (
        f"Dev Spearman of the student during training (every {curve[0][0]} steps): "
        f"{curve[0][1]:.2f} after {curve[0][0]} steps, best {best:.2f} after {best_step}, "
        f"{last:.2f} after the last, {last_step}."
    )
    stopping = training.get("early_stopping") or {}
    if stopping.get("patience"):
        stopped = (
            f"stopped after {last_step} steps" if stopping.get("stopped") else "ran every step"
        )
        text += (
            f" Early stopping (patience {stopping['patience']}): {stopped}; the student kept "
            f"is the one after {stopping['best_step']} steps."
        )
    return text + "\n\n"


def _quality_text(c, d, metrics):
    """Where quality and speed were measured: STS-B wording only for the STS-B files."""
    if is_stsb(d.get("files")):
        where = (
            f"Quality is on the STS-B **test** split (`{c['test']}`, {d['test_pairs']} pairs), "
            f"and Spearman also on the dev split (`{c['dev']}`, where settings are chosen)"
        )
    else:
        where = (
            f"Quality is on the **test** pairs of `{c['test']}` ({d['test_pairs']} pairs), and "
            f"Spearman also on the dev pairs of `{c['dev']}` (where settings are chosen)"
        )
    return f"""{where}: correlation x100 between the cosine similarity of the
two sentence embeddings and the gold score. Speed is
CPU sentences per second through the `embed` signature, batch 64, over the test
sentences, all models timed in turns in one process ({_rounds(metrics)} rounds; the
median round, and the speed-up is the median of the rounds' ratios)."""


def _time_text(t):
    """The time line: every step the run spent time on."""
    vocabulary = t.get("vocabulary_s")
    steps = [f"teacher pass {t['teacher_pass_s']:.0f} s"]
    if vocabulary is not None:
        steps.append(f"vocabulary distillation {vocabulary:.0f} s")
    steps += [
        f"training {t['training_s']:.0f} s",
        f"exports {t['export_s']:.0f} s",
        f"evaluation {t['evaluation_s']:.0f} s",
    ]
    if t.get("fidelity_s") is not None:
        steps.append(f"fidelity {t['fidelity_s']:.0f} s")
    return f"Time: {', '.join(steps)}, total {t['total_s'] / 60:.1f} min."


def _cell(text, chars=80):
    """A sentence as a Markdown table cell: shortened, its `|` escaped."""
    text = text if len(text) <= chars else text[: chars - 3] + "..."
    return text.replace("|", "\\|")


def _corpus_name(source):
    """The transfer corpus (`transfer-en`, `transfer-zh`) a fidelity source's file is of."""
    return os.path.basename(os.path.dirname(source.get("file", ""))) or "transfer corpus"


def _fidelity_section(metrics):
    """The per-source fidelity table (`agreement`), or the line saying why there is none."""
    f = metrics.get("fidelity")
    if not f:  # metrics written before the fidelity step
        return ""
    if "skipped" in f:
        return f"\nFidelity on unlabeled sentences: {f['skipped']}.\n"
    k, held_out = f["k"], [r.get("held_out") for r in f["sources"].values()]
    where = f"the sentences of each file of `{metrics['config'].get('fidelity')}`"
    if all(held_out):
        corpora = sorted({_corpus_name(r) for r in f["sources"].values()})
        where = (
            f"the held-out sentences of each {' and '.join(corpora)} source (the last "
            f"{HELDOUT_SENTENCES} of each file, never sampled for training)"
        )
    elif any(held_out):
        where += (
            f" (of a transfer corpus file, its held-out last {HELDOUT_SENTENCES}, never sampled "
            "for training)"
        )
    per = f"up to {f['sentences_per_source']:,}" if f["sentences_per_source"] else "all"
    sources = sorted(f["sources"].items(), key=lambda kv: kv[1]["spearman"])
    rows = [
        f"| `{name}` | {r['sentences']:,} | {r['spearman']:.2f} | {r['recall_at_k']:.2f}"
        + (f" (k={r['k']})" if r["k"] != k else "")
        + " |"
        for name, r in sources
    ]
    mean, worst = f["mean"], f["worst"]
    rows.append(f"| **mean** | | **{mean['spearman']:.2f}** | **{mean['recall_at_k']:.2f}** |")
    rows.append(
        f"| **worst** | | {worst['spearman']['value']:.2f} (`{worst['spearman']['source']}`) | "
        f"{worst['recall_at_k']['value']:.2f} (`{worst['recall_at_k']['source']}`) |"
    )
    name, r = sources[0]
    pairs = [
        f"| {d['teacher']:.3f} | {d['student']:.3f} | {_cell(d['first_sentence'])} | "
        f"{_cell(d['second_sentence'])} |"
        for d in r["disagreements"]
    ]
    return f"""
## Fidelity on unlabeled sentences

How closely the student imitates the teacher where there are no gold labels, on {where}:
{per} sentences per source (a seeded sample), embedded by both exports. Spearman x100
between the two models' cosine similarities of {f["pairs"]:,} random pairs of the source's
sentences (all pairs where there are fewer); recall@{k} x100: the share of each sentence's
{k} nearest neighbours by the teacher (cosine) that are also among its {k} nearest by the
student, averaged. Worst source first.

| source | sentences | Spearman | recall@{k} |
|---|---|---|---|
{chr(10).join(rows)}

The pairs of `{name}` on which the two disagree most:

| teacher cosine | student cosine | sentence | sentence |
|---|---|---|---|
{chr(10).join(pairs)}
"""


def write_report(out, metrics, teacher_scores, student_scores):
    """Writes `report.md` and its plots into the run folder `out`.

    The files are named as the user gave them; STS-B wording and the stored
    STS-B size sweep appear only when the run's data are the shipped STS-B
    files (`is_stsb`, `sweep_matches`).

    Args:
        out: `pathlib.Path` of the run folder.
        metrics: the run's metrics dict (as written to `metrics.json`).
        teacher_scores, student_scores: float arrays of the two models' test
            pair similarities.

    Returns:
        The path of `report.md`.
    """
    c = metrics["config"]
    d = metrics["data"]
    files = _plots(out, metrics, teacher_scores, student_scores, _set_names(c, d))
    rows = []
    for name, m in metrics["models"].items():
        rows.append(
            f"| {name} | {m.get('dev_spearman', float('nan')):.2f} | {m['spearman']:.2f} | "
            f"{m['pearson']:.2f} | {m['parameters']:,} | "
            f"{m['size_bytes'] / 2**20:.1f} MiB | {m['sentences_per_second']:.1f} |"
        )
    s = metrics["summary"]
    student = metrics["models"]["student"].get("name") or c["student"]
    text = f"""# Distillation report

Teacher `{c["teacher"]}` -> {student} student, objective `{c["objective"]}`,
alpha {c["alpha"]}, {_epochs_text(c)}, batch {c["batch_size"]}.

All numbers below were measured in this run, on this machine
({machine_description()}), through the exported raw-text SavedModels.
{_quality_text(c, d, metrics)}

| model | dev Spearman | test Spearman | test Pearson | parameters | SavedModel size | sentences/s |
|---|---|---|---|---|---|---|
{chr(10).join(rows)}

The student keeps **{s["spearman_kept_pct"]:.1f}%** of the teacher's Spearman at
**{s["speedup"]:.1f}x** its throughput. {_model2vec_line()}

Transfer set: {d["transfer_pairs"]:,} pairs ({d["labeled_pairs"]:,} with gold scores),
{d["transfer_sentences"]:,} sentences labeled by the teacher, {d.get("streamed_sentences", 0):,}
of them streamed from label shards (paired anew on every pass). Teacher pass in
`{c.get("teacher_precision", "float32")}`; {_store_text(c, d)}.

{_mix_text(c, d)}

{_time_text(metrics["timings"])}

{_dev_curve_text(metrics["training"])}![training curves]({files["curves"]})

![teacher versus student similarity]({files["scatter"]})

![quality against throughput]({files["tradeoff"]})
{_fidelity_section(metrics)}{_size_curve_section(out, metrics)}"""
    return write_text_atomic(out / "report.md", text)
