"""A student as files (`save_student`, `load_student`) and `kd-keras export` of every kind.

References are the in-memory models on the preprocessor's own fixed-length
call, as in `test_text_model.py`.
"""

import json
import sys
import textwrap
import zipfile

import keras
import numpy as np
import pytest
import tensorflow as tf

from kd_keras import cli, serving
from kd_keras.models.bert_tokenizer import BertPreprocessor
from kd_keras.models.bilstm import build_bilstm_encoder
from kd_keras.models.static import build_static_encoder
from kd_keras.models.teachers import load_teacher
from kd_keras.models.tiny_bert import build_tiny_bert_student

SENTENCES = ["a b c", "d e f g h", "", "z", "q r s t u v w x y"]
USER_MODULE = "kd_user_layers_for_tests"
USER_LAYERS = textwrap.dedent(
    """
    import keras

    @keras.saving.register_keras_serializable(package="kd_user_tests")
    class Scale(keras.layers.Layer):
        def __init__(self, factor=2.0, **kwargs):
            super().__init__(**kwargs)
            self.factor = factor

        def call(self, x):
            return x * self.factor

        def get_config(self):
            return {**super().get_config(), "factor": self.factor}
    """
)


@pytest.fixture(scope="module")
def preprocessor(tiny_vocabulary):
    return BertPreprocessor(tiny_vocabulary, sequence_length=8)


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """A module of the user's own layers, importable from `tmp_path/lib` for the test."""
    folder = tmp_path / "lib"
    folder.mkdir()
    (folder / f"{USER_MODULE}.py").write_text(USER_LAYERS)
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.delitem(sys.modules, USER_MODULE, raising=False)
    yield folder
    sys.modules.pop(USER_MODULE, None)


def _user_gru(vocabulary_size):
    """A student of the user's own, from standard Keras layers only."""
    ids = keras.Input(shape=(None,), dtype="int32", name="token_ids")
    x = keras.layers.Embedding(vocabulary_size, 6, mask_zero=True)(ids)
    x = keras.layers.Bidirectional(keras.layers.GRU(4))(x)
    return keras.Model(ids, keras.layers.Dense(5)(x), name="my_gru")


def _student(kind, vocabulary_size):
    keras.utils.set_random_seed(5)
    table = np.random.default_rng(5).normal(size=(vocabulary_size, 6)).astype("float32")
    if kind == "bilstm":
        return build_bilstm_encoder(vocabulary_size, 6, 4, 5, embeddings_initializer=table)
    if kind == "static":
        weights = np.linspace(0.2, 1.0, vocabulary_size)
        return build_static_encoder(vocabulary_size, 6, 5, table, token_weights=weights)
    if kind == "tiny_bert":
        return build_tiny_bert_student(
            vocabulary_size=vocabulary_size,
            num_layers=1,
            hidden_dim=8,
            num_heads=2,
            intermediate_dim=8,
            max_sequence_length=8,
        )
    return _user_gru(vocabulary_size)


def _reference(student, preprocessor):
    packed = preprocessor(tf.constant(SENTENCES))
    inputs = packed if isinstance(student.input, dict) else packed["token_ids"]
    return np.asarray(student(inputs))


@pytest.mark.parametrize("kind", ["bilstm", "static", "tiny_bert", "user_gru"])
def test_cli_exports_every_student_kind(kind, preprocessor, tmp_path, capsys):
    student = _student(kind, len(preprocessor.vocabulary))
    path, _ = serving.save_student(student, tmp_path / "student.keras", preprocessor)
    out = tmp_path / "export"
    assert cli.main(["export", "--student", str(path), "--out", str(out)]) == 0
    assert "Exported encoder" in capsys.readouterr().out
    loaded = serving.load_text_export(out)
    assert set(loaded.signatures) == {"embed", "similarity", "serving_default"}
    expected = _reference(student, preprocessor)
    for name in ("embed", "serving_default"):
        got = loaded.signatures[name](sentences=tf.constant(SENTENCES))["embedding"].numpy()
        np.testing.assert_allclose(got, expected, atol=1e-5)


