"""Raw-text SavedModel export (`kd_keras.serving`, `kd-keras export`).

References are the in-memory Keras models, fed by the preprocessor's own
fixed-length call (`preprocessor(strings)`), which is independent of the
export's in-graph dynamic padding.
"""

import json
import os
import pathlib
import re
import subprocess
import sys
import textwrap

import keras
import keras_hub
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_text  # noqa: F401  (registers the tokenizer ops for tf.saved_model.load)

import kd_keras
from kd_keras import cli, serving, storage
from kd_keras.data import data_path, read_stsb
from kd_keras.models.bert_tokenizer import BertPreprocessor, load_vocabulary
from kd_keras.models.bilstm import build_bilstm_encoder, build_siamese_bilstm
from kd_keras.models.pooling import MaskedPooling
from kd_keras.models.teachers import Teacher, default_model_dir
from kd_keras.models.tiny_bert import build_tiny_bert_student
from kd_keras.serving import text_model

SEQUENCE_LENGTH = 24
TOLERANCE = 1e-5

# Edge cases: empty, whitespace-only, a 10,000-character string (truncated
# in-graph), invalid UTF-8, emoji, mixed scripts.
LONG = "word " * 2000
EDGE_CASES = [
    b"",
    b" ",
    b"\t \n  \r",
    LONG.encode(),
    b"\xff\xfe invalid \xc3( utf-8",
    "I love it \U0001f600\U0001f389!".encode(),
    "Привет мир, 你好世界, مرحبا, こんにちは, Ελληνικά".encode(),
]


def _real_sentences(limit=6):
    a, b, _ = read_stsb(data_path("stsb", "sts-test.csv"), limit=limit)
    return [s.encode() for s in a + b]


SENTENCES = _real_sentences() + EDGE_CASES


def _strings(sentences):
    return tf.constant(sentences, dtype=tf.string)


def _ids(preprocessor, sentences):
    return preprocessor(_strings(sentences))["token_ids"]


def _load(path):
    return tf.saved_model.load(str(path))


def _tower(pair_model):
    return next(layer for layer in pair_model.layers if isinstance(layer, keras.Model))


# === Fixtures ===


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("export")


@pytest.fixture(scope="module")
def preprocessor():
    return BertPreprocessor(
        load_vocabulary(default_model_dir() / "vocab.txt"), sequence_length=SEQUENCE_LENGTH
    )


@pytest.fixture(scope="module")
def distiller(preprocessor):
    """A tiny random BERT teacher and a tiny siamese BiLSTM student."""
    keras.utils.set_random_seed(0)
    vocabulary_size = len(preprocessor.vocabulary)
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=vocabulary_size,
        num_layers=1,
        num_heads=2,
        hidden_dim=12,
        intermediate_dim=20,
        max_sequence_length=SEQUENCE_LENGTH,
    )
    teacher = Teacher(backbone, preprocessor, pooling="mean", normalize=True)
    student = build_siamese_bilstm(vocabulary_size, embedding_dim=8, hidden_dim=8)
    return kd_keras.Distiller(teacher, student)


@pytest.fixture(scope="module")
def pair_export(distiller, workdir):
    return serving.export_student(distiller, workdir / "pair")


@pytest.fixture(scope="module")
def bert_student(preprocessor):
    keras.utils.set_random_seed(1)
    return build_tiny_bert_student(
        vocabulary_size=len(preprocessor.vocabulary),
        normalize=False,
        num_layers=1,
        num_heads=2,
        hidden_dim=16,
        intermediate_dim=16,
        max_sequence_length=SEQUENCE_LENGTH,
    )


@pytest.fixture(scope="module")
def bert_export(bert_student, preprocessor, workdir):
    return serving.export_student(bert_student, workdir / "bert", preprocessor=preprocessor)


@pytest.fixture(scope="module")
def classifier(preprocessor):
    keras.utils.set_random_seed(2)
    ids = keras.Input(shape=(None,), dtype="int32", name="token_ids")
    encoder = build_bilstm_encoder(len(preprocessor.vocabulary), embedding_dim=8, hidden_dim=8)
    probabilities = keras.layers.Dense(3, activation="softmax", name="classes")(encoder(ids))
    return keras.Model(ids, probabilities, name="bilstm_classifier")


