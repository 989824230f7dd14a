"""A student as files: a `.keras` model and its tokenizer in a JSON sidecar.

`save_student(student, "student.keras", preprocessor)` writes the model and
`student.preprocessor.json` (the `BertPreprocessor`'s full config, vocabulary
included) beside it; `load_student` reads both back, and `kd-keras export
--student` and `kd-keras embed --model` take them.

A student built from a user's own Keras layers needs the modules that
register them (`keras.saving.register_keras_serializable`) imported before
it loads: `save_student(..., modules=["my_layers"])` records their names in
the sidecar (key `"modules"`; a sidecar without it, as older ones, means
none), and `load_student` imports them first. kd-keras' own objects need
nothing: `import kd_keras` registers them.
"""

import importlib
import json
import os
import pathlib
import sys

import keras

import kd_keras
import kd_keras.models.bert_tokenizer  # noqa: F401  (registers BertPreprocessor)
from kd_keras.models.keras_files import check_keras_file
from kd_keras.storage import atomic_path, write_text_atomic

__all__ = [
    "PREPROCESSOR_FORMAT",
    "check_preprocessor",
    "import_modules",
    "load_preprocessor",
    "load_student",
    "preprocessor_sidecar_path",
    "save_preprocessor",
    "save_student",
    "unwrap_student",
]

PREPROCESSOR_FORMAT = "kd_keras.preprocessor.v1"
# What a damaged student `.keras` file's error says to do.
STUDENT_REMEDY = "Export it again from its training run, or retrain it (kd-keras distill)."
_SIDECAR_SUFFIX = ".preprocessor.json"


def check_preprocessor(preprocessor):
    """Raises a `TypeError` unless `preprocessor` is a `BertPreprocessor`-like object."""
    for attribute in ("tokenize", "pack", "sequence_length", "get_config"):
        if not hasattr(preprocessor, attribute):
            raise TypeError(
                "`preprocessor` must be a `kd_keras.models.bert_tokenizer.BertPreprocessor`; "
                f"received {type(preprocessor).__name__} (no `{attribute}`)."
            )


def unwrap_student(distiller_or_student):
    """`(student, teacher or None)` of a `Distiller` or a bare student."""
    student = getattr(distiller_or_student, "student", None)
    if isinstance(student, keras.Model) and hasattr(distiller_or_student, "teacher"):
        return student, distiller_or_student.teacher
    if isinstance(distiller_or_student, keras.Model):
        return distiller_or_student, None
    raise TypeError(
        "`distiller_or_student` must be a kd_keras.Distiller or a keras.Model; received "
        f"{type(distiller_or_student).__name__}."
    )


def preprocessor_sidecar_path(model_path):
    """Where `save_student` puts the preprocessor of `model_path`.

    Args:
        model_path: path of a `.keras` file.

    Returns:
        `pathlib.Path`: `student.keras` -> `student.preprocessor.json`.
    """
    model_path = pathlib.Path(model_path)
    return model_path.with_name(model_path.stem + _SIDECAR_SUFFIX)


def _check_modules(modules):
    """`modules` as a list of dotted module names, or a `ValueError` naming the bad one."""
    if isinstance(modules, str):
        modules = [modules]
    names = []
    for name in modules:
        if not isinstance(name, str) or not all(p.isidentifier() for p in name.split(".")):
            raise ValueError(f"`modules`: {name!r} is not a module name (such as 'my_layers').")
        if name == "__main__":
            raise ValueError(
                "`modules`: '__main__' cannot be imported by another process; define the "
                "custom layers in a module and pass its name."
            )
        names.append(name)
    return names


def save_preprocessor(preprocessor, path, modules=()):
    """Writes a `BertPreprocessor`'s full config (vocabulary included) as JSON.

    Args:
        preprocessor: a `BertPreprocessor`.
        path: the JSON file to write.
        modules: iterable of module names to record (see `save_student`).

    Returns:
        The path, as a `pathlib.Path`.
    """
    check_preprocessor(preprocessor)
    modules = _check_modules(modules)
    path = pathlib.Path(path)
    document = {
        "format": PREPROCESSOR_FORMAT,
        "preprocessor": keras.saving.serialize_keras_object(preprocessor),
    }
    if modules:
        document["modules"] = modules
    write_text_atomic(path, json.dumps(document, ensure_ascii=False) + "\n")
    return path


