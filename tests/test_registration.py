"""`import kd_keras` registers every custom Keras object, whichever is imported first.

Each import order runs in a fresh interpreter: the students saved here (every
kind) reload with a bare `keras.models.load_model` and give the outputs they
gave before saving; the class names to look up are read from the sources (every
class decorated with `register_keras_serializable`), not from kd_keras' own list.
"""

import ast
import json
import os
import pathlib
import pickle
import subprocess
import sys
import textwrap
import warnings

import keras
import numpy as np
import pytest

import kd_keras
from kd_keras.models.bilstm import build_bilstm_encoder
from kd_keras.models.heads import build_pair_model
from kd_keras.models.static import build_static_encoder
from kd_keras.models.tiny_bert import build_tiny_bert_student

ROOT = pathlib.Path(__file__).resolve().parents[1]
VOCABULARY = 3000  # large enough that a table in a config would show in the file size


def _registered_names_in_sources():
    """`kd_keras>Name` for every class decorated with `register_keras_serializable`."""
    names = []
    for path in [
        *sorted((ROOT / "kd_keras").rglob("*.py")),
        *sorted((ROOT / "models").glob("*.py")),
    ]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef) and any(
                "register_keras_serializable" in ast.unparse(d) for d in node.decorator_list
            ):
                names.append(f"kd_keras>{node.name}")
    return sorted(names)


def _ids(seed, rows=3, length=7):
    ids = np.random.default_rng(seed).integers(1, VOCABULARY, size=(rows, length)).astype("int32")
    ids[0, 4:] = 0  # padding
    return ids


@pytest.fixture(scope="module")
def saved(tmp_path_factory, make_tiny_teacher):
    """Every student kind and a whole teacher as `.keras` files, with inputs and outputs."""
    folder = tmp_path_factory.mktemp("students")
    keras.utils.set_random_seed(0)
    table = np.random.default_rng(0).normal(size=(VOCABULARY, 16)).astype("float32")
    bilstm = build_bilstm_encoder(
        VOCABULARY, 16, hidden_dim=4, output_dim=8, embeddings_initializer=table, normalize=True
    )
    static = build_static_encoder(
        VOCABULARY, 16, 8, table, token_weights=np.linspace(0.1, 1.0, VOCABULARY)
    )
    tiny_bert = build_tiny_bert_student(
        vocabulary_size=VOCABULARY,
        num_layers=1,
        hidden_dim=32,
        num_heads=2,
        intermediate_dim=32,
        max_sequence_length=16,
    )
    ids = _ids(1)
    bert_inputs = {
        "token_ids": ids,
        "segment_ids": np.zeros_like(ids),
        "padding_mask": (ids != 0).astype("int32"),
    }
    teacher = make_tiny_teacher()
    teacher_inputs = {key: np.minimum(value, 30) for key, value in bert_inputs.items()}
    cases = {
        "bilstm": (bilstm, ids),
        "static": (static, ids),
        "tiny_bert": (tiny_bert, bert_inputs),
        "pair": (build_pair_model(bilstm), {"sentence_a": ids, "sentence_b": _ids(2)}),
        "teacher": (teacher, teacher_inputs),
    }
    manifest = {}
    for name, (model, inputs) in cases.items():
        path = folder / f"{name}.keras"
        model.save(path)
        np.savez(folder / f"{name}.npz", output=np.asarray(model(inputs)))
        with open(folder / f"{name}.inputs.pickle", "wb") as f:
            pickle.dump(inputs, f)
        weight_bytes = sum(w.numpy().nbytes for w in model.weights)
        manifest[name] = {"path": str(path), "weight_bytes": weight_bytes}
    return folder, manifest


CHECK = textwrap.dedent(
    """
    import json, pickle, sys
    import numpy as np

    folder, names, kinds = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
    missing = [n for n in names if keras.saving.get_registered_object(n) is None]
    print("MISSING=" + json.dumps(missing))
    hooks = [type(f).__name__ for f in sys.meta_path if "RegisterAfterKeras" in type(f).__name__]
    print("HOOKS=" + json.dumps(hooks + [type(keras.__spec__.loader).__name__]))
    for kind in kinds:
        model = keras.models.load_model(f"{folder}/{kind}.keras")
        with open(f"{folder}/{kind}.inputs.pickle", "rb") as f:
            inputs = pickle.load(f)
        want = np.load(f"{folder}/{kind}.npz")["output"]
        np.testing.assert_allclose(np.asarray(model(inputs)), want, atol=1e-6)
        print("LOADED", kind)
    """
)


def _run(imports, folder, kinds):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    names = json.dumps(_registered_names_in_sources())
    return subprocess.run(
        [sys.executable, "-c", imports + CHECK, str(folder), names, json.dumps(kinds)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def _line(done, key):
    line = next(x for x in done.stdout.splitlines() if x.startswith(key + "="))
    return json.loads(line[len(key) + 1 :])


def test_the_sources_register_classes_of_every_module():
    names = _registered_names_in_sources()
    for name in ("MaskedPooling", "BertEncoder", "Teacher", "Distiller", "ForwardKL"):
        assert f"kd_keras>{name}" in names
    assert len(names) >= 16


KINDS = ["bilstm", "static", "tiny_bert", "pair", "teacher"]


@pytest.mark.parametrize(
    "imports, kinds",
    [
        ("import keras\nimport kd_keras\n", ["bilstm", "teacher"]),
        ("import kd_keras\nimport keras\n", KINDS),
        # Keras finishes importing inside KerasHub's import: registering waits for it.
        ("import kd_keras\nimport keras_hub\nimport keras\n", []),
    ],
    ids=["keras-first", "kd_keras-first", "inside-keras_hub"],
)
def test_load_model_in_a_fresh_process(saved, imports, kinds):
    folder, _ = saved
    done = _run(imports, folder, kinds)
    assert done.returncode == 0, done.stderr[-3000:]
    assert _line(done, "MISSING") == []
    # The import hook is gone, and Keras kept its own loader.
    assert _line(done, "HOOKS") == ["SourceFileLoader"]
    assert [line for line in done.stdout.splitlines() if line.startswith("LOADED")] == [
        f"LOADED {kind}" for kind in kinds
    ]
    assert "could not register" not in done.stderr


def test_saved_files_are_within_one_and_a_half_times_their_weights(saved):
    _, manifest = saved
    for name, entry in manifest.items():
        if name == "teacher":  # a few kB of weights: the file's own overhead dominates
            continue
        size = pathlib.Path(entry["path"]).stat().st_size
        assert size < 1.5 * entry["weight_bytes"], (name, size, entry["weight_bytes"])


def test_a_failed_registration_is_a_warning_and_removes_the_hook(monkeypatch):
    hook = kd_keras._RegisterAfterKeras()
    monkeypatch.setattr(sys, "meta_path", [hook, *sys.meta_path])
    monkeypatch.setattr(kd_keras, "_SERIALIZABLE_MODULES", ("kd_keras.no_such_module",))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        hook.imported(keras)
    assert hook not in sys.meta_path
    assert len(caught) == 1
    assert "could not register its Keras objects (ModuleNotFoundError" in str(caught[0].message)
    assert "kd_keras.register_custom_objects()" in str(caught[0].message)


def test_python_dash_m_runs_a_kd_keras_module_under_the_import_hook():
    # `python -m kd_keras.x` imports the package (which installs the hook), then
    # asks the module's loader for its code: the hook's loader must answer.
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    done = subprocess.run(
        [sys.executable, "-m", "kd_keras", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "usage: kd-keras" in done.stdout
    assert "tensorflow" not in done.stderr.lower()