@pytest.fixture(scope="module")
def classifier_export(classifier, preprocessor, workdir):
    return serving.export_student(classifier, workdir / "classifier", preprocessor=preprocessor)


def _zero_encoder(preprocessor):
    """An encoder whose every embedding is the zero vector."""
    ids = keras.Input(shape=(None,), dtype="int32", name="token_ids")
    x = keras.layers.Embedding(
        len(preprocessor.vocabulary), 4, mask_zero=True, embeddings_initializer="zeros"
    )(ids)
    return keras.Model(ids, MaskedPooling("mean")(x), name="zero_encoder")


# === Signatures and contents ===


def test_pair_export_signatures_and_metadata(pair_export):
    assert pair_export.kind == "pair"
    assert pair_export.signatures == ("embed", "similarity")
    assert pair_export.serving_default == "embed"  # the one rule: an encoder serves `embed`
    assert pair_export.size_bytes == storage.directory_size(pair_export.path) > 0

    loaded = _load(pair_export.path)
    assert set(loaded.signatures) == {"similarity", "embed", "serving_default"}
    for name in ("embed", "serving_default"):
        embed = loaded.signatures[name]
        assert embed.structured_input_signature[1] == {
            "sentences": tf.TensorSpec([None], tf.string, name="sentences")
        }
        assert embed.structured_outputs["embedding"].dtype == tf.float32
        assert embed.structured_outputs["embedding"].shape.as_list() == [None, 16]
    signature = loaded.signatures["similarity"]
    assert set(signature.structured_input_signature[1]) == {"sentence_a", "sentence_b"}
    assert signature.structured_outputs["score"].shape.as_list() == [None]
    assert signature.structured_outputs["score"].dtype == tf.float32

    metadata = json.loads((pair_export.path / serving.METADATA_PATH).read_text())
    assert metadata["format"] == serving.EXPORT_FORMAT
    assert metadata["kind"] == "pair"
    assert metadata["serving_default"] == "embed"
    assert metadata["signatures"]["similarity"]["inputs"] == ["sentence_a", "sentence_b"]
    assert metadata["signatures"]["embed"]["inputs"] == ["sentences"]
    assert metadata["tokenizer"]["sequence_length"] == SEQUENCE_LENGTH
    assert metadata["tokenizer"]["vocabulary_size"] == 30522


def test_export_holds_only_student_variables(pair_export, distiller):
    reader = tf.train.load_checkpoint(str(pair_export.path / "variables" / "variables"))
    saved = {
        key: reader.get_tensor(key)
        for key in reader.get_variable_to_shape_map()
        if key != "_CHECKPOINTABLE_OBJECT_GRAPH"
    }
    student = [w.numpy() for w in distiller.student.trainable_weights]
    teacher = [w.numpy() for w in distiller.teacher.weights]
    assert len(teacher) > 0
    # Exactly the student's weights: same count, each saved tensor equal to one of them.
    assert len(saved) == len(student) == len(pair_export.variables)
    assert sorted(v.size for v in saved.values()) == sorted(w.size for w in student)
    for key, value in saved.items():
        assert any(w.shape == value.shape and np.array_equal(w, value) for w in student), key
        assert not any(w.shape == value.shape for w in teacher), key
    # The names the loaded export reports are the student's layer paths.
    names = sorted(v.name for v in _load(pair_export.path).model_variables)
    assert names == sorted(pair_export.variables)
    assert any(name.startswith("token_embedding/") for name in names)
    assert not any("transformer" in name or "teacher" in name for name in names)


