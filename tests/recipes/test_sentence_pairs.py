"""The sentence-pair recipe (`kd-keras distill`) end to end on a tiny random teacher."""

import argparse
import json
import pathlib
import re

import numpy as np
import pytest
import tensorflow as tf

from kd_keras import cli, teacher_pass
from kd_keras.batching import TRAIN_BUCKETS
from kd_keras.data import DataError, data_path, read_sentences
from kd_keras.evaluation import pearson, spearman
from kd_keras.recipes import sentence_pairs
from kd_keras.recipes.config import (
    ConfigError,
    add_config_arguments,
    config_from_args,
    load_config_file,
)
from kd_keras.recipes.sentence_pairs import training

HEADER = "sentence1,sentence2,score\n"


@pytest.fixture(autouse=True)
def _in_a_fresh_folder(tmp_path, monkeypatch):
    """Runs go to `runs/` under the current folder: never the checkout's own."""
    monkeypatch.chdir(tmp_path)


def slice_lines(src, dst, start, count):
    with open(src, encoding="utf-8") as f:
        lines = f.readlines()[start : start + count]
    dst.write_text("".join(lines), encoding="utf-8")
    return str(dst)


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory, make_tiny_teacher, minilm_vocabulary):
    root = tmp_path_factory.mktemp("distill")
    teacher = make_tiny_teacher(minilm_vocabulary, num_layers=1, sequence_length=128)
    teacher_path = root / "tiny_teacher.keras"
    teacher.save(str(teacher_path))
    files = {
        "teacher": str(teacher_path),
        "train": slice_lines(data_path("stsb", "sts-train.csv"), root / "train.tsv", 0, 240),
        "dev": slice_lines(data_path("stsb", "sts-dev.csv"), root / "dev.tsv", 0, 60),
        "test": slice_lines(data_path("stsb", "sts-test.csv"), root / "test.tsv", 0, 80),
        "unlabeled": slice_lines(
            data_path("sst2", "sentiment-train"), root / "unlabeled.txt", 0, 60
        ),
    }
    return root, files


def tiny_config(files, out, cache, **overrides):
    settings = dict(
        files,
        unlabeled_limit=60,
        augment=1,
        repaired_pairs=20,
        embedding_dim=16,
        hidden_dim=8,
        embedding_init="random",  # vocabulary distillation: tests/test_student_init.py
        epochs=1,
        steps_per_epoch=0,  # one pass over the tiny transfer set
        batch_size=32,
        checkpoints_per_epoch=2,
        throughput_seconds=0.2,
        fidelity_limit=20,  # of each transfer-en file's held-out tail
        output_dir=str(out),
        cache_dir=str(cache),
    )
    settings.update(overrides)
    return sentence_pairs.DistillConfig(**settings)


def evaluate_export(path, test_file):
    import tensorflow_text  # noqa: F401

    from kd_keras.data import read_pairs

    a, b, gold = read_pairs(test_file)
    loaded = tf.saved_model.load(str(path))
    scores = loaded.signatures["similarity"](sentence_a=tf.constant(a), sentence_b=tf.constant(b))[
        "score"
    ].numpy()
    return 100 * spearman(scores, gold), 100 * pearson(scores, gold)


