"""The house rules of the layout, checked on the source tree itself.

- `models/` installs as `kd_keras.models` and imports nothing from the rest of
  `kd_keras`; nothing imports a top-level `models` package.
- Every package under `kd_keras/` is listed in `pyproject.toml`.
- No module over 600 lines, no function over 80 lines (docstring excluded), in the
  library and the scripts.
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