def _reachable_nodes(graph_def, output_names):
    """(function or "graph", node) of every node that computing the outputs can run."""
    functions = {f.signature.name: f for f in graph_def.library.function}
    by_name = {node.name: node for node in graph_def.node}

    def called(node):
        for value in node.attr.values():
            if value.HasField("func"):
                yield value.func.name
            yield from (f.name for f in value.list.func)

    found, pending_functions, seen_functions = [], [], set()
    pending, seen = list(output_names), set()
    while pending:
        name = pending.pop().lstrip("^").split(":")[0]
        if name in seen:
            continue
        seen.add(name)
        node = by_name[name]
        found.append(("graph", node))
        pending.extend(node.input)
        pending_functions.extend(called(node))
    while pending_functions:
        name = pending_functions.pop()
        if name in seen_functions or name not in functions:
            continue
        seen_functions.add(name)
        for node in functions[name].node_def:
            found.append((name, node))
            pending_functions.extend(called(node))
    return found


def test_no_device_is_pinned_in_the_serving_graph(pair_export):
    from tensorflow.core.protobuf import saved_model_pb2

    saved_model = saved_model_pb2.SavedModel()
    saved_model.ParseFromString((pair_export.path / "saved_model.pb").read_bytes())
    meta_graph = saved_model.meta_graphs[0]
    outputs = [
        info.name
        for name, signature in meta_graph.signature_def.items()
        if not name.startswith("__")
        for info in signature.outputs.values()
    ]
    assert len(outputs) == 3
    nodes = _reachable_nodes(meta_graph.graph_def, outputs)
    ops = {node.op for _, node in nodes}
    # The walk reaches the tokenizer, the LSTM loop and the variables.
    assert {"FastWordpieceTokenizeWithOffsets", "While", "ReadVariableOp"} <= ops
    pinned = [(where, node.name, node.device) for where, node in nodes if node.device]
    assert pinned == []
    # The same walk from the checkpoint-saving function does see TF's own
    # CPU-pinned I/O ops, so the check above can fail.
    saver_nodes = _reachable_nodes(meta_graph.graph_def, [meta_graph.saver_def.save_tensor_name])
    assert any(node.device for _, node in saver_nodes)
    assert not tf.config.list_physical_devices("GPU")  # no GPU in this environment


# === Numbers ===


