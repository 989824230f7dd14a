"""The classification recipe (`kd_keras.recipes.classification`) and its BiLSTM.

SST-2 by default; the user's own labeled files (CSV, TSV, JSON lines) with a
teacher fine-tuned here, a given `.keras` classifier or a Hugging Face
`BertForSequenceClassification` folder (the fixture of
`scripts/make_classifier_reference.py`).
"""

import json
import math
import pathlib

import keras
import numpy as np
import pytest
import tensorflow as tf

from kd_keras.cli import main
from kd_keras.data import data_path, read_labeled_texts, read_sst2
from kd_keras.models.bert_tokenizer import load_tokenizer_json_vocabulary
from kd_keras.models.classifier import build_bilstm_classifier
from kd_keras.models.heads import build_classifier
from kd_keras.models.pooling import MaskedPooling
from kd_keras.models.teachers import Teacher
from kd_keras.recipes.classification import Config, job
from kd_keras.recipes.classification.report import report_text
from kd_keras.recipes.classification.teacher import class_order, given_classifier, open_teacher
from kd_keras.recipes.config import ConfigError
from kd_keras.serving import METADATA_PATH, load_text_export, save_student
from kd_keras.storage import read_arrays

FIXTURE = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "hf_bert_classifier"
WORDS = {
    "negative": "bad dull boring thin tired",
    "neutral": "the plot is fine it was film",
    "positive": "great wonderful joy good real",
}
TINY_RUN = dict(
    sequence_length=32, teacher_train_limit=36, teacher_learning_rate=1e-2,
    augment_per_sentence=1, epochs=1, embedding_dim=8, hidden_dim=4, dense_dim=8,
    throughput_seconds=0.05, fit_verbose=0,
)  # fmt: skip


def test_bilstm_classifier_masks_padding():
    keras.utils.set_random_seed(0)
    model = build_bilstm_classifier(50, embedding_dim=8, hidden_dim=4, dense_dim=8, dropout=0.0)
    ids = np.array([[5, 6, 7, 0, 0]], "int32")
    padded_more = np.array([[5, 6, 7, 0, 0, 0, 0, 0]], "int32")
    np.testing.assert_allclose(model(ids), model(padded_more), rtol=1e-5, atol=1e-6)
    seq = np.array([[[1.0, -5.0], [3.0, -7.0], [9.0, 9.0]]], "float32")
    pooled = MaskedPooling(mode="max")(seq, np.array([[1, 1, 0]]))
    np.testing.assert_array_equal(pooled, [[3.0, -5.0]])


def test_fine_tuned_encoder_returns_the_features_under_the_logits(
    make_tiny_teacher, minilm_vocabulary
):
    from kd_keras.models.heads import build_classifier

    tiny = make_tiny_teacher(minilm_vocabulary, num_layers=1, sequence_length=16)
    encoder, preprocessor = tiny.encoder, tiny.preprocessor
    classifier = build_classifier(encoder, 2, pooling="mean")
    features = job.fine_tuned_encoder(classifier, preprocessor)
    assert features.preprocessor is preprocessor
    x = preprocessor.pack(preprocessor.tokenize(["a fine film .", "dull"]))
    x = {k: v.numpy() for k, v in x.items()}
    assert x["padding_mask"][1].sum() < x["padding_mask"][0].sum()  # some padding
    sequence = encoder(x)["sequence_output"].numpy()
    mask = x["padding_mask"][..., None].astype("float32")
    expected = (sequence * mask).sum(axis=1) / mask.sum(axis=1)  # masked mean, not normalized
    got = features(x).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)
    kernel, bias = classifier.get_layer("logits").get_weights()
    np.testing.assert_allclose(got @ kernel + bias, classifier(x).numpy(), atol=1e-5)
    with pytest.raises(ValueError, match="one BERT encoder"):
        job.fine_tuned_encoder(keras.Sequential([keras.layers.Dense(2)]), preprocessor)