@pytest.mark.slow
def test_distill_end_to_end_report_matches_export_and_rerun_hits_cache(tiny_setup, monkeypatch):
    root, files = tiny_setup
    out, cache = root / "run1", root / "cache"
    metrics = sentence_pairs.run(tiny_config(files, out, cache), progress=False)

    for name in (
        "config.json",
        "metrics.json",
        "report.md",
        "test_scores.json",
        "training_curves.png",
        "similarity_scatter.png",
        "quality_vs_throughput.png",
        "student/saved_model.pb",
        "student.keras",
        "student.preprocessor.json",
    ):
        assert (out / name).is_file(), name
    assert not (out / "backup").exists()  # removed once training finished
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["models"] == json.loads(json.dumps(metrics["models"]))

    # The report's numbers are a fresh evaluation of the exported student.
    student = on_disk["models"]["student"]
    fresh_spearman, fresh_pearson = evaluate_export(out / "student", files["test"])
    assert student["spearman"] == pytest.approx(fresh_spearman, abs=1e-6)
    assert student["pearson"] == pytest.approx(fresh_pearson, abs=1e-6)
    teacher_spearman, _ = evaluate_export(on_disk["models"]["teacher"]["export"], files["test"])
    assert on_disk["models"]["teacher"]["spearman"] == pytest.approx(teacher_spearman, abs=1e-6)
    report = (out / "report.md").read_text()
    assert f"| {fresh_spearman:.2f} | {fresh_pearson:.2f} |" in report
    dev_spearman, _ = evaluate_export(out / "student", files["dev"])
    assert student["dev_spearman"] == pytest.approx(dev_spearman, abs=1e-6)
    assert f"| student | {dev_spearman:.2f} | {fresh_spearman:.2f} |" in report
    # The dev curve: a point per checkpoint, the last one the exported student's dev score.
    curve = on_disk["training"]["dev_curve"]
    assert [step for step, _ in curve] == [
        on_disk["training"]["early_stopping"]["steps_per_evaluation"] * k for k in (1, 2)
    ]
    assert curve[-1][1] == pytest.approx(dev_spearman, abs=1e-3)
    assert "Dev Spearman of the student during training" in report
    assert student["parameters"] < on_disk["models"]["teacher"]["parameters"] * 2
    assert on_disk["data"]["labeled_pairs"] == 240
    assert on_disk["data"]["transfer_pairs"] > 240
    assert all(np.isfinite(on_disk["training"]["history"]["loss"]))

    # Fidelity on the held-out tails of the 23 transfer-en files, through both exports.
    from kd_keras.evaluation import embed_text_export
    from kd_keras.fidelity import fidelity
    from kd_keras.recipes.sentence_pairs.agreement import fidelity_sets

    sources = on_disk["fidelity"]["sources"]
    assert len(sources) == 23
    assert all(r["held_out"] and r["sentences"] == 20 for r in sources.values())
    sentences = fidelity_sets(tiny_config(files, out, cache).resolved())["gap.txt.gz"]["sentences"]
    teacher_dir = on_disk["models"]["teacher"]["export"]
    expected = fidelity(
        embed_text_export(teacher_dir, sentences), embed_text_export(out / "student", sentences)
    )
    assert sources["gap.txt.gz"]["spearman"] == pytest.approx(expected["spearman"], abs=1e-3)
    assert sources["gap.txt.gz"]["recall_at_k"] == pytest.approx(expected["recall_at_k"])
    assert "## Fidelity on unlabeled sentences" in report
    assert f"| **mean** | | **{on_disk['fidelity']['mean']['spearman']:.2f}** |" in report

    # A rerun with the same cache never runs the teacher over the data again.
    def no_teacher_pass(*args, **kwargs):
        raise AssertionError("the teacher pass should come from the cache")

    monkeypatch.setattr(teacher_pass, "run_teacher", no_teacher_pass)
    # Nor over the test and dev pairs: the teacher export's figures are cached.
    from kd_keras import evaluation

    evaluated = []
    evaluate = evaluation.evaluate_text_export_in_subprocess

    def record(path, *args, **kwargs):
        evaluated.append(str(path))
        return evaluate(path, *args, **kwargs)

    monkeypatch.setattr(evaluation, "evaluate_text_export_in_subprocess", record)
    embedded = []
    embed = evaluation.embed_text_exports_in_subprocess

    def record_embed(paths, *args, **kwargs):
        embedded.extend(str(p) for p in paths)
        return embed(paths, *args, **kwargs)

    monkeypatch.setattr(evaluation, "embed_text_exports_in_subprocess", record_embed)
    assert len(list(cache.glob("teacher-scores-*.npz"))) == 1
    assert len(list(cache.glob("teacher-fidelity-*.npz"))) == 1
    again = sentence_pairs.run(tiny_config(files, root / "run2", cache), progress=False)
    assert evaluated == [str(root / "run2" / "student")]
    assert embedded == [str(root / "run2" / "student")]
    assert again["models"]["teacher"]["spearman"] == pytest.approx(
        on_disk["models"]["teacher"]["spearman"], abs=1e-9
    )
    assert again["data"] == on_disk["data"]


class Killed(Exception):
    """Stands in for a kill at the start of a phase."""


@pytest.mark.slow
def test_a_run_killed_after_training_resumes_at_the_phase_it_was_in(tiny_setup, monkeypatch):
    """Killed while exporting, evaluating, measuring fidelity or writing the report,
    the same run again reuses every finished phase and never trains again."""
    from kd_keras.phases import output_digest
    from kd_keras.recipes.sentence_pairs import job

    root, files = tiny_setup
    out, cache = root / "resumed", root / "cache"
    config = tiny_config(files, out, cache, quantize="int8")
    calls = []

    def counted(name, real, kill=False):
        def wrapper(*args, **kwargs):
            calls.append(name)
            if kill:
                raise Killed(name)
            return real(*args, **kwargs)

        return wrapper

    real = {name: getattr(job, name) for name in ("train", "_export", "_measure", "write_report")}
    real["fidelity_metrics"] = job.fidelity_metrics
    order = ["train", "_export", "_measure", "fidelity_metrics", "write_report"]
    digests = None
    for killed_at in order[1:]:
        calls.clear()
        for name in order:
            monkeypatch.setattr(job, name, counted(name, real[name], kill=name == killed_at))
        with pytest.raises(Killed):
            sentence_pairs.run(config, progress=False)
        assert not (out / "metrics.json").exists()
        # Only the phase the last run was killed in runs again, then the next one.
        assert calls == [order[order.index(killed_at) - 1], killed_at]
        if killed_at == "_export":
            digests = {"student.keras": output_digest(out / "student.keras")}
        assert output_digest(out / "student.keras") == digests["student.keras"]
    calls.clear()
    for name in order:
        monkeypatch.setattr(job, name, counted(name, real[name]))
    metrics = sentence_pairs.run(config, progress=False)
    assert calls == ["write_report"]
    assert output_digest(out / "student.keras") == digests["student.keras"]
    assert sorted(p.stem for p in (out / "phases").glob("*.json")) == [
        "evaluate",
        "export",
        "fidelity",
        "train",
    ]
    # The report is the first run's training and the phases' figures.
    assert len(metrics["training"]["history"]["loss"]) == 2  # two checkpoints
    assert metrics["timings"]["training_s"] > 0
    fresh_spearman, _ = evaluate_export(out / "student", files["test"])
    assert metrics["models"]["student"]["spearman"] == pytest.approx(fresh_spearman, abs=1e-6)
    assert "student int8" in metrics["models"]

    # Another setting redoes the phases it affects: here, all of them.
    calls.clear()
    sentence_pairs.run(
        tiny_config(files, out, cache, quantize="int8", seed=1, overwrite=True), progress=False
    )
    assert calls == order


