"""The sentence-pair report: about the user's run (their files, their labels folders, the
real store dtype), STS-B wording and the stored size sweep only for the STS-B setup."""

import dataclasses
import json
import pathlib

import numpy as np
import pytest

from kd_keras import fidelity
from kd_keras.recipes.sentence_pairs import report
from kd_keras.recipes.sentence_pairs.config import DistillConfig

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def no_tensorflow(monkeypatch):
    """The machine line imports TensorFlow; these tests check the text around it."""
    monkeypatch.setattr(report, "machine_description", lambda: "a test machine")


def sweep_rows(student="bilstm", steps=1600):
    config = {"teacher": "default", "student": student, "objective": "embedding", "augment": 1}
    return [
        {
            "unlabeled_limit": n,
            "transfer_sentences": 2 * n + 100,
            "student_dev_spearman": 80.0 + k,
            "teacher_dev_spearman": 86.5,
            "training_steps": steps,
            "config": config,
        }
        for k, n in enumerate((1000, 2000, 4000, 8000))
    ]


def stsb_config(tmp_path, **settings):
    """The default run (shipped STS-B and transfer-en), folders under `tmp_path`."""
    return DistillConfig(
        output_dir=str(tmp_path / "run"), cache_dir=str(tmp_path / "cache"), **settings
    ).resolved()


def user_config(tmp_path, **settings):
    """A run on the user's own pairs and sentences (tiny TSV files)."""
    rows = "sentence1\tsentence2\tscore\n" + "".join(
        f"a cat number {i}\ta dog number {i}\t{i % 5}\n" for i in range(6)
    )
    for name in ("pairs-train.tsv", "pairs-dev.tsv", "pairs-test.tsv"):
        (tmp_path / name).write_text(rows, encoding="utf-8")
    (tmp_path / "mine").mkdir(exist_ok=True)
    (tmp_path / "mine" / "a.txt").write_text("one\ntwo\nthree\n", encoding="utf-8")
    files = {s: str(tmp_path / f"pairs-{s}.tsv") for s in ("train", "dev", "test")}
    return stsb_config(tmp_path, **files, unlabeled=str(tmp_path / "mine" / "*.txt"), **settings)


def run_metrics(c, data=None, student_name="bilstm"):
    """A finished run's metrics dict, as `job._metrics` writes it."""

    def model(spearman, speed):
        return {
            "spearman": spearman,
            "pearson": spearman - 1,
            "dev_spearman": spearman + 1,
            "dev_pearson": spearman,
            "parameters": 1000,
            "size_bytes": 2**20,
            "sentences_per_second": speed,
            "speed_rounds": [1.0] * 5,
            "speedup": speed / 100,
        }

    data = {
        "transfer_pairs": 120,
        "labeled_pairs": 6,
        "transfer_sentences": 300,
        "memory_pairs": 100,
        "streamed_sentences": 0,
        "label_folders": [],
        "label_streams": [],
        "unlabeled_mix": {"a.txt": 3},
        "files": report.data_files(c),
        "test_pairs": 6,
        **(data or {}),
    }
    return {
        "config": dataclasses.asdict(c),
        "data": data,
        "models": {
            "teacher": model(82.0, 100.0),
            "student": {**model(76.0, 900.0), "name": student_name},
        },
        "training": {
            "history": {"val_loss": [0.5, 0.4]},
            "step_loss": [[10, 0.9], [20, 0.5]],
            "steps": 20,
        },
        "timings": {
            "teacher_pass_s": 3.0,
            "vocabulary_s": 12.0,
            "training_s": 30.0,
            "export_s": 5.0,
            "evaluation_s": 4.0,
            "total_s": 60.0,
        },
        "summary": {"spearman_kept_pct": 92.7, "speedup": 9.0},
    }


def written_report(tmp_path, metrics):
    out = tmp_path / "run"
    out.mkdir(exist_ok=True)
    scores = np.linspace(0.1, 0.9, metrics["data"]["test_pairs"])
    report.write_report(out, metrics, scores, scores[::-1])
    return (out / "report.md").read_text(encoding="utf-8"), out


def assert_no_internal_targets(text):
    for word in (">=", "target", "not met"):
        assert word not in text