@pytest.mark.slow
def test_distill_sst2_recipe_end_to_end(
    tmp_path, finite_numbers, make_tiny_teacher, minilm_vocabulary
):
    from kd_keras.models.teachers import Teacher

    tiny = make_tiny_teacher(minilm_vocabulary, num_layers=1, sequence_length=32)
    tiny.save(tmp_path / "tiny_teacher.keras")
    run_dir = tmp_path / "sst2"
    metrics = job.run(
        Config(
            run_dir=str(run_dir), teacher=str(tmp_path / "tiny_teacher.keras"),
            sequence_length=32, teacher_train_limit=64, train_limit=48,
            teacher_learning_rate=1e-2,
            augment_per_sentence=1, epochs=1, eval_limit=40,
            embedding_dim=8, hidden_dim=4, dense_dim=8,
            throughput_seconds=0.05, fit_verbose=0,
        )
    )  # fmt: skip
    for name in (
        "metrics.json",
        "report.md",
        "cache/teacher_classifier.keras",
        "teacher_export/saved_model.pb",
        "baseline_export/saved_model.pb",
        "student_export/saved_model.pb",
    ):
        assert (run_dir / name).is_file(), name
    assert all(math.isfinite(x) for x in finite_numbers(metrics))
    assert metrics["transfer_set"]["gold"] == 48 and metrics["transfer_set"]["augmented"] > 0
    # The labels-only student's embeddings come from the encoder before
    # fine-tuning, the distilled student's from the fine-tuned one.
    from kd_keras.teacher_pass import vocabulary_token_outputs

    before = keras.saving.load_model(tmp_path / "tiny_teacher.keras")
    _, cache = read_arrays(run_dir / "cache" / "vocabulary_pretrained.npz")
    np.testing.assert_allclose(cache["outputs"], vocabulary_token_outputs(before), atol=1e-5)
    classifier = keras.saving.load_model(run_dir / "cache" / "teacher_classifier.keras")
    after = vocabulary_token_outputs(job.fine_tuned_encoder(classifier, before.preprocessor))
    _, cache = read_arrays(run_dir / "cache" / "vocabulary_fine_tuned.npz")
    np.testing.assert_allclose(cache["outputs"], after, atol=1e-5)
    unchanged = Teacher(before.encoder, before.preprocessor, normalize=False)
    assert np.abs(after - vocabulary_token_outputs(unchanged)).max() > 1e-3  # it was fine-tuned
    # Re-evaluate the exported student on the dev sentences.
    sentences, labels = read_sst2(data_path("sst2", "sentiment-dev"), limit=40)
    classify = load_text_export(run_dir / "student_export").signatures["classify"]
    predicted = classify(sentences=tf.constant(sentences))["label"].numpy()
    accuracy = 100.0 * np.mean(predicted == labels)
    assert accuracy == pytest.approx(metrics["distilled"]["dev_accuracy"])


# === The user's own data and teacher ===


def _write_sets(folder, format, names=None, sizes=(36, 12, 12), seed=0):
    """Three-class train/dev/test files in `format` (`csv`, `tsv`, `jsonl`): `{split: path}`.

    `names` renames the classes `negative`, `neutral`, `positive` (in that order).
    """
    rng = np.random.default_rng(seed)
    renamed = dict(zip(WORDS, names or WORDS, strict=True))
    files = {}
    for split, size in zip(("train", "dev", "test"), sizes, strict=True):
        rows = []
        for i in range(size):
            label = list(WORDS)[i % 3]
            rows.append((" ".join(rng.choice(WORDS[label].split(), size=4)), renamed[label]))
        path = folder / f"{split}.{format}"
        if format == "jsonl":
            lines = [json.dumps({"text": text, "label": label}) for text, label in rows]
        else:
            separator = "\t" if format == "tsv" else ","
            lines = [f"text{separator}label"] + [f"{t}{separator}{y}" for t, y in rows]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        files[split] = str(path)
    return files


def _fixture_vocabulary():
    return load_tokenizer_json_vocabulary(FIXTURE / "tokenizer.json")