def run_cli(argv, capsys):
    code = cli.main(["distill", *argv])
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    "content, message",
    [
        ("sentence1,sentence2\na,b\n", r"bad.csv:1: missing column 'score'"),
        (HEADER + "a,b,4\nc,d,high\n", r"bad.csv:3: score 'high' is not a number"),
        ("", r"bad.csv: no sentence pairs found"),
        (HEADER + "a,,3\n", r"bad.csv:2: empty sentence"),
    ],
)
def test_bad_data_files_give_clear_errors(tmp_path, capsys, content, message):
    bad = tmp_path / "bad.csv"
    bad.write_text(content, encoding="utf-8")
    code, err = run_cli(["--train", str(bad), "--output-dir", str(tmp_path / "run")], capsys)
    assert code == 2
    assert str(bad) in err
    assert re.search(message, err), err


def test_config_file_mirrors_flags_and_flags_win(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("objective: score\nhidden-dim: 32\nalpha: 0.5\n", encoding="utf-8")
    parser = argparse.ArgumentParser()
    Config = sentence_pairs.DistillConfig
    add_config_arguments(parser, Config, sentence_pairs.HELP, sentence_pairs.CHOICES)
    args = parser.parse_args(["--config", str(config), "--alpha", "0.25", "--epochs", "2"])
    c = config_from_args(Config, args)
    assert (c.objective, c.hidden_dim, c.alpha, c.epochs) == ("score", 32, 0.25, 2)
    json_config = tmp_path / "run.json"
    json_config.write_text(json.dumps({"student": "tiny_bert", "typo_setting": 1}))
    with pytest.raises(ConfigError, match="unknown setting 'typo_setting'"):
        load_config_file(str(json_config), Config)
    with pytest.raises(ConfigError, match="objective"):
        Config(objective="cosine").validate()
    # Config files follow the flags' types: a string is no number, nor a bool.
    with pytest.raises(ConfigError, match=r"--epochs: expected int, got '1'"):
        Config(epochs="1").validate()
    with pytest.raises(ConfigError, match=r"--embedding-skip: expected bool"):
        Config(embedding_skip="no").validate()
    Config(alpha=1, learning_rate=1).validate()  # an int where a float goes is fine


def test_a_preset_sits_under_the_config_file_and_the_flags(tmp_path, monkeypatch):
    Config = sentence_pairs.DistillConfig
    monkeypatch.setitem(
        sentence_pairs.PRESETS, "quality", {"epochs": 9, "hidden_dim": 64, "early_stopping": 3}
    )
    config = tmp_path / "run.yaml"
    config.write_text("hidden-dim: 32\n", encoding="utf-8")
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, Config, sentence_pairs.HELP, sentence_pairs.CHOICES)
    argv = ["--preset", "quality", "--config", str(config), "--early-stopping", "0"]
    c = config_from_args(Config, parser.parse_args(argv))
    # The preset's epochs; the file's width; the flag's 0, though 0 is the default.
    assert (c.epochs, c.hidden_dim, c.early_stopping, c.preset) == (9, 32, 0, "quality")
    c.resolved().validate()
    assert Config.from_preset("quality", epochs=2).epochs == 2
    assert Config.from_preset("none") == Config()
    with pytest.raises(ConfigError, match=r"DistillConfig.from_preset\('quality'"):
        Config(preset="quality").validate()  # the constructor alone would apply nothing
    with pytest.raises(ConfigError, match=r"--preset 'fast': expected one of none, quality"):
        Config.from_preset("fast")
    with pytest.raises(SystemExit):
        parser.parse_args(["--preset", "fast"])


def _check_batch(x, y, lengths_of, bounds):
    """Every side padded to its own longest row; one length bucket per batch."""
    pair_length = None
    for side in ("sentence_a", "sentence_b"):
        ids = x["student"][side].numpy()
        lengths = (ids != 0).sum(axis=1)
        assert ids.shape[1] == lengths.max()  # padded to its own longest row
        pair_length = lengths if pair_length is None else np.maximum(pair_length, lengths)
    assert len(set(np.searchsorted(bounds, pair_length, side="right"))) == 1