def test_shipped_data_are_recognized_by_their_bytes(tmp_path):
    c = stsb_config(tmp_path)
    files = report.data_files(c)
    assert report.is_stsb(files)
    assert [f["path"] for f in files["unlabeled"]] == sorted(
        str(p) for p in (ROOT / "data" / "transfer-en").glob("*.txt.gz")
    )
    # The transfer-en digest against the corpus' own checksum list.
    listed = (ROOT / "data" / "transfer-en" / "SHA256SUMS").read_text().split("\n")
    sums = [line.split()[0] for line in listed if line.endswith(".txt.gz")]
    assert len(sums) == 23
    assert report.corpus_digest(sums) == report.TRANSFER_EN_SHA256
    assert report.corpus_digest([f["sha256"] for f in files["unlabeled"]]) == (
        report.TRANSFER_EN_SHA256
    )
    # A copy of STS-B test under another name is still STS-B; a changed byte is not.
    copy = tmp_path / "my-test.csv"
    copy.write_bytes((ROOT / "data" / "stsb" / "sts-test.csv").read_bytes())
    assert report.is_stsb(report.data_files(dataclasses.replace(c, test=str(copy))))
    copy.write_bytes(copy.read_bytes()[:-1])
    assert not report.is_stsb(report.data_files(dataclasses.replace(c, test=str(copy))))
    # No unlabeled sentences sampled: no unlabeled files recorded.
    assert report.data_files(dataclasses.replace(c, unlabeled_limit=0))["unlabeled"] == []


def test_report_of_a_user_run_names_its_files_and_no_benchmark(tmp_path):
    c = user_config(tmp_path)
    text, out = written_report(tmp_path, run_metrics(c, student_name="gru_student"))
    assert "Teacher `default` -> gru_student student" in text
    assert f"**test** pairs of `{tmp_path / 'pairs-test.tsv'}` (6 pairs)" in text
    assert f"dev pairs of `{tmp_path / 'pairs-dev.tsv'}`" in text
    assert f"6 gold pairs from `{tmp_path / 'pairs-train.tsv'}`" in text
    assert f"3 unlabeled sentences sampled from `{tmp_path / 'mine' / '*.txt'}`" in text
    assert "STS-B" not in text
    # The checkout's stored sweep has this teacher, student and objective, but
    # not these data: no sweep.
    assert report.SIZE_CURVE.exists()
    assert "transfer-set size" not in text and not (out / "transfer_size.png").exists()
    assert "vocabulary distillation 12 s" in text
    assert "labels: the gold pairs' kept in `float32`" in text
    assert_no_internal_targets(text)


def test_report_of_the_stsb_setup_shows_the_stored_sweep(tmp_path):
    c = stsb_config(tmp_path)
    metrics = run_metrics(c)
    curve = json.loads(report.SIZE_CURVE.read_text())
    assert report.sweep_matches(metrics["config"], metrics["data"], curve["rows"])
    text, out = written_report(tmp_path, metrics)
    assert "Quality is on the STS-B **test** split" in text
    assert "## Dev Spearman against transfer-set size" in text
    assert (out / "transfer_size.png").stat().st_size > 0
    assert_no_internal_targets(text)


@pytest.mark.parametrize(
    "change, matches",
    [
        ({}, True),
        ({"seed": 3, "unlabeled_limit": 5000, "throughput_seconds": 2.0}, True),
        ({"hidden_dim": 64}, False),
        ({"steps_per_epoch": 100}, False),
        ({"student": "static"}, False),
        ({"augment": 2}, False),
        ({"labels": "my-labels"}, False),
    ],
)
def test_sweep_rule(tmp_path, change, matches):
    c = stsb_config(tmp_path, **change)
    metrics = run_metrics(c)
    assert report.sweep_matches(metrics["config"], metrics["data"], sweep_rows()) is matches


