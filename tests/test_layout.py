"""The house rules of the layout, checked on the source tree itself.

- `models/` installs as `kd_keras.models` and imports nothing from the rest of
  `kd_keras`; nothing imports a top-level `models` package.
- Every package under `kd_keras/` is listed in `pyproject.toml`.
- No module over 600 lines, no function over 80 lines (docstring excluded), in the
  library and the scripts.
- Imports at the top of each module: none inside a function in `kd_keras/` and
  `models/` but those of `DEFERRED_IMPORTS`, each with its reason.
- Scripts (examples, benchmarks) import the installed package: no `sys.path` edits.
"""

import ast
import pathlib

import pytest
import tomllib

ROOT = pathlib.Path(__file__).resolve().parents[1]
LIBRARY = [*sorted((ROOT / "kd_keras").rglob("*.py")), *sorted((ROOT / "models").glob("*.py"))]
SCRIPTS = [*sorted((ROOT / "examples").glob("*.py")), *sorted((ROOT / "benchmarks").glob("*.py"))]
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 80

# The only imports inside functions: module -> the modules it imports there. Every
# other import is at the top of its module, where a reader and a tool see it.
DEFERRED_IMPORTS = {
    # Every `kd_keras.*` import runs the package, the command line's too: it stays free
    # of Keras, and `kd_keras.Distiller` is imported on first use.
    "kd_keras/__init__.py": {"kd_keras.distiller"},
    # `quiet_tensorflow()`: TensorFlow loads once `TF_CPP_MIN_LOG_LEVEL` is set and with
    # standard error captured; the command line's dispatch calls it before the run module.
    "kd_keras/cli/__init__.py": {"tensorflow"},
    # The optional `[beam]` extra: checked for, then used, only with `--runner beam`.
    "kd_keras/cli/label.py": {"apache_beam"},
    "kd_keras/cli/label_run.py": {"kd_keras.labels_beam"},
    # `tf.io.gfile`, for object-store paths (`gs://...`) only: the command line's checks
    # import this module (through `kd_keras.data` and `kd_keras.storage`) before TensorFlow.
    "kd_keras/filesystems.py": {"tensorflow"},
    # Each Beam worker imports this module before `setup`, which loads TensorFlow only
    # after `quiet_tensorflow()`.
    "kd_keras/labels_beam_worker.py": {"tensorflow", "tensorflow_text"},
    # A recipe package is the command line's parser module (its `Config` gives the
    # flags), free of TensorFlow; its `run()` imports the job.
    "kd_keras/recipes/causal_lm/__init__.py": {"kd_keras.recipes.causal_lm.job"},
    "kd_keras/recipes/classification/__init__.py": {"kd_keras.recipes.classification.job"},
    "kd_keras/recipes/sentence_pairs/__init__.py": {"kd_keras.recipes.sentence_pairs.job"},
    # The optional `reference` extra (torch, sentence-transformers, ONNX Runtime), which
    # kd-keras never needs to run.
    "kd_keras/reference.py": {
        "onnxruntime",
        "onnxruntime.quantization",
        "sentence_transformers",
        "torch",
    },
}


def _imports(path):
    """Absolute module names imported by a file (relative imports resolved)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = "kd_keras.models" if path.parent.name == "models" else None
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                names.append(f"{package}.{node.module}" if node.module else package)
            else:
                names.append(node.module)
    return names


def _relative(path):
    return path.relative_to(ROOT).as_posix()


def _function_imports(path):
    """`[(line, module name)]` of the imports inside the functions of a file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = set()
    for function in ast.walk(tree):
        if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(function):
                if isinstance(node, ast.Import):
                    found |= {(node.lineno, alias.name) for alias in node.names}
                elif isinstance(node, ast.ImportFrom):
                    found.add((node.lineno, "." * node.level + (node.module or "")))
    return sorted(found)


def test_models_import_nothing_from_the_rest_of_kd_keras():
    for path in sorted((ROOT / "models").glob("*.py")):
        for name in _imports(path):
            if name == "kd_keras" or name.startswith("kd_keras."):
                assert name.startswith("kd_keras.models"), f"{_relative(path)} imports {name}"


def test_nothing_imports_a_top_level_models_package():
    for path in [*LIBRARY, *SCRIPTS, *sorted((ROOT / "tests").rglob("*.py"))]:
        for name in _imports(path):
            assert name != "models" and not name.startswith("models."), (
                f"{_relative(path)} imports {name}"
            )


def test_every_package_is_listed_in_pyproject():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    listed = set(config["tool"]["setuptools"]["packages"])
    found = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for init in (ROOT / "kd_keras").rglob("__init__.py")
    }
    assert found | {"kd_keras.models"} == listed
    assert config["tool"]["setuptools"]["package-dir"] == {"kd_keras.models": "models"}
    assert not (ROOT / "models" / "__init__.py").exists() or "kd_keras.models" in listed


def test_imports_are_at_the_top_of_each_module():
    found = {}
    for path in LIBRARY:
        for line, name in _function_imports(path):
            found.setdefault(_relative(path), {})[name] = line
    new = {
        f"{path}:{line} imports {name}"
        for path, names in found.items()
        for name, line in names.items()
        if name not in DEFERRED_IMPORTS.get(path, ())
    }
    assert not new, f"imports inside functions: move them to the top of the module: {new}"
    gone = {
        f"{path}: {name}"
        for path, names in DEFERRED_IMPORTS.items()
        for name in names
        if name not in found.get(path, {})
    }
    assert not gone, f"DEFERRED_IMPORTS names imports that are no longer there: {gone}"


def test_every_deferred_import_says_why():
    # A comment on the import's line, or above it among the imports and comments it starts.
    for relative in DEFERRED_IMPORTS:
        lines = (ROOT / relative).read_text(encoding="utf-8").splitlines()
        for line, name in _function_imports(ROOT / relative):
            above = line - 1
            while above > 0 and lines[above - 1].strip().startswith(("import ", "from ", "#")):
                above -= 1
            block = lines[above:line]
            assert any("#" in text for text in block), f"{relative}:{line} {name}: say why"


@pytest.mark.parametrize("path", [*LIBRARY, *SCRIPTS], ids=_relative)
def test_module_and_function_sizes(path):
    source = path.read_text(encoding="utf-8")
    assert len(source.splitlines()) <= MAX_MODULE_LINES
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            first = body[0]
            has_docstring = (
                isinstance(first, ast.Expr)
                and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)
            )
            start = body[1].lineno if has_docstring and len(body) > 1 else first.lineno
            length = node.end_lineno - start + 1
            assert length <= MAX_FUNCTION_LINES, f"{node.name}: {length} lines"


@pytest.mark.parametrize("path", SCRIPTS, ids=_relative)
def test_scripts_do_not_edit_sys_path(path):
    assert "sys.path" not in path.read_text(encoding="utf-8")