def test_training_batches_are_length_bucketed_and_cover_every_pair():
    from kd_keras.models.bert_tokenizer import BertPreprocessor, load_vocabulary
    from kd_keras.models.bilstm import build_bilstm_encoder
    from kd_keras.models.teachers import default_model_dir
    from kd_keras.transfer import TransferSet

    vocabulary = load_vocabulary(default_model_dir() / "vocab.txt")
    preprocessor = BertPreprocessor(vocabulary, sequence_length=64)
    rng = np.random.default_rng(0)
    # Sentences of 1 to 14 words: token lengths spread over several buckets,
    # each filled often enough that no pair waits more than a pass or so.
    sentences = [" ".join(["word"] * int(n)) for n in rng.integers(1, 15, size=300)]
    first, second = rng.integers(0, 300, size=(2, 500))
    gold = np.arange(500, dtype=np.float32)  # distinct, to follow every pair
    transfer = TransferSet(sentences, first, second, gold)
    table = rng.normal(size=(300, 8)).astype(np.float32)
    encoder = build_bilstm_encoder(len(vocabulary), embedding_dim=4, hidden_dim=2, output_dim=8)
    c = sentence_pairs.DistillConfig(batch_size=16)
    dev = (sentences[:5], sentences[5:10], np.zeros(5, np.float32))
    train, _, steps = training.pair_datasets(
        c, transfer, (table, table[:10]), preprocessor, encoder, dev
    )
    assert steps == 32  # ceil(500 / 16): one pass

    lengths = np.array([n + 2 for n in (len(s.split()) for s in sentences)])  # [CLS] ... [SEP]
    bounds = np.array(TRAIN_BUCKETS)
    seen = []
    for x, y in train.take(4 * steps):  # an endless stream: about four passes
        rows = y.numpy().astype(int)
        seen += rows.tolist()
        assert len(rows) <= 16
        _check_batch(x, y, lengths, bounds)
        for side, index in (("sentence_a", first[rows]), ("sentence_b", second[rows])):
            assert ((x["student"][side].numpy() != 0).sum(axis=1) == lengths[index]).all()
        unit = table / np.linalg.norm(table, axis=-1, keepdims=True)  # as the student's
        np.testing.assert_allclose(
            x["teacher_outputs"]["embeddings"].numpy(),
            np.stack([unit[first[rows]], unit[second[rows]]], axis=1),
            rtol=1e-5,
        )
    counts = np.bincount(seen, minlength=500)
    assert counts.min() >= 2 and counts.max() <= 6  # every pair, about once a pass
    assert seen[:500] != seen[500:1000]  # a new order on each pass