def test_sweep_rule_needs_the_shipped_files_and_the_sweeps_steps(tmp_path):
    c = stsb_config(tmp_path)
    files = report.data_files(c)
    c_dict = dataclasses.asdict(c)
    assert report.sweep_matches(c_dict, {"files": files}, sweep_rows())
    assert not report.sweep_matches(c_dict, {"files": files}, sweep_rows(steps=800))
    some = {**files, "unlabeled": files["unlabeled"][:5]}
    assert not report.sweep_matches(c_dict, {"files": some}, sweep_rows())
    user = report.data_files(user_config(tmp_path))
    assert not report.sweep_matches(c_dict, {"files": {**files, "train": user["train"]}}, [])
    assert not report.sweep_matches(c_dict, {}, sweep_rows())  # nothing recorded


def test_size_curve_section_shows_the_stored_sweep_of_the_same_setup(tmp_path):
    curve = tmp_path / "transfer_size.json"
    curve.write_text(json.dumps({"command": "python sweep", "machine": "M", "rows": sweep_rows()}))
    metrics = run_metrics(stsb_config(tmp_path))
    text = report._size_curve_section(tmp_path, metrics, curve)
    assert "| 4,000 | 8,100 | 82.00 |" in text
    assert "`python sweep` on M" in text
    assert (tmp_path / "transfer_size.png").stat().st_size > 0
    # Another student, a missing or broken file: no section.
    static = run_metrics(stsb_config(tmp_path, student="static"))
    assert report._size_curve_section(tmp_path, static, curve) == ""
    assert report._size_curve_section(tmp_path, metrics, tmp_path / "missing.json") == ""
    curve.write_text("{not json")
    assert report._size_curve_section(tmp_path, metrics, curve) == ""


def test_mix_text_lists_every_source_largest_first():
    c = {"train": "sts-train.csv", "augment": 1, "unlabeled": "x/*.gz"}
    d = {"labeled_pairs": 5749, "unlabeled_mix": {"a.txt.gz": 100, "b.txt.gz": 300}}
    text = report._mix_text(c, d)
    assert text.startswith("Training-data mix: 5,749 gold pairs from `sts-train.csv`")
    assert "400 unlabeled sentences sampled from `x/*.gz`: `b.txt.gz` 300 (75%)" in text
    assert "`a.txt.gz` 100 (25%)" in text
    no_unlabeled = report._mix_text(c, {"labeled_pairs": 3, "unlabeled_mix": {}})
    assert "unlabeled sentences" not in no_unlabeled


def test_labels_folders_are_in_the_mix_with_their_store(
    tmp_path, make_tiny_teacher, tiny_vocabulary
):
    from kd_keras.labels import label_sentences
    from kd_keras.recipes.sentence_pairs import job
    from kd_keras.transfer import transfer_parts

    teacher = make_tiny_teacher(tiny_vocabulary, hidden_dim=8, seed=1)
    own, given = tmp_path / "cache" / "labels-run", tmp_path / "my-labels"
    label_sentences(teacher, ["one", "two"], own, "x", progress=False)  # the run's: float32
    sentences = ["a cat", "a dog", "a bird"]
    label_sentences(teacher, sentences, given, "y", store="float16", progress=False)
    pairs, _ = transfer_parts(["a b", "c d"], ["e f", "g h"], [1.0, 2.0])

    c = user_config(tmp_path, labels=str(given))
    summary = job._transfer_summary(pairs, [own, given], [str(given)])
    assert summary["streamed_sentences"] == 5
    assert summary["label_streams"] == [
        {"folder": str(own), "rows": 2, "store": "float32", "given": False},
        {"folder": str(given), "rows": 3, "store": "float16", "given": True},
    ]
    text, _ = written_report(tmp_path, run_metrics(c, {**summary, "unlabeled_mix": {}}))
    assert f"3 sentences labeled beforehand (`--labels`): `{given}` 3" in text
    assert f"stored per folder (`{own}` `float32`, `{given}` `float16`)" in text
    # Only the float16 folder streamed: that is the store, whatever `--store` says.
    summary = job._transfer_summary(pairs, [given], [str(given)])
    text, _ = written_report(tmp_path, run_metrics(c, {**summary, "unlabeled_mix": {}}))
    assert c.store == "float32"
    assert "streamed labels stored in `float16`, the gold pairs' kept in `float32`" in text
    assert "stored in `float32`" not in text


