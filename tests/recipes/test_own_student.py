"""Your own student in `kd-keras distill`: a function or `--student MODULE:FUNCTION`."""

import json
import pathlib
import re
import shutil
import sys

import numpy as np
import pytest

from kd_keras import cli
from kd_keras.data import data_path
from kd_keras.recipes import sentence_pairs
from kd_keras.recipes.config import ConfigError
from kd_keras.recipes.sentence_pairs import students

EXAMPLE = pathlib.Path(__file__).resolve().parents[2] / "examples" / "gru_student.py"
SENTENCES = ["a man plays the guitar.", "two dogs run on the beach together", "hello"]


def _lines(src, dst, count):
    with open(src, encoding="utf-8") as f:
        dst.write_text("".join(f.readlines()[:count]), encoding="utf-8")
    return str(dst)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, make_tiny_teacher, minilm_vocabulary):
    """A tiny teacher (width 16) saved as `.keras`, small pair files, the settings of a run."""
    root = tmp_path_factory.mktemp("own")
    teacher = make_tiny_teacher(minilm_vocabulary, num_layers=1, sequence_length=64)
    teacher.save(str(root / "teacher.keras"))
    settings = dict(
        teacher=str(root / "teacher.keras"),
        train=_lines(data_path("stsb", "sts-train.csv"), root / "train.csv", 120),
        dev=_lines(data_path("stsb", "sts-dev.csv"), root / "dev.csv", 30),
        test=_lines(data_path("stsb", "sts-test.csv"), root / "test.csv", 30),
        unlabeled=_lines(data_path("sst2", "sentiment-train"), root / "free.txt", 40),
        unlabeled_limit=40,
        embedding_init="random",
        embedding_dim=8,
        epochs=1,
        steps_per_epoch=3,
        batch_size=16,
        checkpoints_per_epoch=1,
        throughput_seconds=0.1,
        fidelity_limit=10,
        cache_dir=str(root / "cache"),
    )
    return root, teacher, settings


@pytest.fixture
def in_process(monkeypatch):
    """The run's measurements in this process: no fresh TensorFlow for each (seconds each)."""
    from kd_keras import evaluation

    monkeypatch.setattr(
        evaluation, "evaluate_text_export_in_subprocess", evaluation.evaluate_text_export
    )
    monkeypatch.setattr(
        evaluation, "compare_throughput_in_subprocess", evaluation.compare_throughput
    )
    monkeypatch.setattr(
        evaluation,
        "embed_text_exports_in_subprocess",
        lambda paths, sentences: [evaluation.embed_text_export(p, sentences) for p in paths],
    )


def _embed_export(path, sentences):
    import tensorflow as tf
    import tensorflow_text  # noqa: F401

    loaded = tf.saved_model.load(str(path))
    return loaded.signatures["embed"](sentences=tf.constant(sentences))["embedding"].numpy()


def _unit(x):
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.mark.slow
def test_own_student_function_is_trained_exported_and_named(tiny_run, tmp_path, capsys, in_process):
    import keras

    from kd_keras.serving import load_student

    root, _, settings = tiny_run
    example = _example_module()
    built = []

    def gru(vocabulary_size, output_dim, embedding_dim):
        built.append(
            example.build(vocabulary_size, output_dim, embedding_dim=embedding_dim, units=4)
        )
        return built[-1]

    out = tmp_path / "run"
    metrics = sentence_pairs.run(
        sentence_pairs.DistillConfig(**settings, student=gru, output_dir=str(out)), progress=True
    )
    assert len(built) == 1 and built[0].name == "gru_student"
    assert "training gru_student student" in capsys.readouterr().out
    assert metrics["models"]["student"]["name"] == "gru_student"
    assert "gru_student student" in (out / "report.md").read_text()
    qualname = f"{__name__}:test_own_student_function_is_trained_exported_and_named.<locals>.gru"
    assert json.loads((out / "config.json").read_text())["student"] == qualname
    assert json.loads((out / "metrics.json").read_text())["config"]["student"] == qualname
    assert metrics["models"]["student"]["parameters"] == built[0].count_params()

    # The export embeds raw text as the trained model does, L2-normalized.
    reloaded, preprocessor = load_student(out / "student.keras")
    ids = preprocessor.pack(preprocessor.tokenize(SENTENCES))["token_ids"].numpy()
    ids = ids[:, : (ids != 0).sum(axis=1).max()]
    expected = _unit(built[0](ids))
    np.testing.assert_allclose(_embed_export(out / "student", SENTENCES), expected, atol=1e-5)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(reloaded(ids)), expected, atol=1e-5)


