"""A student as files: a `.keras` model and its tokenizer in a JSON sidecar.

`save_student(student, "student.keras", preprocessor)` writes the model and
`student.preprocessor.json` (the `BertPreprocessor`'s full config, vocabulary
included) beside it; `load_student` reads both back, and `kd-keras export
--student` exports them.
"""

import json
import os
import pathlib

import keras

from kd_keras.storage import atomic_path, write_text_atomic

__all__ = [
    "PREPROCESSOR_FORMAT",
    "check_preprocessor",
    "load_preprocessor",
    "load_student",
    "preprocessor_sidecar_path",
    "save_preprocessor",
    "save_student",
    "unwrap_student",
]

PREPROCESSOR_FORMAT = "kd_keras.preprocessor.v1"
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


def save_preprocessor(preprocessor, path):
    """Writes a `BertPreprocessor`'s full config (vocabulary included) as JSON.

    Args:
        preprocessor: a `BertPreprocessor`.
        path: the JSON file to write.

    Returns:
        The path, as a `pathlib.Path`.
    """
    check_preprocessor(preprocessor)
    path = pathlib.Path(path)
    document = {
        "format": PREPROCESSOR_FORMAT,
        "preprocessor": keras.saving.serialize_keras_object(preprocessor),
    }
    write_text_atomic(path, json.dumps(document, ensure_ascii=False) + "\n")
    return path


def load_preprocessor(path):
    """Reads a preprocessor written by `save_preprocessor`.

    Args:
        path: the JSON file.

    Returns:
        A `BertPreprocessor`.
    """
    import kd_keras.models.bert_tokenizer  # noqa: F401  (registers BertPreprocessor)

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
    return keras.saving.deserialize_keras_object(document["preprocessor"])


def save_student(student, path, preprocessor):
    """Saves a student as a `.keras` file with its preprocessor next to it.

    The preprocessor goes to `preprocessor_sidecar_path(path)` (e.g.
    `student.keras` -> `student.preprocessor.json`), which `load_student`
    and `kd-keras export --student` read.

    Args:
        student: a `keras.Model` (or a `Distiller`: its student is saved).
        path: the `.keras` file to write.
        preprocessor: the `BertPreprocessor` whose ids the student takes.

    Returns:
        `(model_path, sidecar_path)`, as `pathlib.Path`s.
    """
    student, _ = unwrap_student(student)
    path = pathlib.Path(path)
    if path.suffix != ".keras":
        raise ValueError(f"Student file must end with .keras; received {path}.")
    check_preprocessor(preprocessor)
    with atomic_path(path) as tmp:
        student.save(str(tmp))
    return path, save_preprocessor(preprocessor, preprocessor_sidecar_path(path))


def load_student(path, preprocessor=None):
    """Loads a `.keras` student and its preprocessor.

    A `.keras` file holding a whole `Distiller` gives its student (and the
    teacher's preprocessor when no sidecar is found).

    Args:
        path: a `.keras` file.
        preprocessor: a `BertPreprocessor`, or a path to a preprocessor JSON
            file; `None` reads the sidecar written by `save_student`.

    Returns:
        `(student, preprocessor)`.
    """
    # Register the project's serializable classes before loading.
    import kd_keras.distiller  # noqa: F401
    import kd_keras.models.bert_tokenizer  # noqa: F401
    import kd_keras.models.heads  # noqa: F401
    import kd_keras.models.pooling  # noqa: F401
    import kd_keras.models.teachers  # noqa: F401

    path = pathlib.Path(path)
    if path.suffix != ".keras":
        raise ValueError(f"Student file must be a .keras file; received {path}.")
    if not path.is_file():
        raise FileNotFoundError(f"Student model file not found: {path}")
    loaded = keras.saving.load_model(str(path))
    student, teacher = unwrap_student(loaded)
    if isinstance(preprocessor, (str, os.PathLike)):
        preprocessor = load_preprocessor(preprocessor)
    if preprocessor is None:
        sidecar = preprocessor_sidecar_path(path)
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