def _fidelity_metrics(corpus="transfer-en"):
    sources = {}
    for name, rho, recall in (("gap.txt.gz", 80.0, 60.0), ("sgd.txt.gz", 70.0, 65.0)):
        sources[name] = {
            "file": f"/somewhere/data/{corpus}/{name}",
            "sentences": 300,
            "pairs": 2000,
            "spearman": rho,
            "k": 10,
            "recall_at_k": recall,
            "held_out": True,
            "disagreements": [
                {"teacher": 0.9, "student": 0.1, "first_sentence": "a | b", "second_sentence": "c"}
            ],
        }
    return {
        "sentences_per_source": 300,
        "pairs": 2000,
        "k": 10,
        "sources": sources,
        **fidelity.summarize(sources),
    }


def test_report_has_the_per_source_fidelity_table_with_mean_and_worst(tmp_path):
    metrics = run_metrics(stsb_config(tmp_path))
    metrics["fidelity"] = _fidelity_metrics()
    metrics["timings"]["fidelity_s"] = 7.0
    text, _ = written_report(tmp_path, metrics)
    assert "## Fidelity on unlabeled sentences" in text
    assert "held-out sentences of each transfer-en source (the last 500" in text
    table = text[text.index("| source | sentences | Spearman | recall@10 |") :]
    rows = table.splitlines()
    assert rows[2] == "| `sgd.txt.gz` | 300 | 70.00 | 65.00 |"  # worst Spearman first
    assert rows[3] == "| `gap.txt.gz` | 300 | 80.00 | 60.00 |"
    assert rows[4] == "| **mean** | | **75.00** | **62.50** |"
    assert rows[5] == "| **worst** | | 70.00 (`sgd.txt.gz`) | 60.00 (`gap.txt.gz`) |"
    # A Chinese run's table names the Chinese corpus.
    metrics["fidelity"] = _fidelity_metrics("transfer-zh")
    text, _ = written_report(tmp_path, metrics)
    assert "held-out sentences of each transfer-zh source (the last 500" in text
    assert "| 0.900 | 0.100 | a \\| b | c |" in text
    assert "fidelity 7 s" in text

    metrics["fidelity"] = {"skipped": "off (--fidelity none)"}
    text, _ = written_report(tmp_path, metrics)
    assert "Fidelity on unlabeled sentences: off (--fidelity none)." in text
    del metrics["fidelity"]  # a run written before the step
    assert "Fidelity" not in written_report(tmp_path, metrics)[0]


def test_report_tells_the_dev_curve_and_early_stopping(tmp_path):
    c = user_config(tmp_path)
    metrics = run_metrics(c)
    text, _ = written_report(tmp_path, metrics)
    assert "Dev Spearman of the student during training" not in text  # a run without a curve
    metrics["training"]["dev_curve"] = [[100, 50.0], [200, 71.5], [300, 70.25]]
    stopping = {"patience": 1, "steps_per_evaluation": 100, "best_step": 200, "stopped": True}
    metrics["training"]["early_stopping"] = stopping
    text, _ = written_report(tmp_path, metrics)
    assert (
        "Dev Spearman of the student during training (every 100 steps): 50.00 after 100 steps, "
        "best 71.50 after 200, 70.25 after the last, 300. Early stopping (patience 1): stopped "
        "after 300 steps; the student kept is the one after 200 steps." in " ".join(text.split())
    )
    metrics["training"]["early_stopping"] = {**stopping, "patience": 0, "stopped": False}
    text, _ = written_report(tmp_path, metrics)
    assert "best 71.50 after 200" in text and "Early stopping" not in text


def test_report_has_the_int8_rows_beside_the_float32_ones(tmp_path):
    c = user_config(tmp_path)
    metrics = run_metrics(c)
    models = metrics["models"]
    models["teacher int8"] = {**models["teacher"], "dev_spearman": 80.5, "size_bytes": 2**19}
    models["student int8"] = {**models["student"], "sentences_per_second": 950.0}
    text, _ = written_report(tmp_path, metrics)
    assert "| teacher int8 | 80.50 | 82.00 | 81.00 | 1,000 | 0.5 MiB | 100.0 |" in text
    assert "| student int8 | 77.00 | 76.00 | 75.00 | 1,000 | 1.0 MiB | 950.0 |" in text