def _check_user_run(run_dir, metrics, files, classes):
    """What every run on the user's files must give: its classes in the export, accuracy
    through the export as reported, a report that names the files and nothing of ours."""
    for name in ("metrics.json", "report.md", "teacher_export", "baseline_export"):
        assert (run_dir / name).exists(), name
    assert metrics["data"]["classes"] == classes and not metrics["data"]["sst2"]
    for key in ("teacher", "baseline", "distilled"):
        assert math.isfinite(metrics[key]["dev_accuracy"] + metrics[key]["test_accuracy"])
    report = (run_dir / "report.md").read_text(encoding="utf-8")
    for banned in ("SST-2", "target", ">=", "met)"):
        assert banned not in report, banned
    for path in files.values():
        assert f"`{path}`" in report
    metadata = json.loads((run_dir / "student_export" / METADATA_PATH).read_text())
    assert metadata["classes"] == classes
    texts, labels, _ = read_labeled_texts(files["dev"], classes=classes)
    outputs = load_text_export(run_dir / "student_export").signatures["classify"](
        sentences=tf.constant(texts)
    )
    probabilities = outputs["probabilities"].numpy()
    assert probabilities.shape == (len(texts), len(classes))
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    accuracy = 100.0 * np.mean(outputs["label"].numpy() == labels)
    assert accuracy == pytest.approx(metrics["distilled"]["dev_accuracy"])
    return texts


def _teacher_probabilities(run_dir, texts):
    classify = load_text_export(run_dir / "teacher_export").signatures["classify"]
    return classify(sentences=tf.constant(texts))["probabilities"].numpy()


@pytest.mark.slow
def test_own_tsv_with_a_teacher_fine_tuned_here(tmp_path, make_tiny_teacher, monkeypatch):
    files = _write_sets(tmp_path, "tsv")
    tiny = make_tiny_teacher(_fixture_vocabulary(), num_layers=1, sequence_length=32)
    tiny.save(tmp_path / "encoder.keras")
    run_dir = tmp_path / "run"
    metrics = job.run(
        Config(run_dir=str(run_dir), teacher=str(tmp_path / "encoder.keras"), **files, **TINY_RUN)
    )
    _check_user_run(run_dir, metrics, files, ["negative", "neutral", "positive"])
    assert metrics["teacher"]["fine_tuned_here"] and metrics["teacher"]["train_examples"] == 36
    assert (run_dir / "cache" / "teacher_classifier.keras").is_file()
    assert "fine-tuned here on 36 texts" in (run_dir / "report.md").read_text()

    # Killed while writing the report (no metrics.json), the same run again
    # reuses both students and every export: nothing is trained or exported.
    (run_dir / "metrics.json").unlink()
    for name in ("_train_student", "export_student"):
        monkeypatch.setattr(job, name, _refuse(name))
    again = job.run(
        Config(run_dir=str(run_dir), teacher=str(tmp_path / "encoder.keras"), **files, **TINY_RUN)
    )
    for key in ("teacher", "baseline", "distilled"):
        assert again[key] == json.loads(json.dumps(metrics[key]))
    # Killed while training the distilled student: only that one trains again.
    monkeypatch.undo()
    (run_dir / "metrics.json").unlink()
    (run_dir / "students" / "bilstm_distilled.keras").write_bytes(b"a damaged half")
    trained = []
    train = job._train_student
    monkeypatch.setattr(
        job, "_train_student", lambda c, name, *a: trained.append(name) or train(c, name, *a)
    )
    again = job.run(
        Config(run_dir=str(run_dir), teacher=str(tmp_path / "encoder.keras"), **files, **TINY_RUN)
    )
    assert trained == ["bilstm_distilled"]
    assert again["distilled"]["dev_accuracy"] == metrics["distilled"]["dev_accuracy"]


def _refuse(name):
    def refuse(*args, **kwargs):
        raise AssertionError(f"{name} should be reused from the earlier run")

    return refuse


