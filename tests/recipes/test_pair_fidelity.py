"""The fidelity step of `kd-keras distill`: which sentences, through both exports, the
teacher's embeddings cached (its table in the report: test_pair_report.py)."""

import dataclasses
import pathlib

import pytest

from kd_keras.data import DataError
from kd_keras.fidelity import fidelity, sample_sentences, summarize
from kd_keras.recipes.config import ConfigError
from kd_keras.recipes.sentence_pairs import agreement
from kd_keras.recipes.sentence_pairs.config import DistillConfig


def _corpus(tmp_path):
    """A `transfer-en` folder of two files and a user file; `(config, lines of each)`."""
    corpus = tmp_path / "transfer-en"
    corpus.mkdir()
    lines = {
        "big.txt": [f"big sentence {i}" for i in range(1200)],
        "small.txt": [f"small sentence {i}" for i in range(40)],
        "mine.txt": [f"my sentence {i}" for i in range(9)],
    }
    for name, sentences in lines.items():
        folder = tmp_path if name == "mine.txt" else corpus
        (folder / name).write_text("\n".join(sentences) + "\n", encoding="utf-8")
    config = DistillConfig(
        fidelity=f"{corpus / '*.txt'}, {tmp_path / 'mine.txt'}", fidelity_limit=300
    ).resolved()
    return config, lines


def test_fidelity_sets_are_the_tails_of_transfer_en_files_and_the_users_whole_files(tmp_path):
    config, lines = _corpus(tmp_path)
    sets = agreement.fidelity_sets(config)
    assert list(sets) == ["big.txt", "small.txt", "mine.txt"]
    assert [s["held_out"] for s in sets.values()] == [True, True, False]
    assert sets["big.txt"]["sentences"] == sample_sentences(lines["big.txt"][700:], 300, 0)
    assert sets["small.txt"]["sentences"] == lines["small.txt"][20:]  # the last half
    assert sets["mine.txt"]["sentences"] == lines["mine.txt"]
    # The tails the sampler has read already are taken as they are.
    given = {str(tmp_path / "transfer-en" / "big.txt"): ["x", "y", "z"]}
    assert agreement.fidelity_sets(config, given)["big.txt"]["sentences"] == ["x", "y", "z"]

    assert "--fidelity none" in agreement.fidelity_sets(
        dataclasses.replace(config, fidelity="none")
    )
    assert "no transfer-en" in agreement.fidelity_sets(dataclasses.replace(config, fidelity=None))
    (tmp_path / "two.txt").write_text("one\ntwo\n", encoding="utf-8")
    with pytest.raises(DataError, match="two.txt: --fidelity needs at least 3 sentences"):
        agreement.fidelity_sets(dataclasses.replace(config, fidelity=str(tmp_path / "two.txt")))


def test_fidelity_defaults_to_the_data_folders_transfer_en_when_it_has_one(tmp_path):
    c = DistillConfig().resolved()
    assert c.fidelity.endswith("transfer-en/*.txt.gz") and c.fidelity_limit == 300
    for name in ("sts-train.csv", "sts-dev.csv", "sts-test.csv"):
        (tmp_path / name).write_text("")
    bare = DistillConfig(data_dir=str(tmp_path), unlabeled="none", train="t").resolved()
    assert bare.fidelity is None  # no transfer-en there: the step says it skipped
    with pytest.raises(ConfigError, match="--fidelity-limit must be at least 0; got -1"):
        DistillConfig(fidelity_limit=-1).validate()