def _read_sidecar(path):
    """The sidecar's JSON document, checked."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Preprocessor file not found: {path}")
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise ValueError(f"{path}: not valid JSON ({e}).") from None
    if not isinstance(document, dict) or document.get("format") != PREPROCESSOR_FORMAT:
        raise ValueError(
            f"{path}: not a kd-keras preprocessor file (expected format {PREPROCESSOR_FORMAT!r})."
        )
    modules = document.get("modules", [])
    if not isinstance(modules, list):
        raise ValueError(f"{path}: `modules` must be a list of module names.")
    try:
        _check_modules(modules)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    return document


def import_modules(modules, where):
    """Imports `modules` (a student's custom layers), from `sys.path` or the current folder.

    Args:
        modules: iterable of module names.
        where: what recorded them (a path), for the error message.

    Raises:
        ImportError: one line naming the module that cannot be found.
    """
    for name in modules:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name is None or not (name == e.name or name.startswith(e.name + ".")):
                raise  # the module exists; something it imports does not
            if _import_from_current_folder(name):
                continue
            raise ImportError(
                f"{where} needs module {name!r} (its custom Keras objects), which is "
                "importable neither from PYTHONPATH nor from the current folder: put the "
                "folder that holds it on PYTHONPATH."
            ) from None


def _import_from_current_folder(name):
    """Imports `name` with the current folder on `sys.path` for the while; whether it worked."""
    folder = os.getcwd()
    if folder in sys.path or "" in sys.path:
        return False
    sys.path.append(folder)
    try:
        importlib.import_module(name)
    except ModuleNotFoundError:
        return False
    finally:
        sys.path.remove(folder)
    return True


def load_preprocessor(path):
    """Reads a preprocessor written by `save_preprocessor`.

    Args:
        path: the JSON file.

    Returns:
        A `BertPreprocessor`.
    """
    document = _read_sidecar(path)
    return keras.saving.deserialize_keras_object(document["preprocessor"])


def save_student(student, path, preprocessor, modules=()):
    """Saves a student as a `.keras` file with its preprocessor next to it.

    The preprocessor goes to `preprocessor_sidecar_path(path)` (e.g.
    `student.keras` -> `student.preprocessor.json`), which `load_student`,
    `kd-keras export --student` and `kd-keras embed --model` read.

    Args:
        student: a `keras.Model` (or a `Distiller`: its student is saved).
        path: the `.keras` file to write.
        preprocessor: the `BertPreprocessor` whose ids the student takes.
        modules: iterable of module names (`"my_package.layers"`) that
            register the student's own custom Keras objects; recorded in the
            sidecar, imported by `load_student` before loading. Not needed
            for standard Keras layers and kd-keras' own.

    Returns:
        `(model_path, sidecar_path)`, as `pathlib.Path`s.
    """
    student, _ = unwrap_student(student)
    path = pathlib.Path(path)
    if path.suffix != ".keras":
        raise ValueError(f"Student file must end with .keras; received {path}.")
    check_preprocessor(preprocessor)
    modules = _check_modules(modules)
    with atomic_path(path) as tmp:
        student.save(str(tmp))
    return path, save_preprocessor(preprocessor, preprocessor_sidecar_path(path), modules)


def load_student(path, preprocessor=None):
    """Loads a `.keras` student and its preprocessor.

    The file is checked whole first (`kd_keras.models.keras_files`): a
    truncated or corrupted one is a `ValueError` naming it, never loaded.
    A `.keras` file holding a whole `Distiller` gives its student (and the
    teacher's preprocessor when no sidecar is found). The modules the
    sidecar records (`save_student(..., modules=...)`) are imported first.

    Args:
        path: a `.keras` file.
        preprocessor: a `BertPreprocessor`, or a path to a preprocessor JSON
            file; `None` reads the sidecar written by `save_student`.

    Returns:
        `(student, preprocessor)`.
    """
    kd_keras.register_custom_objects()
    path = pathlib.Path(path)
    if path.suffix != ".keras":
        raise ValueError(f"Student file must be a .keras file; received {path}.")
    if not path.is_file():
        raise FileNotFoundError(f"Student model file not found: {path}")
    check_keras_file(path, STUDENT_REMEDY)  # a truncated or corrupted file, before Keras
    sidecar = preprocessor_sidecar_path(path)
    if sidecar.is_file():
        import_modules(_read_sidecar(sidecar).get("modules", []), sidecar)
    loaded = keras.saving.load_model(str(path))
    student, teacher = unwrap_student(loaded)
    if isinstance(preprocessor, (str, os.PathLike)):
        preprocessor = load_preprocessor(preprocessor)
    if preprocessor is None:
        if sidecar.is_file():
            preprocessor = load_preprocessor(sidecar)
        else:
            preprocessor = getattr(student, "preprocessor", None) or getattr(
                teacher, "preprocessor", None
            )
        if preprocessor is None:
            raise FileNotFoundError(
                f"No preprocessor for {path}: {sidecar} does not exist. Save the student with "
                "kd_keras.serving.save_student, or give the preprocessor (--preprocessor JSON, "
                "--vocabulary vocab.txt, or --preprocessor-from-teacher SPEC)."
            )
    return student, preprocessor