@pytest.mark.slow
def test_own_jsonl_with_a_given_keras_classifier(tmp_path, make_tiny_teacher):
    files = _write_sets(tmp_path, "jsonl")
    tiny = make_tiny_teacher(_fixture_vocabulary(), num_layers=1, sequence_length=32, spread=0.3)
    classifier = build_classifier(tiny.encoder, 3, pooling="mean")
    save_student(classifier, tmp_path / "classifier.keras", tiny.preprocessor)
    run_dir = tmp_path / "run"
    metrics = job.run(
        Config(
            run_dir=str(run_dir), teacher=str(tmp_path / "classifier.keras"), **files, **TINY_RUN
        )
    )
    texts = _check_user_run(run_dir, metrics, files, ["negative", "neutral", "positive"])
    assert not metrics["teacher"]["fine_tuned_here"]
    assert not (run_dir / "cache" / "teacher_classifier.keras").exists()
    # Used as it is: the exported teacher is the given classifier, not fine-tuned.
    packed = tiny.preprocessor.pack(tiny.preprocessor.tokenize(texts))
    expected = tf.nn.softmax(classifier({k: v.numpy() for k, v in packed.items()})).numpy()
    np.testing.assert_allclose(_teacher_probabilities(run_dir, texts), expected, atol=1e-5)


@pytest.mark.slow
def test_own_csv_with_a_hugging_face_classifier(tmp_path):
    # The labels' sorted order (bad, good, meh) is not the teacher's (bad, meh, good).
    files = _write_sets(tmp_path, "csv", names=("bad", "meh", "good"))
    run_dir = tmp_path / "run"
    metrics = job.run(
        Config(
            run_dir=str(run_dir), teacher=str(FIXTURE), teacher_classes="bad,meh,good",
            **files, **TINY_RUN,
        )
    )  # fmt: skip
    _check_user_run(run_dir, metrics, files, ["bad", "good", "meh"])
    assert metrics["teacher"]["order"] == [0, 2, 1]
    reference = json.loads((FIXTURE / "reference.json").read_text(encoding="utf-8"))
    expected = tf.nn.softmax(np.asarray(reference["logits"])[:, [0, 2, 1]]).numpy()
    got = _teacher_probabilities(run_dir, reference["sentences"])
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_class_order_by_name_by_index_or_a_one_line_error():
    assert class_order(
        ["negative", "neutral", "positive"], ["negative", "neutral", "positive"], "T"
    ) == [0, 1, 2]
    assert class_order(["pos", "neg"], ["neg", "pos"], "T") == [1, 0]
    assert class_order(["POSITIVE", "Negative"], ["negative", "positive"], "T") == [1, 0]
    assert class_order(["LABEL_0", "LABEL_1", "LABEL_2"], [0, 1, 2], "T") == [0, 1, 2]
    assert class_order(["2", "1"], [1, 2], "T") == [1, 0]
    for names, classes, message in (
        (["a", "b", "c"], ["x", "y", "z"], "T: cannot match the classes by name (the teacher's "
         "['a', 'b', 'c'] and the training data's ['x', 'y', 'z'])"),
        (["a", "b", "c"], ["a", "b"], "T: the teacher has 3 classes, the training data 2"),
        (["LABEL_0", "LABEL_1"], [1, 2], "cannot match"),
    ):  # fmt: skip
        with pytest.raises(ConfigError) as info:
            class_order(names, classes, "T")
        assert message in str(info.value) and "\n" not in str(info.value)