def test_reload_without_keras_matches_in_memory_students(
    pair_export, bert_export, classifier_export, distiller, bert_student, classifier, tmp_path
):
    """A fresh process with plain TensorFlow gives the in-memory students' numbers.

    Keras, KerasHub, kd_keras and `models` cannot be imported there at all
    (an import hook refuses them): `import tensorflow` tries Keras and gets
    along without it, and the `tensorflow_text` Python package (which
    subclasses a Keras layer) is replaced by loading its op libraries, as a
    serving binary links them.
    """
    sentences_path = tmp_path / "sentences.json"
    sentences_path.write_text(json.dumps([s.hex() for s in SENTENCES]))
    script = textwrap.dedent(
        """
        import glob, importlib.abc, importlib.machinery, importlib.util, json, os, sys
        import numpy as np

        BLOCKED = ("keras", "keras_hub", "kd_keras", "models", "tf_keras", "tensorflow_text")

        class Refuse(importlib.abc.MetaPathFinder, importlib.abc.Loader):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    return importlib.machinery.ModuleSpec(name, self)
                return None

            def create_module(self, spec):
                raise ModuleNotFoundError(f"{spec.name} is refused here", name=spec.name)

            def exec_module(self, module):
                raise ModuleNotFoundError(module.__name__)

        text_dir = importlib.util.find_spec("tensorflow_text").submodule_search_locations[0]
        sys.meta_path.insert(0, Refuse())
        import tensorflow as tf

        for library in sorted(glob.glob(os.path.join(text_dir, "python", "ops", "*.so"))):
            tf.load_op_library(library)
        pair_dir, bert_dir, classifier_dir, sentences_path, out = sys.argv[1:]
        s = tf.constant([bytes.fromhex(h) for h in json.load(open(sentences_path))])
        pair = tf.saved_model.load(pair_dir)
        bert = tf.saved_model.load(bert_dir)
        classifier = tf.saved_model.load(classifier_dir)
        outputs = {
            "pair_embedding": pair.signatures["embed"](sentences=s)["embedding"],
            "pair_score": pair.signatures["similarity"](sentence_a=s, sentence_b=s[::-1])[
                "score"
            ],
            "pair_default": pair.signatures["serving_default"](sentences=s)["embedding"],
            "bert_embedding": bert.signatures["serving_default"](sentences=s)["embedding"],
            "probabilities": classifier.signatures["classify"](sentences=s)["probabilities"],
            "label": classifier.signatures["classify"](sentences=s)["label"],
        }
        np.savez(out, **{k: v.numpy() for k, v in outputs.items()})
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
        print("BLOCKED_MODULES_LOADED=" + json.dumps(loaded))
        """
    )
    out = tmp_path / "outputs.npz"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONNOUSERSITE="1")
    env.pop("PYTHONPATH", None)
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            script,
            str(pair_export.path),
            str(bert_export.path),
            str(classifier_export.path),
            str(sentences_path),
            str(out),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=str(tmp_path),
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    match = re.search(r"BLOCKED_MODULES_LOADED=(.*)", result.stdout)
    assert match is not None, result.stdout
    assert json.loads(match.group(1)) == []

    got = np.load(out)
    preprocessor = distiller.teacher.preprocessor
    ids = _ids(preprocessor, SENTENCES)
    reversed_ids = _ids(preprocessor, SENTENCES[::-1])
    student = distiller.student
    expected = {
        "pair_embedding": _tower(student)(ids),
        "pair_default": _tower(student)(ids),
        "pair_score": student({"sentence_a": ids, "sentence_b": reversed_ids})[:, 0],
        "bert_embedding": bert_student(preprocessor(_strings(SENTENCES))),
        "probabilities": classifier(ids),
    }
    for key, value in expected.items():
        value = np.asarray(value)
        assert got[key].shape == value.shape, key
        assert np.all(np.isfinite(got[key])), key
        np.testing.assert_allclose(got[key], value, rtol=0, atol=TOLERANCE, err_msg=key)
    np.testing.assert_array_equal(got["label"], np.argmax(expected["probabilities"], axis=-1))
    assert got["label"].dtype == np.int64


def test_edge_inputs_give_defined_outputs(pair_export, distiller):
    loaded = _load(pair_export.path)
    embed = loaded.signatures["embed"]
    similarity = loaded.signatures["similarity"]

    empty = tf.constant([], dtype=tf.string)
    assert embed(sentences=empty)["embedding"].shape == (0, 16)
    assert similarity(sentence_a=empty, sentence_b=empty)["score"].shape == (0,)

    edge = _strings(EDGE_CASES)
    embeddings = embed(sentences=edge)["embedding"].numpy()
    scores = similarity(sentence_a=edge, sentence_b=edge)["score"].numpy()
    assert embeddings.shape == (len(EDGE_CASES), 16)
    assert np.all(np.isfinite(embeddings)) and np.all(np.isfinite(scores))
    assert np.all(scores > 0.99)  # identical sentences

    # Empty and whitespace-only strings are the [CLS] [SEP] encoding.
    cls_sep = np.asarray(_tower(distiller.student)(tf.constant([[101, 102]])))
    for i in range(3):
        np.testing.assert_allclose(embeddings[i], cls_sep[0], atol=TOLERANCE)
    # The 10,000-character string is cut at SEQUENCE_LENGTH tokens in-graph.
    cut = embed(sentences=tf.constant(["word " * (SEQUENCE_LENGTH - 2)]))["embedding"].numpy()
    np.testing.assert_allclose(embeddings[3], cut[0], atol=TOLERANCE)
    longer = embed(sentences=tf.constant(["word " * (SEQUENCE_LENGTH - 3)]))["embedding"]
    assert np.abs(longer.numpy()[0] - cut[0]).max() > 1e-4