def test_streamed_labels_pair_sentences_anew_with_their_teacher_outputs(
    tmp_path, make_tiny_teacher, minilm_vocabulary
):
    from kd_keras.labels import label_sentences
    from kd_keras.models.bilstm import build_bilstm_encoder
    from kd_keras.transfer import TransferSet

    teacher = make_tiny_teacher(minilm_vocabulary, hidden_dim=8, sequence_length=64)
    preprocessor = teacher.preprocessor
    rng = np.random.default_rng(1)
    words = ["cat", "dog", "tree", "red", "ran", "the"]
    free = list({" ".join(rng.choice(words, size=rng.integers(1, 20))) for _ in range(120)})
    labels = tmp_path / "labels"
    label_sentences(teacher, free, labels, "free", shard_size=16, progress=False)
    by_ids = {}
    for sentence, embedding in zip(free, teacher_pass.run_teacher(teacher, free), strict=True):
        ids = preprocessor.pack(preprocessor.tokenize([sentence]))["token_ids"].numpy()[0]
        by_ids[tuple(ids[ids != 0])] = embedding

    gold_sentences = free[:10]
    pairs = TransferSet(gold_sentences, np.arange(5), np.arange(5, 10), np.arange(5, dtype="f"))
    table = teacher_pass.run_teacher(teacher, gold_sentences)
    encoder = build_bilstm_encoder(
        len(minilm_vocabulary), embedding_dim=4, hidden_dim=2, output_dim=8
    )
    c = sentence_pairs.DistillConfig(batch_size=8, sequence_length=64)
    dev = (free[:3], free[3:6], np.zeros(3, np.float32))
    train, _, steps = training.pair_datasets(
        c, pairs, (table, table[:6]), preprocessor, encoder, dev, labels=[labels]
    )
    assert steps == -(-(5 + len(free) // 2) // 8)
    streamed = []
    for x, y in train.take(3 * steps):
        _check_batch(x, y, None, np.array(TRAIN_BUCKETS))
        outputs = x["teacher_outputs"]["embeddings"].numpy()
        for k in np.flatnonzero(np.isnan(y.numpy())):  # the streamed pairs
            for side, column in (("sentence_a", 0), ("sentence_b", 1)):
                ids = x["student"][side].numpy()[k]
                np.testing.assert_allclose(
                    outputs[k, column], by_ids[tuple(ids[ids != 0])], atol=1e-6
                )
                streamed.append(tuple(ids[ids != 0]))
    assert len(set(streamed)) > 0.9 * len(free)  # nearly every sentence in three passes
    assert 0.85 < len(streamed) / (2 * 3 * steps * 8) <= 1.0  # most pairs are streamed ones


def test_target_pca_centers_and_projects_the_teachers_targets(
    tmp_path, make_tiny_teacher, minilm_vocabulary
):
    from kd_keras.labels import label_sentences
    from kd_keras.models.bilstm import build_bilstm_encoder
    from kd_keras.transfer import TransferSet

    teacher = make_tiny_teacher(minilm_vocabulary, hidden_dim=8, sequence_length=64)
    rng = np.random.default_rng(3)
    words = ["cat", "dog", "tree", "red", "ran", "the", "a", "big"]
    free = list({" ".join(rng.choice(words, size=rng.integers(2, 9))) for _ in range(80)})
    labels = tmp_path / "labels"
    label_sentences(teacher, free, labels, "free", shard_size=16, progress=False)
    gold_sentences = free[:10]
    table = teacher_pass.run_teacher(teacher, gold_sentences)

    # The fit, against NumPy: the table's rows then the shards', unit length, centered.
    rows = np.concatenate([table, teacher_pass.run_teacher(teacher, free)])[:40]
    unit = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    mean, projection = training.target_transform(table, [labels], components=3, limit=40)
    np.testing.assert_allclose(mean, unit.mean(0), atol=1e-6)
    np.testing.assert_allclose(projection @ projection, projection, atol=1e-5)  # a projection
    assert np.linalg.matrix_rank(projection, tol=1e-4) == 3
    centered = unit - unit.mean(0)
    kept = np.linalg.norm(centered @ projection) ** 2 / np.linalg.norm(centered) ** 2
    top = np.linalg.svd(centered, compute_uv=False) ** 2
    assert kept == pytest.approx(top[:3].sum() / top.sum(), rel=1e-4)  # the strongest 3
    with pytest.raises(ValueError, match="target_pca=9"):
        training.target_transform(table, [], components=9)

    # What the student imitates: (t / |t| - mean) @ projection, at unit length.
    pairs = TransferSet(gold_sentences, np.arange(5), np.arange(5, 10), np.arange(5, dtype="f"))
    encoder = build_bilstm_encoder(
        len(minilm_vocabulary), embedding_dim=4, hidden_dim=2, output_dim=8
    )
    c = sentence_pairs.DistillConfig(batch_size=4, sequence_length=64, target_pca=3)
    dev = (free[:3], free[3:6], np.zeros(3, np.float32))
    _, val, _ = training.pair_datasets(
        c, pairs, (table, table[:6]), teacher.preprocessor, encoder, dev, labels=[labels]
    )
    mean, projection = training.target_transform(table, [labels], components=3)
    dev_table = table[:6] / np.linalg.norm(table[:6], axis=1, keepdims=True)
    want = (dev_table - mean) @ projection
    want /= np.linalg.norm(want, axis=1, keepdims=True)
    got = np.concatenate([x["teacher_outputs"]["embeddings"].numpy() for x, _ in val])
    np.testing.assert_allclose(got[:, 0], want[:3], atol=1e-5)
    np.testing.assert_allclose(got[:, 1], want[3:], atol=1e-5)


# === Refused before any expensive step, as one line with exit 2 ===


def test_a_finished_run_is_refused_unless_overwrite(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.json").write_text("{}")
    code, err = run_cli(["--output-dir", str(out), "--cache-dir", str(tmp_path / "c")], capsys)
    assert code == 2, err
    assert "holds a finished run" in err and "--overwrite" in err
    assert err.count("\n") == 1
    assert (out / "metrics.json").read_text() == "{}"  # untouched
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--output-dir", "{file}"], "--output-dir {file} exists and is not a folder"),
        (["--cache-dir", "{file}"], "--cache-dir {file} exists and is not a folder"),
        (["--output-dir", "/proc/kd-keras-test/run"], "cannot be created"),
        (["--learning-rate", "nan"], "--learning-rate must be positive; got nan"),
        (["--max-score", "0"], "--max-score must be positive; got 0.0"),
        (["--max-pairs", "-5"], "--max-pairs must be at least 1; got -5"),
        (["--temperature", "0"], "--temperature must be positive; got 0.0"),
        (["--temperature", "2"], "--objective embedding: LogitMSE has no temperature"),
        (["--objective", "score", "--distillation-loss", "forward_kl"], "`logit_mse` only"),
    ],
)
def test_bad_settings_are_one_line_errors(tmp_path, capsys, argv, message):
    file = tmp_path / "file"
    file.write_text("not a folder")
    argv = [a.format(file=file) for a in argv]
    if "--output-dir" not in argv:
        argv += ["--output-dir", str(tmp_path / "run")]
    code, err = run_cli(argv, capsys)
    assert code == 2, err
    assert err.startswith("kd-keras distill: error: ") and message.format(file=file) in err
    assert err.count("\n") == 1
    assert file.read_text() == "not a folder"


@pytest.mark.parametrize(
    "setting, message",
    [
        ("epochs: '1'", "--epochs: expected int, got '1' (str)"),
        ("epochs: 1.5", "--epochs: expected int, got 1.5 (float)"),
        ("alpha: '0.5'", "--alpha: expected float, got '0.5' (str)"),
        ("embedding_skip: 'no'", "--embedding-skip: expected bool, got 'no' (str)"),
    ],
)
def test_config_files_follow_the_same_rules_as_flags(tmp_path, capsys, setting, message):
    config = tmp_path / "run.yaml"
    config.write_text(setting + "\n", encoding="utf-8")
    code, err = run_cli(["--config", str(config), "--output-dir", str(tmp_path / "run")], capsys)
    assert code == 2, err
    assert err == f"kd-keras distill: error: {message}\n"


def test_unlabeled_sentences_from_several_files_globs_and_gz(tmp_path):
    import gzip

    from kd_keras.recipes.sentence_pairs import job

    (tmp_path / "a.txt").write_text("one\ntwo\tlabel 1\n\n", encoding="utf-8")
    with gzip.open(tmp_path / "b.txt.gz", "wt", encoding="utf-8") as f:
        f.write("three\nfour\n")
    (tmp_path / "c.txt.gz").write_bytes(gzip.compress(b"five\n"))
    config = sentence_pairs.DistillConfig(
        unlabeled=f"{tmp_path / 'a.txt'}, {tmp_path / '*.gz'}", unlabeled_limit=100
    ).resolved()
    _, unlabeled, mix, heldout = job._load_data(config)
    assert sorted(unlabeled) == ["five", "four", "one", "three", "two"]
    assert heldout == {}  # not transfer-en files: nothing held out
    assert mix == {"a.txt": 2, "b.txt.gz": 2, "c.txt.gz": 1}
    config.unlabeled_limit = 2
    _, sample, mix, _ = job._load_data(config)
    assert len(sample) == 2 and set(sample) <= set(unlabeled)
    # The mix counts each sampled sentence under the file it came from.
    source = {"one": "a.txt", "two": "a.txt", "three": "b.txt.gz", "four": "b.txt.gz"}
    source["five"] = "c.txt.gz"
    expected = {}
    for sentence in sample:
        expected[source[sentence]] = expected.get(source[sentence], 0) + 1
    assert mix == expected
    config.unlabeled = str(tmp_path / "*.csv")
    with pytest.raises(DataError, match="no file matches"):
        job._load_data(config)


def test_the_sampler_never_returns_a_held_out_sentence(tmp_path):
    from kd_keras.recipes.sentence_pairs import job
    from kd_keras.transfer import HELDOUT_SENTENCES

    corpus = tmp_path / "transfer-en"  # the held-out rule's folder name
    corpus.mkdir()
    sizes = {"big.txt": 1300, "small.txt": 40}
    for name, size in sizes.items():
        lines = [f"{name} {i}\tsource" for i in range(size)]
        (corpus / name).write_text("\n\n".join(lines) + "\n", encoding="utf-8")  # blank lines
    (tmp_path / "other.txt").write_text("\n".join(f"other {i}" for i in range(30)) + "\n")
    config = sentence_pairs.DistillConfig(
        unlabeled=f"{corpus / '*.txt'},{tmp_path / 'other.txt'}", unlabeled_limit=10**6
    ).resolved()
    _, unlabeled, mix, heldout = job._load_data(config)
    big = [f"big.txt {i}" for i in range(1300)]
    small = [f"small.txt {i}" for i in range(40)]
    assert (
        heldout
        == {  # the last 500 non-empty lines, the last half of a small file
            str(corpus / "big.txt"): big[-HELDOUT_SENTENCES:],
            str(corpus / "small.txt"): small[20:],
        }
    )
    assert sorted(unlabeled) == sorted(big[:800] + small[:20] + [f"other {i}" for i in range(30)])
    assert mix == {"big.txt": 800, "small.txt": 20, "other.txt": 30}
    config.unlabeled_limit = 300  # a sample: still none of the tails
    _, sample, _, _ = job._load_data(config)
    assert len(sample) == 300 and not set(sample) & set(big[800:] + small[20:])


def test_the_default_sample_leaves_every_transfer_en_tail_out():
    from kd_keras.recipes.sentence_pairs import job
    from kd_keras.transfer import heldout_sentences

    config = sentence_pairs.DistillConfig().resolved()  # 40,000 of the shipped corpus
    _, unlabeled, _, heldout = job._load_data(config)
    assert len(unlabeled) == config.unlabeled_limit and len(heldout) == 23
    assert config.fidelity == config.unlabeled  # the fidelity default: those tails
    sampled = set(unlabeled)
    for path, tail in heldout.items():
        assert len(tail) == 500 and tail == heldout_sentences(path)
        assert not sampled & set(tail), path


def test_the_chinese_config_samples_transfer_zh_and_leaves_its_tails_and_cnsd_out(monkeypatch):
    from kd_keras.recipes.sentence_pairs import job

    root = pathlib.Path(__file__).resolve().parents[2]
    monkeypatch.chdir(root)  # the config's paths are the checkout's
    settings = load_config_file("configs/zh-m3e.yaml", sentence_pairs.DistillConfig)
    config = sentence_pairs.DistillConfig(**settings).resolved()
    config.validate()
    assert config.teacher == "m3e-small"
    assert config.fidelity == str(root / config.unlabeled)  # the tails of the corpus it samples
    data, unlabeled, _, heldout = job._load_data(config)
    assert len(unlabeled) == config.unlabeled_limit and len(heldout) == 18
    assert {pathlib.Path(p).parent.name for p in heldout} == {"transfer-zh"}
    sampled = set(unlabeled)
    for path, tail in heldout.items():
        every = read_sentences(path)  # cluewsc_fiction's 983: its last half held out
        assert len(tail) == min(500, len(every) // 2) and tail == every[len(every) - len(tail) :]
        assert not sampled & set(tail), path
    cnsd = {s for a, b, _ in data.values() for s in (*a, *b)}
    assert len(cnsd) > 10000 and not sampled & cnsd  # the corpus has none of CNSD's sentences


def test_labels_of_another_teacher_are_refused(tmp_path, make_tiny_teacher, minilm_vocabulary):
    from kd_keras.labels import label_sentences
    from kd_keras.recipes.sentence_pairs import job

    ours = make_tiny_teacher(minilm_vocabulary, hidden_dim=8, seed=1)
    other = make_tiny_teacher(minilm_vocabulary, hidden_dim=8, seed=2)
    label_sentences(other, ["a cat", "a dog"], tmp_path / "other", "x", progress=False)
    label_sentences(ours, ["a cat", "a dog"], tmp_path / "ours", "x", progress=False)
    c = sentence_pairs.DistillConfig(labels=f"{tmp_path / 'ours'}, {tmp_path / 'other'}")
    with pytest.raises(ConfigError, match="other was labeled by another teacher"):
        job._label_folders(c, ours, [], tmp_path, progress=False)
    c.labels = str(tmp_path / "ours")
    assert job._label_folders(c, ours, [], tmp_path, progress=False) == [tmp_path / "ours"]
    c.labels = str(tmp_path / "missing")
    with pytest.raises(ConfigError, match="missing holds no finished labels"):
        job._label_folders(c, ours, [], tmp_path, progress=False)


@pytest.mark.slow
def test_two_workers_train_the_student_of_one_process(tiny_setup, tmp_path):
    """`kd-keras distill --distribute multi-worker` in two processes on 127.0.0.1
    (separate folders, as on two machines) ends with the single process's student."""
    import os
    import socket
    import subprocess
    import sys

    import keras

    root, files = tiny_setup
    settings = dict(files, unlabeled_limit=60, augment=1, repaired_pairs=20, embedding_dim=16)
    settings.update(hidden_dim=8, embedding_init="random", epochs=1, steps_per_epoch=0)
    settings.update(batch_size=32)
    # No dropout: each replica would draw its own masks, the same in law as
    # one process's but not bit for bit.
    settings.update(checkpoints_per_epoch=2, throughput_seconds=0.2, dropout=0.0)
    settings.update(fidelity="none")  # the fidelity step: the test above
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in settings.items()]

    def start(name, tf_config=None):
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "3"}
        env.pop("TF_CONFIG", None)
        argv = [*flags, f"--output-dir={tmp_path / name}", f"--cache-dir={tmp_path / name}-c"]
        if tf_config is not None:
            env["TF_CONFIG"] = json.dumps(tf_config)
            argv.append("--distribute=multi-worker")
        code = f"import sys; from kd_keras.cli import main; sys.exit(main({['distill', *argv]!r}))"
        return subprocess.Popen(
            [sys.executable, "-c", code],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    sockets = [socket.socket() for _ in range(2)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    cluster = {"worker": [f"127.0.0.1:{s.getsockname()[1]}" for s in sockets]}
    for s in sockets:
        s.close()
    processes = {
        f"worker{i}": start(
            f"worker{i}", {"cluster": cluster, "task": {"type": "worker", "index": i}}
        )
        for i in range(2)
    }
    processes["single"] = start("single")
    try:
        for name, process in processes.items():
            output, _ = process.communicate(timeout=600)
            assert process.returncode == 0, f"{name} failed:\n{output[-4000:]}"
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
    assert not (tmp_path / "worker1" / "student.keras").exists()  # only the chief saves
    chief = keras.saving.load_model(tmp_path / "worker0" / "student.keras")
    single = keras.saving.load_model(tmp_path / "single" / "student.keras")
    for a, b in zip(chief.get_weights(), single.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
    chief_metrics = json.loads((tmp_path / "worker0" / "metrics.json").read_text())
    single_metrics = json.loads((tmp_path / "single" / "metrics.json").read_text())
    np.testing.assert_allclose(
        chief_metrics["training"]["history"]["loss"],
        single_metrics["training"]["history"]["loss"],
        rtol=1e-4,
    )


@pytest.mark.slow
def test_static_student_end_to_end_from_vocabulary_distillation(tiny_setup):
    root, files = tiny_setup
    out = root / "static"
    metrics = sentence_pairs.run(
        tiny_config(
            files,
            out,
            root / "cache",
            student="static",
            embedding_init="vocab",
            objective="relational",
            steps_per_epoch=4,
            epochs=2,
            early_stopping=1,
            quantize="int8",
        ),
        progress=False,
    )
    # A dev point every 2 steps; early stopping keeps the best point's student.
    training = metrics["training"]
    curve, stopping = training["dev_curve"], training["early_stopping"]
    assert [step for step, _ in curve] == [2 * k for k in range(1, len(curve) + 1)]
    best_step, best = max(curve, key=lambda point: point[1])
    assert (stopping["best_step"], stopping["best_dev_spearman"]) == (best_step, best)
    if stopping["stopped"]:  # patience 1: one point after the best
        assert curve[-1][0] == best_step + 2
    else:
        assert training["steps"] == 8  # --steps-per-epoch, whatever the data size
    assert training["steps"] == curve[-1][0]
    dev_spearman, _ = evaluate_export(out / "student", files["dev"])
    assert dev_spearman == pytest.approx(best, abs=1e-3)
    assert "2 epoch(s) of 4 steps" in (out / "report.md").read_text()
    student = metrics["models"]["student"]
    fresh_spearman, _ = evaluate_export(out / "student", files["test"])
    assert student["spearman"] == pytest.approx(fresh_spearman, abs=1e-6)
    assert student["parameters"] == 30522 * 16 + 16 * 16 + 16  # table and projection only
    # The int8 rows: the int8 exports, measured as the float32 ones.
    int8 = metrics["models"]["student int8"]
    int8_spearman, _ = evaluate_export(out / "student-int8", files["test"])
    assert int8["spearman"] == pytest.approx(int8_spearman, abs=1e-6)
    teacher_int8 = metrics["models"]["teacher int8"]
    assert pathlib.Path(teacher_int8["export"]).parent == root / "cache"
    teacher_int8_spearman, _ = evaluate_export(teacher_int8["export"], files["test"])
    assert teacher_int8["spearman"] == pytest.approx(teacher_int8_spearman, abs=1e-6)
    assert "| student int8 |" in (out / "report.md").read_text()


def test_the_shipped_chinese_config_is_valid():
    path = pathlib.Path(__file__).resolve().parents[2] / "configs" / "zh-m3e.yaml"
    c = sentence_pairs.DistillConfig(**load_config_file(str(path), sentence_pairs.DistillConfig))
    c.validate()
    assert (c.teacher, c.objective, c.student) == ("m3e-small", "embedding", "bilstm")
    from kd_keras.data import read_pairs

    assert read_pairs(str(path.parents[1] / c.dev))[2].shape == (1458,)


def test_binary_hard_loss_is_the_gold_term_for_zero_one_pairs():
    from kd_keras.models.bilstm import build_bilstm_encoder
    from kd_keras.recipes.sentence_pairs.objectives import BinaryPairLoss
    from kd_keras.recipes.sentence_pairs.training import compiled_distiller

    c = sentence_pairs.DistillConfig(
        hard_loss="binary", negative_threshold=0.2, alpha=0.0, max_score=1.0
    )
    c.validate()
    encoder = build_bilstm_encoder(40, embedding_dim=4, hidden_dim=2, output_dim=3, dropout=0.0)
    distiller, _ = compiled_distiller(c, encoder, steps=1)
    assert isinstance(distiller.student_loss, BinaryPairLoss)
    assert distiller.student_loss.threshold == 0.2
    rng = np.random.default_rng(0)
    ids = {
        k: rng.integers(1, 40, size=(6, 5)).astype("int32") for k in ("sentence_a", "sentence_b")
    }
    teacher = rng.normal(size=(6, 2, 3)).astype("float32")
    x = {
        "student": ids,
        "teacher_outputs": {
            "embeddings": teacher,
            "score": np.zeros((6, 1), "float32"),
            "logits": np.zeros((6, 2), "float32"),
        },
    }
    y = np.array([1, 0, 1, 0, np.nan, 0], "float32")
    s = distiller.student(ids)["score"].numpy().ravel()
    keep = ~np.isnan(y)
    per = np.where(y == 1, (1 - s) ** 2 / 4, s**2 * (s > 0.2))
    logs = distiller.evaluate(x, y, batch_size=6, verbose=0, return_dict=True)
    assert logs["student_loss"] == pytest.approx(per[keep].mean(), rel=1e-5, abs=1e-7)
    with pytest.raises(ConfigError, match="hard_loss|hard-loss"):
        sentence_pairs.DistillConfig(hard_loss="hinge").validate()


def test_unlabeled_none_stays_none_when_the_config_is_resolved_again():
    once = sentence_pairs.DistillConfig(unlabeled="none").resolved()
    twice = once.resolved()
    assert not once.unlabeled and not twice.unlabeled
    assert "transfer-en" in sentence_pairs.DistillConfig().resolved().unlabeled