def test_given_classifier_gives_log_probabilities_in_the_training_order():
    keras.utils.set_random_seed(0)
    ids = keras.Input((None,), dtype="int32", name="token_ids")
    x = keras.layers.Embedding(20, 4)(ids)
    x = keras.layers.GlobalAveragePooling1D()(x)
    model = keras.Model(ids, keras.layers.Dense(3, activation="softmax")(x))
    c = Config(teacher="mine.keras", teacher_classes="c, a ,b")
    teacher, _, info = given_classifier(c, (model, None, None), ["a", "b", "c"])
    assert info["order"] == [1, 2, 0] and info["outputs"] == "probabilities"
    token_ids = np.array([[2, 3, 4], [5, 6, 0]], "int32")
    inputs = {"token_ids": token_ids, "segment_ids": 0 * token_ids, "padding_mask": token_ids > 0}
    expected = np.log(model(token_ids).numpy())[:, [1, 2, 0]]
    np.testing.assert_allclose(teacher(inputs).numpy(), expected, atol=1e-6)
    for config, classes, message in (
        (Config(teacher="m.keras"), ["a", "b"], "--teacher m.keras: the classifier has 3 outputs, "
         "the training data 2 classes (a, b)."),
        (Config(teacher="m.keras", teacher_classes="a,b"), ["a", "b"], "--teacher-classes names 2 "
         "classes; the teacher m.keras has 3 outputs."),
    ):  # fmt: skip
        with pytest.raises(ConfigError) as info:
            given_classifier(config, (model, None, None), classes)
        assert str(info.value) == message


def test_open_teacher_tells_encoders_from_classifiers(tmp_path, make_tiny_teacher):
    tiny = make_tiny_teacher(_fixture_vocabulary(), num_layers=1, sequence_length=16)
    tiny.save(tmp_path / "encoder.keras")
    classifier = build_classifier(tiny.encoder, 3, pooling="mean")
    save_student(classifier, tmp_path / "sidecar.keras", tiny.preprocessor)
    Teacher(classifier, tiny.preprocessor, pooling=None, normalize=False).save(
        tmp_path / "wrapped.keras"
    )
    classifier.save(tmp_path / "bare.keras")

    def opened(spec, **kwargs):
        return open_teacher(Config(teacher=str(spec), sequence_length=24, **kwargs))

    kind, teacher = opened(tmp_path / "encoder.keras")
    assert kind == "encoder" and isinstance(teacher, Teacher)
    for name in ("sidecar.keras", "wrapped.keras"):
        kind, (model, preprocessor, names) = opened(tmp_path / name)
        assert kind == "classifier" and names is None and model.output.shape[-1] == 3
        assert preprocessor.vocabulary == tiny.preprocessor.vocabulary
        assert preprocessor.sequence_length == 24  # --sequence-length rules every teacher
    kind, (_, _, names) = opened(FIXTURE)
    assert kind == "classifier" and names == ["negative", "neutral", "positive"]
    kind, teacher = opened(FIXTURE, teacher_kind="encoder")
    assert kind == "encoder" and isinstance(teacher, Teacher)
    for spec, kwargs, message in (
        (tmp_path / "bare.keras", {}, "the classifier has no tokenizer; save it with"),
        (tmp_path, {"teacher_kind": "classifier"}, "is not a classifier to use as it is"),
    ):
        with pytest.raises(ConfigError, match=message):
            opened(spec, **kwargs)


def test_config_needs_train_and_dev_together():
    for kwargs, message in (
        ({"dev": "d.csv"}, "--dev needs --train"),
        ({"test": "t.csv"}, "--test needs --train"),
        ({"train": "t.csv"}, "--train needs --dev"),
        ({"train": "t.csv", "dev": "d.csv", "label": " "}, "--label must name a column"),
        ({"teacher_classes": "a,,b"}, "--teacher-classes must be comma-separated"),
    ):
        with pytest.raises(ConfigError, match=message):
            Config(**kwargs).validate()
    Config(train="t.csv", dev="d.csv").validate()  # --test is optional