def test_recorded_modules_are_imported_before_loading(preprocessor, user_module, tmp_path):
    module = __import__(USER_MODULE)
    base = _user_gru(len(preprocessor.vocabulary))
    student = keras.Model(base.input, module.Scale(3.0)(base.output), name="scaled_gru")
    path, sidecar = serving.save_student(
        student, tmp_path / "student.keras", preprocessor, modules=[USER_MODULE]
    )
    document = json.loads(sidecar.read_text())
    assert document["modules"] == [USER_MODULE]
    assert document["format"] == serving.student_files.PREPROCESSOR_FORMAT

    sys.modules.pop(USER_MODULE)
    loaded, loaded_preprocessor = serving.load_student(path)
    assert USER_MODULE in sys.modules  # imported again, from the sidecar's list
    assert loaded_preprocessor.get_config() == preprocessor.get_config()
    np.testing.assert_allclose(
        _reference(loaded, preprocessor), _reference(student, preprocessor), atol=1e-6
    )
    assert _reference(loaded, preprocessor).std() > 0


def test_a_missing_module_is_one_line_naming_it(
    preprocessor, user_module, tmp_path, monkeypatch, capsys
):
    module = __import__(USER_MODULE)
    base = _user_gru(len(preprocessor.vocabulary))
    student = keras.Model(base.input, module.Scale()(base.output))
    path, _ = serving.save_student(
        student, tmp_path / "student.keras", preprocessor, modules=[USER_MODULE]
    )
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(user_module)])
    sys.modules.pop(USER_MODULE)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ImportError, match=f"needs module '{USER_MODULE}'.*PYTHONPATH"):
        serving.load_student(path)
    argv = ["export", "--student", str(path), "--out", str(tmp_path / "out")]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("kd-keras export: error: ") and USER_MODULE in err

    # From the folder that holds it, it is found (as `kd-keras distill --student` finds it).
    monkeypatch.chdir(user_module)
    loaded, _ = serving.load_student(path)
    assert loaded.count_params() == student.count_params()


def test_a_sidecar_without_modules_and_bad_module_names(preprocessor, tmp_path):
    student = _user_gru(len(preprocessor.vocabulary))
    path, sidecar = serving.save_student(student, tmp_path / "student.keras", preprocessor)
    assert set(json.loads(sidecar.read_text())) == {"format", "preprocessor"}  # as before
    loaded, _ = serving.load_student(path)
    assert loaded.name == "my_gru"
    with pytest.raises(ValueError, match="'__main__' cannot be imported by another process"):
        serving.save_student(student, tmp_path / "s.keras", preprocessor, modules=["__main__"])
    with pytest.raises(ValueError, match="'my layers' is not a module name"):
        serving.save_student(student, tmp_path / "s.keras", preprocessor, modules=["my layers"])
    assert not (tmp_path / "s.keras").exists()
    document = json.loads(sidecar.read_text())
    sidecar.write_text(json.dumps({**document, "modules": "my_layers"}))
    with pytest.raises(ValueError, match="`modules` must be a list"):
        serving.load_student(path)


@pytest.mark.parametrize("damage", ["truncated", "one bit flipped"])
def test_a_damaged_keras_file_is_named_and_never_loaded(damage, preprocessor, tmp_path, capsys):
    student = _student("bilstm", len(preprocessor.vocabulary))
    path, _ = serving.save_student(student, tmp_path / "student.keras", preprocessor)
    data = bytearray(path.read_bytes())
    if damage == "truncated":
        data = data[: len(data) // 2]
    else:
        data[len(data) // 2] ^= 0x01  # inside model.weights.h5, the bulk of the archive
    path.write_bytes(bytes(data))
    # Keras alone: a truncated file is "File not found", a flipped bit a bare BadZipFile
    # (not a ValueError: a traceback on the command line), neither naming the damage.
    with pytest.raises((ValueError, zipfile.BadZipFile)) as plain:
        keras.saving.load_model(str(path))
    assert "is damaged" not in str(plain.value)

    why = "not a whole zip archive" if damage == "truncated" else "model.weights.h5 fails its CRC"
    with pytest.raises(ValueError, match=rf"student\.keras is damaged \(.*{why}.*retrain it"):
        serving.load_student(path)
    teacher = tmp_path / "teacher.keras"
    teacher.write_bytes(path.read_bytes())
    with pytest.raises(ValueError, match=r"teacher\.keras is damaged .*Save the teacher again\."):
        load_teacher(str(teacher))
    out = tmp_path / "export"
    assert cli.main(["export", "--student", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"kd-keras export: error: {path} is damaged (") and err.count("\n") == 1
    assert not out.exists()