def test_a_chinese_run_samples_transfer_zh_and_measures_fidelity_on_its_tails(tmp_path):
    # The named Chinese teacher's default corpus is the Chinese one, and the fidelity
    # default follows the corpus --unlabeled samples: its files' held-out tails.
    zh = DistillConfig(teacher="m3e-small").resolved()
    assert zh.unlabeled.endswith("transfer-zh/*.txt.gz")
    assert zh.fidelity == zh.unlabeled
    given = DistillConfig(unlabeled="data/transfer-zh/laws.txt.gz").resolved()
    assert given.fidelity == str(pathlib.Path.cwd() / "data/transfer-zh/*.txt.gz")
    both = DistillConfig(
        unlabeled="data/transfer-zh/*.txt.gz, data/transfer-en/gap.txt.gz, mine.txt"
    ).resolved()
    assert both.fidelity.split(",") == [
        str(pathlib.Path.cwd() / "data" / corpus / "*.txt.gz")
        for corpus in ("transfer-zh", "transfer-en")
    ]
    # Your own unlabeled files: the English corpus' tails, as before; none stays none.
    own = DistillConfig(unlabeled=str(tmp_path / "mine.txt")).resolved()
    assert own.fidelity.endswith("transfer-en/*.txt.gz")
    assert DistillConfig(fidelity="none", teacher="m3e-small").resolved().fidelity == "none"

    corpus = tmp_path / "transfer-zh"
    corpus.mkdir()
    lines = [f"第{i}句中文句子" for i in range(1200)]
    (corpus / "news.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    config = DistillConfig(fidelity=str(corpus / "*.txt"), fidelity_limit=0).resolved()
    sets = agreement.fidelity_sets(config)
    assert sets["news.txt"]["held_out"] and sets["news.txt"]["sentences"] == lines[700:]


@pytest.fixture(scope="module")
def exports(tmp_path_factory, tiny_vocabulary):
    """Two tiny BiLSTM exports, the first playing the teacher."""
    import keras

    from kd_keras import serving
    from kd_keras.models.bert_tokenizer import BertPreprocessor
    from kd_keras.models.bilstm import build_bilstm_encoder

    folder = tmp_path_factory.mktemp("exports")
    preprocessor = BertPreprocessor(tiny_vocabulary, sequence_length=12)
    for seed, name in ((1, "teacher"), (2, "student")):
        keras.utils.set_random_seed(seed)
        model = build_bilstm_encoder(len(tiny_vocabulary), embedding_dim=6, hidden_dim=4)
        serving.export_student(model, folder / name, preprocessor)
    return folder / "teacher", folder / "student"


def test_measure_fidelity_through_both_exports_caches_the_teachers(tmp_path, exports, monkeypatch):
    from kd_keras import evaluation

    teacher_dir, student_dir = exports
    words = ["a b c", "d e", "f g h i", "j", "k l m", "n o p q r", "s t", "u v w", "x y z"]
    sets = {
        "one": {"path": "a.txt", "held_out": True, "sentences": words + [w + " a" for w in words]},
        "two": {"path": "two.txt", "held_out": False, "sentences": [w[::-1] for w in words]},
    }
    c = DistillConfig(seed=3)
    got = agreement.measure_fidelity(c, tmp_path, teacher_dir, student_dir, sets)

    expected = {}
    for name, source in sets.items():
        t = evaluation.embed_text_export(teacher_dir, source["sentences"])
        s = evaluation.embed_text_export(student_dir, source["sentences"])
        expected[name] = fidelity(t, s, seed=3)
        r = got["sources"][name]
        assert r["file"] == source["path"] and r["held_out"] == source["held_out"]
        assert r["sentences"] == len(source["sentences"])
        assert r["k"] == min(10, len(source["sentences"]) - 1)
        assert r["spearman"] == pytest.approx(expected[name]["spearman"], abs=1e-3)
        assert r["recall_at_k"] == pytest.approx(expected[name]["recall_at_k"])
        first = r["disagreements"][0]
        assert first["first_sentence"] == source["sentences"][first["first"]]
    summary = summarize(expected)
    assert got["mean"]["spearman"] == pytest.approx(summary["mean"]["spearman"], abs=1e-3)
    assert got["worst"]["spearman"]["source"] == summary["worst"]["spearman"]["source"]
    assert len(list(tmp_path.glob("teacher-fidelity-*.npz"))) == 1

    # Again: only the student goes through the export, the teacher's come from the cache.
    calls = []

    def record(paths, sentences):  # in this process, to keep the test short
        calls.append([str(p) for p in paths])
        return [evaluation.embed_text_export(p, sentences) for p in paths]

    monkeypatch.setattr(evaluation, "embed_text_exports_in_subprocess", record)
    again = agreement.measure_fidelity(c, tmp_path, teacher_dir, student_dir, sets)
    assert calls == [[str(student_dir)]]
    assert again["sources"]["one"]["spearman"] == pytest.approx(got["sources"]["one"]["spearman"])