def _cli_error(capsys, *argv):
    assert main(["distill-classifier", *map(str, argv)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kd-keras distill-classifier: error: ")
    return lines[0].removeprefix("kd-keras distill-classifier: error: ")


def test_bad_user_input_is_a_one_line_error(tmp_path, capsys):
    files = _write_sets(tmp_path, "tsv", sizes=(6, 3, 3))
    run = ["--run-dir", tmp_path / "run", "--teacher", FIXTURE]
    with open(files["dev"], "a", encoding="utf-8") as f:
        f.write("so so\tmixed\n")
    error = _cli_error(capsys, *run, "--train", files["train"], "--dev", files["dev"])
    assert error.startswith(f"{files['dev']}:5: label 'mixed' does not occur in the training data")
    error = _cli_error(
        capsys, *run, "--train", files["train"], "--dev", files["test"], "--label", "y"
    )
    assert error.startswith(f"{files['train']}:1: missing column 'y'")
    two = tmp_path / "two.tsv"
    two.write_text("text\tlabel\ngood\tpositive\nbad\tnegative\n", encoding="utf-8")
    error = _cli_error(capsys, *run, "--train", two, "--dev", two)
    assert error.startswith(f"--teacher {FIXTURE}: the teacher has 3 classes, the training data 2")
    assert _cli_error(capsys, "--dev", two).startswith("--dev needs --train")


def test_report_names_the_users_files_and_no_targets():
    def model(dev, test):
        return {"dev_accuracy": dev, "test_accuracy": test, "sentences_per_second": 900.0,
                "params": 1234}  # fmt: skip

    metrics = {
        "settings": {"objective": "logit_mse", "embedding_init": "vocab", "epochs": 3},
        "data": {"sst2": False, "files": {"train": "my/train.csv", "dev": "my/dev.csv"},
                 "classes": ["bad", "good", "meh"], "train_examples": 300},
        "dev_examples": 50, "test_examples": None,
        "transfer_set": {"gold": 300, "augmented": 900, "teacher_pass_seconds": 2.0},
        "teacher": {"fine_tuned_here": False, "source": "hf-topics", "outputs": "logits",
                    "class_names": ["bad", "meh", "good"], "order": [0, 2, 1]},
        "baseline": model(70.0, None), "distilled": model(74.5, None),
    }  # fmt: skip
    metrics["teacher"].update(model(80.0, None))
    report = report_text(metrics)
    assert report.startswith("# Text classifier (train.csv) distillation")
    assert (
        "train `my/train.csv` (300 texts), dev `my/dev.csv` (50 texts); 3 classes: bad, good, meh"
        in report
    )
    assert "`hf-topics`, already fine-tuned, used as it is (no fine-tuning" in report
    assert "| distilled | BiLSTM, distilled (logit_mse) | 74.50 | - | 900 | 1,234 |" in report
    assert "Distilled vs labels-only on dev: +4.50 points." in report
    for banned in ("SST-2", "target", ">=", "met)"):
        assert banned not in report
    metrics["data"].update(sst2=True, classes=[0, 1])
    metrics["test_examples"] = 70
    metrics["teacher"].update(fine_tuned_here=True, source="default", train_examples=300,
                              train_seconds=12.0, reused=False)  # fmt: skip
    report = report_text(metrics)
    assert report.startswith("# SST-2 distillation") and "| SST-2 dev acc. |" in report
    assert "MiniLM-L6 with a classification head, fine-tuned here on 300 texts (12 s)" in report
    assert "target" not in report and ">=" not in report


def test_a_keras_hub_classifier_is_used_with_its_own_tokenizer(tmp_path):
    import keras_hub

    vocabulary = _fixture_vocabulary()
    tokenizer = keras_hub.models.BertTokenizer(vocabulary=vocabulary, lowercase=True)
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=len(vocabulary), num_layers=1, num_heads=2, hidden_dim=8,
        intermediate_dim=16, max_sequence_length=16,
    )  # fmt: skip
    task = keras_hub.models.BertTextClassifier(
        backbone,
        num_classes=3,
        preprocessor=keras_hub.models.BertTextClassifierPreprocessor(tokenizer, sequence_length=16),
    )
    task.save(tmp_path / "task.keras")
    kind, loaded = open_teacher(Config(teacher=str(tmp_path / "task.keras"), sequence_length=16))
    assert kind == "classifier" and loaded[1].vocabulary == vocabulary
    teacher, preprocessor, _ = given_classifier(Config(teacher="t"), loaded, [0, 1, 2])
    texts = ["The film was great!", "so dull"]
    packed = {k: v.numpy() for k, v in preprocessor.pack(preprocessor.tokenize(texts)).items()}
    np.testing.assert_allclose(teacher(packed), task.predict(texts, verbose=0), atol=1e-5)