def _example_module():
    """`examples/gru_student.py` as a module."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("gru_student_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_module_function_from_the_current_directory_on_the_command_line(
    tiny_run, tmp_path, monkeypatch, capsys, in_process
):
    from kd_keras.serving import student_files

    root, _, settings = tiny_run
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(EXAMPLE, work / "gru_student.py")
    monkeypatch.chdir(work)  # not on sys.path: found as `python -m` would
    monkeypatch.delitem(sys.modules, "gru_student", raising=False)
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in settings.items()]
    out = tmp_path / "run"
    argv = ["distill", *flags, "--student=gru_student:build", "--embedding-init=teacher"]
    assert cli.main([*argv, f"--output-dir={out}"]) == 0, capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["config"]["student"] == "gru_student:build"
    assert metrics["models"]["student"]["name"] == "gru_student"
    sidecar = student_files.preprocessor_sidecar_path(out / "student.keras")
    assert "gru_student" in json.loads(pathlib.Path(sidecar).read_text()).get("modules", [])

    # `kd-keras export` of the saved student gives the run's own export.
    assert cli.main(["export", "--student", str(out / "student.keras"), "--out", "again"]) == 0
    np.testing.assert_allclose(
        _embed_export(work / "again", SENTENCES),
        _embed_export(out / "student", SENTENCES),
        atol=1e-6,
    )


def _build(c, teacher, function, tmp_path):
    import tensorflow as tf

    preprocessor = teacher.preprocessor
    return students.build_student(
        c, teacher, preprocessor, tmp_path, False, tf.distribute.get_strategy(), function=function
    )


def test_the_function_gets_exactly_the_arguments_it_accepts(
    make_tiny_teacher, tmp_path, monkeypatch
):
    from kd_keras import teacher_pass

    teacher = make_tiny_teacher(hidden_dim=8)  # 31 tokens, width 8
    rng = np.random.default_rng(0)
    token_outputs = rng.normal(size=(31, 8)).astype("float32")
    passes = []

    def vocabulary_outputs(t, path, progress=False):
        passes.append(path)
        return token_outputs

    monkeypatch.setattr(teacher_pass, "vocabulary_outputs", vocabulary_outputs)
    received = []

    def model(vocabulary_size, output_dim):
        import keras

        ids = keras.Input(shape=(None,), dtype="int32")
        x = keras.layers.Embedding(vocabulary_size, 4)(ids)
        x = keras.layers.GlobalAveragePooling1D()(x)
        return keras.Model(ids, keras.layers.Dense(output_dim)(x), name="mine")

    def two(vocabulary_size, output_dim):
        received.append({"vocabulary_size": vocabulary_size, "output_dim": output_dim})
        return model(vocabulary_size, output_dim)

    def some(output_dim, vocabulary_size, preprocessor, *, sequence_length=1, units=3):
        received.append(
            dict(
                output_dim=output_dim,
                vocabulary_size=vocabulary_size,
                preprocessor=preprocessor,
                sequence_length=sequence_length,
                units=units,
            )
        )
        return model(vocabulary_size, output_dim)

    def every(**kwargs):
        received.append(kwargs)
        return model(kwargs["vocabulary_size"], kwargs["output_dim"])

    c = sentence_pairs.DistillConfig(embedding_dim=5, sequence_length=12)
    for function in (two, some):
        encoder, seconds = _build(c, teacher, function, tmp_path)
        assert encoder.name == "mine" and seconds == 0.0
    assert passes == []  # no vocabulary pass for a function that does not take its result
    assert received[0] == {"vocabulary_size": 31, "output_dim": 8}
    assert received[1] == {
        "output_dim": 8,
        "vocabulary_size": 31,
        "preprocessor": teacher.preprocessor,
        "sequence_length": 12,
        "units": 3,
    }
    encoder, _ = _build(c, teacher, every, tmp_path)
    assert sorted(received[2]) == sorted(sentence_pairs.config.STUDENT_ARGUMENTS)
    assert received[2]["teacher"] is teacher and received[2]["embedding_dim"] == 5
    assert len(passes) == 1
    # Vocabulary distillation: the rows' coordinates on their top principal
    # axes ([PAD] left out and zeroed), up to each axis' sign.
    rows = token_outputs[1:].astype(np.float64)
    _, _, axes = np.linalg.svd(rows - rows.mean(axis=0), full_matrices=False)
    expected = np.zeros((31, 5))
    expected[1:] = (rows - rows.mean(axis=0)) @ axes[:5].T
    got = received[2]["token_embeddings"]
    assert got.dtype == np.float32 and got.shape == (31, 5)
    np.testing.assert_allclose(np.abs(got), np.abs(expected), atol=1e-4)

    # The recipe's normalization on top of the returned model.
    ids = np.array([[2, 7, 9, 3, 0], [2, 5, 3, 0, 0]], "int32")
    inner = encoder.get_layer("mine")
    np.testing.assert_allclose(encoder(ids), _unit(inner(ids)), atol=1e-6)
    c.embedding_init = "random"
    _build(c, teacher, every, tmp_path)
    assert received[3]["token_embeddings"] is None and len(passes) == 1


def _returns(value):
    def build(vocabulary_size, output_dim):
        return value

    return build


def _functional(input_shape=(None,), dtype="int32", width=None):
    def build(vocabulary_size, output_dim):
        import keras

        ids = keras.Input(shape=input_shape, dtype=dtype)
        x = keras.layers.Embedding(vocabulary_size, 4)(ids)
        x = keras.layers.GlobalAveragePooling1D()(x)
        return keras.Model(ids, keras.layers.Dense(width or output_dim)(x))

    return build


@pytest.mark.parametrize(
    "function, message",
    [
        (_returns("a model"), r"returned a str, not a keras.Model"),
        (_functional(width=5), r"returns \[None, 5\]; expected \[batch, 8\] \(output_dim"),
        (_functional(input_shape=(12,)), r"takes \[\(None, 12\)\]; expected int32 token ids"),
        (_functional(dtype="float32"), r"takes float32; expected int32 token ids"),
        (lambda vocabulary_size: None, r"must take the keyword arguments .* \(missing: output_dim"),
        (lambda vocabulary_size, output_dim, depth: None, r"requires depth, which the recipe"),
    ],
)
def test_what_the_function_returns_is_checked(make_tiny_teacher, tmp_path, function, message):
    teacher = make_tiny_teacher(hidden_dim=8)
    c = sentence_pairs.DistillConfig(student=function, embedding_init="random")
    with pytest.raises(ConfigError, match=message) as raised:
        _build(c, teacher, function, tmp_path)
    assert str(raised.value).startswith("--student ") and "\n" not in str(raised.value)


def test_a_subclassed_student_is_called_on_token_ids(make_tiny_teacher, tmp_path):
    import keras

    class Mean(keras.Model):
        def __init__(self, vocabulary_size, output_dim, **kwargs):
            super().__init__(**kwargs)
            self.embedding = keras.layers.Embedding(vocabulary_size, output_dim)

        def call(self, ids):
            return keras.ops.mean(self.embedding(ids), axis=1)

    teacher = make_tiny_teacher(hidden_dim=8)
    c = sentence_pairs.DistillConfig(embedding_init="random")
    encoder, _ = _build(
        c,
        teacher,
        lambda vocabulary_size, output_dim: Mean(vocabulary_size, output_dim, name="mean_student"),
        tmp_path,
    )
    assert encoder.name == "mean_student"
    ids = np.array([[4, 5, 6]], "int32")
    expected = _unit(encoder.get_layer("mean_student").embedding.embeddings.numpy()[ids[0]].mean(0))
    np.testing.assert_allclose(encoder(ids)[0], expected, atol=1e-6)
    with pytest.raises(ConfigError, match=r"got a Mean object; pass the function that builds it"):
        students.student_function(Mean(31, 8))


@pytest.mark.parametrize(
    "module_text, spec, message",
    [
        (None, "gru", r"--student must be one of bilstm, static, tiny_bert or MODULE:FUNCTION"),
        (None, "my students:build", r"must be one of .* got 'my students:build'"),
        (None, "no_such_students:build", r"no module named 'no_such_students' in the current"),
        ("x = 1\n", "own_students:build", r"own_students.py has no 'build'"),
        ("build = 3\n", "own_students:build", r"build in own_students is not callable \(int\)"),
        ("import no_such_dependency\n", "own_students:build", r"importing own_students failed: "),
        (
            "def build(output_dim):\n    pass\n",
            "own_students:build",
            r"\(missing: vocabulary_size\)",
        ),
    ],
)
def test_bad_student_specs_are_one_line_errors(
    tmp_path, monkeypatch, capsys, module_text, spec, message
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "own_students", raising=False)
    if module_text is not None:
        (tmp_path / "own_students.py").write_text(module_text, encoding="utf-8")
    argv = ["distill", "--student", spec, "--output-dir", str(tmp_path / "run")]
    argv += ["--cache-dir", str(tmp_path / "cache")]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("kd-keras distill: error: ") and err.count("\n") == 1, err
    assert re.search(message, err), err
    assert not (tmp_path / "run" / "config.json").exists()  # refused before the run starts


def test_student_setting_is_checked_before_tensorflow_and_named_in_help():
    import subprocess

    code = (
        "import sys\n"
        "from kd_keras.recipes.sentence_pairs import DistillConfig\n"
        "from kd_keras.recipes.config import ConfigError\n"
        "try:\n"
        "    DistillConfig(student='no_such_students:build').validate()\n"
        "except ConfigError as e:\n"
        "    print(e)\n"
        "print('tensorflow' in sys.modules, 'keras' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "no module named 'no_such_students'" in done.stdout
    assert done.stdout.strip().endswith("False False")
    help_text = sentence_pairs.HELP["student"]
    for name in sentence_pairs.config.STUDENT_ARGUMENTS:
        assert name in help_text
    sentence_pairs.DistillConfig(student=len).validate()  # any callable
    assert sentence_pairs.DistillConfig(student=len).as_dict()["student"] == "builtins:len"


@pytest.mark.filterwarnings("ignore:.*does not support masking:UserWarning")
def test_a_student_whose_embeddings_change_with_padding_is_warned_about(
    make_tiny_teacher, tmp_path, capsys
):
    import keras

    def cnn(vocabulary_size, output_dim):
        ids = keras.Input(shape=(None,), dtype="int32")
        x = keras.layers.Embedding(vocabulary_size, 4, mask_zero=True)(ids)
        x = keras.layers.Conv1D(8, 3, padding="same")(x)  # drops the mask
        x = keras.layers.GlobalMaxPooling1D()(x)
        return keras.Model(ids, keras.layers.Dense(output_dim)(x), name="cnn")

    teacher = make_tiny_teacher(hidden_dim=8)
    c = sentence_pairs.DistillConfig(embedding_init="random")
    encoder, _ = _build(c, teacher, cnn, tmp_path)
    ids = np.array([[5, 6, 7]], "int32")
    change = np.abs(encoder(ids) - encoder(np.pad(ids, ((0, 0), (0, 4))))).max()
    assert students.padding_effect(encoder, 31) > 1e-3 and change > 1e-4
    assert "warning: padding changes cnn's embeddings" in capsys.readouterr().out
    c.embedding_dim = 8
    encoder, _ = _build(c, teacher, _example_module().build, tmp_path)  # masked: no warning
    assert students.padding_effect(encoder, 31) < 1e-6
    assert "warning" not in capsys.readouterr().out