def test_zero_embeddings_score_zero_not_nan(preprocessor, workdir):
    result = serving.export_student(
        _zero_encoder(preprocessor), workdir / "zero", preprocessor=preprocessor
    )
    assert result.kind == "encoder" and result.serving_default == "embed"
    loaded = _load(result.path)
    assert set(loaded.signatures) == {"embed", "similarity", "serving_default"}
    assert list(loaded.signatures["serving_default"].structured_outputs) == ["embedding"]
    s = _strings(["a sentence", ""])
    embeddings = loaded.signatures["embed"](sentences=s)["embedding"].numpy()
    np.testing.assert_array_equal(embeddings, np.zeros((2, 4), np.float32))
    scores = loaded.signatures["similarity"](sentence_a=s, sentence_b=s)["score"].numpy()
    np.testing.assert_array_equal(scores, [0.0, 0.0])


def test_bert_student_encoder_export(bert_export, bert_student, preprocessor):
    assert bert_export.kind == "encoder"
    assert bert_export.serving_default == "embed"
    assert len(bert_export.variables) == len(bert_student.trainable_weights)
    loaded = _load(bert_export.path)
    s = _strings(SENTENCES)
    reference = np.asarray(bert_student(preprocessor(s)))
    got = loaded.signatures["serving_default"](sentences=s)["embedding"].numpy()
    np.testing.assert_allclose(got, reference, atol=TOLERANCE)
    # `similarity` of an encoder is the cosine of the embeddings.
    scores = loaded.signatures["similarity"](sentence_a=s, sentence_b=s[::-1])["score"].numpy()
    a, b = reference, reference[::-1]
    cosine = np.sum(a * b, -1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
    np.testing.assert_allclose(scores, cosine, atol=TOLERANCE)


def test_classifier_export(classifier_export, classifier, preprocessor):
    assert classifier_export.kind == "classifier"  # found from the softmax output layer
    assert classifier_export.signatures == ("classify",)
    loaded = _load(classifier_export.path)
    assert set(loaded.signatures) == {"classify", "serving_default"}
    outputs = loaded.signatures["serving_default"](sentences=_strings(SENTENCES))
    reference = np.asarray(classifier(_ids(preprocessor, SENTENCES)))
    np.testing.assert_allclose(outputs["probabilities"].numpy(), reference, atol=TOLERANCE)
    assert outputs["label"].dtype == tf.int64
    np.testing.assert_array_equal(outputs["label"].numpy(), reference.argmax(-1))
    empty = loaded.signatures["classify"](sentences=tf.constant([], tf.string))
    assert empty["probabilities"].shape == (0, 3) and empty["label"].shape == (0,)


# === saved_model_cli ===


def _saved_model_cli():
    return str(pathlib.Path(sys.executable).parent / "saved_model_cli")


def test_saved_model_cli_shows_and_runs_signatures(pair_export, distiller, tmp_path):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    shown = subprocess.run(
        [_saved_model_cli(), "show", "--dir", str(pair_export.path), "--all"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert shown.returncode == 0, shown.stderr[-3000:]
    for text in (
        "signature_def['embed']",
        "signature_def['similarity']",
        "signature_def['serving_default']",
        "inputs['sentences']",
        "inputs['sentence_a']",
        "inputs['sentence_b']",
        "outputs['embedding']",
        "outputs['score']",
    ):
        assert text in shown.stdout

    # `saved_model_cli run` has no option to load custom op libraries: run the
    # same script in a process that imported tensorflow_text first.
    launcher = (
        "import runpy, sys, tensorflow_text; sys.argv = sys.argv[1:]; "
        "runpy.run_path(sys.argv[0], run_name='__main__')"
    )
    outdir = tmp_path / "cli_outputs"
    sentences = ["A girl is styling her hair.", "", "Ünïcödé \U0001f600"]
    ran = subprocess.run(
        [
            sys.executable,
            "-c",
            launcher,
            _saved_model_cli(),
            "run",
            "--dir",
            str(pair_export.path),
            "--tag_set",
            "serve",
            "--signature_def",
            "embed",
            "--input_exprs",
            f"sentences={sentences!r}",
            "--outdir",
            str(outdir),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert ran.returncode == 0, ran.stderr[-3000:]
    got = np.load(outdir / "embedding.npy")
    expected = _tower(distiller.student)(_ids(distiller.teacher.preprocessor, sentences))
    np.testing.assert_allclose(got, np.asarray(expected), atol=TOLERANCE)


# === Atomic writes and errors ===


def _leftovers(directory):
    return sorted(p.name for p in directory.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


def test_failed_overwrite_keeps_the_old_export(pair_export, preprocessor, tmp_path, monkeypatch):
    import shutil

    target = tmp_path / "served"
    shutil.copytree(pair_export.path, target)
    before = {p.relative_to(target): p.read_bytes() for p in target.rglob("*") if p.is_file()}
    model = _zero_encoder(preprocessor)

    with pytest.raises(FileExistsError, match="overwrite"):
        serving.export_student(model, target, preprocessor=preprocessor)

    def write_half_then_fail(module, signatures, directory):
        (directory / "saved_model.pb").write_bytes(b"half written")
        raise OSError("disk full")

    monkeypatch.setattr(text_model, "_write_saved_model", write_half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        serving.export_student(model, target, preprocessor=preprocessor, overwrite=True)
    after = {p.relative_to(target): p.read_bytes() for p in target.rglob("*") if p.is_file()}
    assert after == before
    assert _leftovers(tmp_path) == []

    monkeypatch.undo()
    result = serving.export_student(model, target, preprocessor=preprocessor, overwrite=True)
    assert result.kind == "encoder"
    assert json.loads((target / serving.METADATA_PATH).read_text())["kind"] == "encoder"
    assert _leftovers(tmp_path) == []
    assert set(_load(target).signatures) == {"embed", "similarity", "serving_default"}


def test_a_killed_export_leaves_nothing_the_next_one_keeps(preprocessor, tmp_path):
    import subprocess
    import sys

    # What a SIGKILL half-way through an export leaves: the process is gone,
    # its temporary folder (tens of MB) is not.
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True
    )
    leftover = tmp_path / f".served.tmp-{int(dead.stdout)}-x1y2"
    (leftover / "variables").mkdir(parents=True)
    (leftover / "variables" / "variables.data-00000-of-00001").write_bytes(b"\0" * 1000)
    serving.export_student(_zero_encoder(preprocessor), tmp_path / "served", preprocessor)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["served"]


def test_damaged_exports_are_named_and_pairs_must_match_row_by_row(pair_export, tmp_path):
    import shutil

    serving.verify_text_export(pair_export.path)  # whole
    damaged = tmp_path / "damaged"
    shutil.copytree(pair_export.path, damaged)
    (data,) = (damaged / "variables").glob("variables.data-*")
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    with pytest.raises(storage.CacheError, match=r"damaged.*Delete it"):
        serving.verify_text_export(damaged)

    similarity = _load(pair_export.path).signatures["similarity"]
    for a, b in ((2, 3), (1, 3)):  # an opaque graph error, and a silent broadcast, before
        with pytest.raises(tf.errors.InvalidArgumentError, match="same number of sentences"):
            similarity(sentence_a=_strings(SENTENCES[:a]), sentence_b=_strings(SENTENCES[:b]))
    score = similarity(sentence_a=_strings(SENTENCES[:2]), sentence_b=_strings(SENTENCES[:2]))
    assert score["score"].shape == (2,)


def test_a_model_with_non_finite_weights_is_never_exported(preprocessor, tmp_path):
    model = _zero_encoder(preprocessor)
    kernel = model.weights[0]
    kernel.assign(np.full(kernel.shape, np.nan, "float32"))
    with pytest.raises(ValueError, match="non-finite values"):
        serving.export_student(model, tmp_path / "nan", preprocessor)
    assert not (tmp_path / "nan").exists()


def test_clear_errors(distiller, preprocessor, tmp_path):
    student = distiller.student
    # A folder that is not a SavedModel is never replaced.
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a SavedModel"):
        serving.export_student(distiller, folder, overwrite=True)
    assert (folder / "notes.txt").read_text() == "keep me"

    with pytest.raises(ValueError, match="No preprocessor for student"):
        serving.export_student(student, tmp_path / "a")
    with pytest.raises(ValueError, match="not a pair model"):
        serving.export_student(_tower(student), tmp_path / "b", preprocessor, kind="pair")
    with pytest.raises(ValueError, match="`kind` must be"):
        serving.export_student(student, tmp_path / "c", preprocessor, kind="ranker")
    with pytest.raises(TypeError, match="BertPreprocessor"):
        serving.export_student(student, tmp_path / "d", preprocessor=object())
    with pytest.raises(TypeError, match="Distiller or a keras.Model"):
        serving.export_student("student.keras", tmp_path / "e", preprocessor)
    with pytest.raises(FileNotFoundError, match="Student model file not found"):
        serving.load_student(tmp_path / "missing.keras")
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())


# === CLI ===


def _export(argv):
    return cli.main(["export", *argv])


def test_cli_exports_a_saved_student_with_its_preprocessor(preprocessor, tmp_path, capsys):
    keras.utils.set_random_seed(3)
    ids = keras.Input(shape=(None,), dtype="int32", name="token_ids")
    encoder = build_bilstm_encoder(len(preprocessor.vocabulary), embedding_dim=8, hidden_dim=8)
    logits = keras.layers.Dense(4, name="logits")(encoder(ids))
    student = keras.Model(ids, logits, name="logits_classifier")
    model_path, sidecar = serving.save_student(student, tmp_path / "student.keras", preprocessor)
    assert sidecar == tmp_path / "student.preprocessor.json"

    out = tmp_path / "exported"
    argv = ["--student", str(model_path), "--out", str(out), "--kind", "classifier"]
    assert _export(argv) == 0
    printed = capsys.readouterr().out
    assert "Exported classifier" in printed
    assert f"size on disk: {storage.directory_size(out)} bytes" in printed

    # The preprocessor came from the sidecar: same tokens, logits -> softmax.
    loaded = _load(out)
    probabilities = loaded.signatures["classify"](sentences=_strings(SENTENCES))["probabilities"]
    reference = tf.nn.softmax(student(_ids(preprocessor, SENTENCES))).numpy()
    np.testing.assert_allclose(probabilities.numpy(), reference, atol=TOLERANCE)

    # Existing target without --overwrite; missing file; missing sidecar.
    assert _export(argv) == 2
    assert "--overwrite" in capsys.readouterr().err
    missing = ["--student", str(tmp_path / "nope.keras"), "--out", str(tmp_path / "x")]
    assert _export(missing) == 2
    assert "not found" in capsys.readouterr().err
    sidecar.unlink()
    no_sidecar = ["--student", str(model_path), "--out", str(tmp_path / "y")]
    assert _export(no_sidecar) == 2
    assert "student.preprocessor.json does not exist" in capsys.readouterr().err
    assert _export(["--teacher", "default", "--out", "z", "--cased"]) == 2
    assert "only apply to --student" in capsys.readouterr().err


# === Teacher ===


@pytest.mark.slow
def test_default_teacher_export_matches_in_memory_teacher(tmp_path, capsys):
    from kd_keras.models.teachers import load_teacher
    from kd_keras.teacher_pass import run_teacher

    out = tmp_path / "teacher"
    assert _export(["--teacher", "default", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Exported encoder" in printed and "size on disk" in printed

    teacher = load_teacher("default")
    loaded = _load(out)
    assert loaded.signatures["serving_default"].structured_outputs["embedding"].shape[-1] == 384
    sentences = [s.decode("utf-8", "replace") for s in SENTENCES]
    got = loaded.signatures["embed"](sentences=_strings(sentences))["embedding"].numpy()
    expected = run_teacher(teacher, sentences)
    np.testing.assert_allclose(got, expected, atol=TOLERANCE)
    names = sorted(v.name for v in loaded.model_variables)
    assert len(names) == len(teacher.weights)
    scores = loaded.signatures["similarity"](
        sentence_a=_strings(sentences), sentence_b=_strings(sentences)
    )["score"].numpy()
    assert np.all(scores > 0.99)
