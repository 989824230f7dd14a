"""`kd-keras evaluate`: fidelity of a student to its teacher on sentence files, end to end."""

import gzip
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from kd_keras import cli
from kd_keras.fidelity import fidelity, sample_sentences


def _python(code):
    environment = {k: v for k, v in os.environ.items() if not k.startswith("TF_CPP")}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=environment
    )


def _sentences(count, seed):
    rng = np.random.default_rng(seed)
    letters = list("abcdefghijklmnopqrstuvwxyz")
    return [
        " ".join(
            "".join(rng.choice(letters, rng.integers(1, 4))) for _ in range(rng.integers(2, 7))
        )
        for _ in range(count)
    ]


@pytest.fixture(scope="module")
def models(tmp_path_factory, make_tiny_teacher, tiny_vocabulary):
    """A tiny teacher .keras, a tiny student export, two sentence files and both models'
    reference embeddings of their lines (the models called directly)."""
    import keras

    from kd_keras import serving
    from kd_keras.models.bert_tokenizer import BertPreprocessor
    from kd_keras.models.bilstm import build_bilstm_encoder

    folder = tmp_path_factory.mktemp("evaluate")
    teacher = make_tiny_teacher(tiny_vocabulary, hidden_dim=8, sequence_length=16, spread=0.3)
    teacher.save(str(folder / "teacher.keras"))
    preprocessor = BertPreprocessor(tiny_vocabulary, sequence_length=16)
    keras.utils.set_random_seed(4)
    student = build_bilstm_encoder(len(tiny_vocabulary), embedding_dim=6, hidden_dim=4)
    serving.export_student(student, folder / "student", preprocessor)
    lines = {"plain.txt": _sentences(30, 1), "packed.txt.gz": _sentences(15, 2)}
    (folder / "plain.txt").write_text(
        "\n\n".join(f"{s}\tignored" for s in lines["plain.txt"]) + "\n", encoding="utf-8"
    )
    with gzip.open(folder / "packed.txt.gz", "wt", encoding="utf-8") as f:
        f.write("\n".join(lines["packed.txt.gz"]) + "\n")
    reference = {}
    for name, sentences in lines.items():
        inputs = preprocessor(sentences)
        reference[name] = (np.asarray(teacher(inputs)), np.asarray(student(inputs["token_ids"])))
    return folder, lines, reference


def test_evaluate_end_to_end_matches_the_library_and_is_quiet(models):
    folder, lines, reference = models
    out = folder / "fidelity.json"
    argv = [
        "evaluate",
        "--teacher",
        str(folder / "teacher.keras"),
        "--student",
        str(folder / "student"),
        "--sentences",
        str(folder / "plain.txt"),
        str(folder / "*.gz"),
        "--limit",
        "20",
        "--pairs",
        "100",
        "--json",
        str(out),
        "--no-progress",
    ]
    done = _python(f"import sys\nfrom kd_keras.cli import main\nsys.exit(main({argv!r}))")
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # no TensorFlow log lines
    got = json.loads(out.read_text())
    assert got["settings"] == {"limit": 20, "pairs": 100, "k": 10, "seed": 0}
    assert list(got["files"]) == [str(folder / "plain.txt"), str(folder / "packed.txt.gz")]
    for (name, sentences), r in zip(lines.items(), got["files"].values(), strict=True):
        sample = sample_sentences(sentences, 20, seed=0)
        rows = [sentences.index(s) for s in sample]
        teacher, student = (e[rows] for e in reference[name])
        expected = fidelity(teacher, student, pairs=100, seed=0)
        assert r["sentences"] == len(sample) == min(20, len(sentences))
        assert r["pairs"] == expected["pairs"] == 100
        assert r["spearman"] == pytest.approx(expected["spearman"], abs=1e-3)
        assert r["recall_at_k"] == pytest.approx(expected["recall_at_k"], abs=1e-9)
        assert len(r["disagreements"]) == 5
        for d in r["disagreements"]:
            assert d["first_sentence"] == sample[d["first"]]
            assert d["teacher"] == pytest.approx(
                float(teacher[d["first"]] @ teacher[d["second"]]), abs=1e-4
            )
        line = f"{r['sentences']:>9}  {r['pairs']:>5}  {r['spearman']:>8.2f}  "
        assert line in done.stdout
    mean = np.mean([r["recall_at_k"] for r in got["files"].values()])
    assert got["mean"]["recall_at_k"] == pytest.approx(mean)
    assert "the 5 pairs the two disagree on most" in done.stdout


def test_missing_files_and_bad_settings_are_one_line_errors_before_tensorflow(tmp_path):
    argv = ["evaluate", "--student", "s", "--sentences", str(tmp_path / "nowhere.txt")]
    done = _python(
        "import sys\nfrom kd_keras.cli import main\n"
        f"code = main({argv!r})\n"
        "print('tensorflow' in sys.modules)\nsys.exit(code)"
    )
    assert done.returncode == 2
    assert done.stdout.strip() == "False"
    assert done.stderr == f"kd-keras evaluate: error: {tmp_path / 'nowhere.txt'}: no such file\n"


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--limit", "-1"], "--limit must be at least 0; got -1"),
        (["--pairs", "0"], "--pairs must be at least 1; got 0"),
        (["--json", "{tmp}/no/out.json"], "folder {tmp}/no does not exist"),
        (["--limit", "2"], "fidelity needs at least 3 sentences; it has 2"),
    ],
)
def test_bad_settings(tmp_path, capsys, extra, message):
    source = tmp_path / "s.txt"
    source.write_text("one\ntwo\nthree\n", encoding="utf-8")
    extra = [e.format(tmp=tmp_path) for e in extra]
    argv = ["evaluate", "--student", "s", "--sentences", str(source), *extra]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message.format(tmp=tmp_path) in err
