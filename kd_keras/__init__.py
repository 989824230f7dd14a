"""kd-keras: knowledge distillation for Keras 3 on the TensorFlow backend.

The core is `Distiller` and `losses`; they are imported on first use, so that
`import kd_keras` (and `kd-keras --help`) does not start TensorFlow.

Layout: `kd_keras.models` (model builders and teacher loaders), `teacher_pass`
(the teacher over a data set, cached), `recipes` (sentence pairs, text
classification, causal LM), `serving` (raw-text SavedModel export),
`quantize` (int8 copies of models), `storage` (atomic writes, fingerprints,
cache files), `cli` (the `kd-keras` command).

`import kd_keras` registers every custom Keras object of the project
(`MaskedPooling`, `BertEncoder`, `Teacher`, `Distiller`, the losses...) with
`keras.saving`, so that `keras.models.load_model("student.keras")` works in
a fresh process, whichever of `keras` and `kd_keras` is imported first: at
once when Keras is already imported, else right after Keras (and TensorFlow,
KerasHub, tensorflow-text, which the registering modules import) have
finished importing. Until then nothing heavy is imported.
`register_custom_objects()` does the same on demand.
"""

import importlib
import os
import sys
import warnings

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

__version__ = "0.1.0"

__all__ = ["Distiller", "losses", "register_custom_objects", "__version__"]


def __getattr__(name):
    if name == "Distiller":
        # On first use: every `kd_keras.*` import runs this package, so it stays free of Keras.
        from kd_keras.distiller import Distiller

        return Distiller
    if name == "losses":
        return importlib.import_module("kd_keras.losses")
    raise AttributeError(f"module 'kd_keras' has no attribute {name!r}")


# === Registration of the custom Keras objects ===

# Every module that defines a `keras.saving.register_keras_serializable` class
# (tests/test_registration.py checks the list against the sources).
_SERIALIZABLE_MODULES = (
    "kd_keras.losses",
    "kd_keras.distiller",
    "kd_keras.models.pooling",
    "kd_keras.models.heads",
    "kd_keras.models.bert_encoder",
    "kd_keras.models.bert_tokenizer",
    "kd_keras.models.teachers",
    "kd_keras.recipes.sentence_pairs.objectives",
)
# Top-level packages those modules import: registering waits until none of
# them is half-imported (TensorFlow imports Keras during its own import,
# KerasHub and kd_keras' own modules import Keras first thing).
_DEPENDENCIES = ("keras", "tensorflow", "keras_hub", "tensorflow_text", "kd_keras")


def register_custom_objects():
    """Registers every custom Keras object of kd-keras with `keras.saving`.

    Imports the modules that define them (`_SERIALIZABLE_MODULES`); `import
    kd_keras` calls it once Keras is imported. Calling it again costs nothing.
    """
    for name in _SERIALIZABLE_MODULES:
        importlib.import_module(name)


def _half_imported(finished=None):
    """Whether a module of `_DEPENDENCIES` other than `finished` is being imported.

    CPython marks a module's spec `_initializing` while the module executes.
    The `kd_keras` package itself is left out: registering works from its
    `__init__` (this module), once the functions above exist.
    """
    for name, module in list(sys.modules.items()):
        if module is finished or name == "kd_keras":
            continue
        if name.partition(".")[0] in _DEPENDENCIES:
            if getattr(getattr(module, "__spec__", None), "_initializing", False):
                return True
    return False


def _register_now():
    """Removes the import hook, then registers; a failure is a warning, never an import error."""
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _RegisterAfterKeras)]
    try:
        register_custom_objects()
    except Exception as e:  # an `import keras` must never fail because of kd_keras
        warnings.warn(
            f"kd_keras could not register its Keras objects ({type(e).__name__}: {e}); "
            "call kd_keras.register_custom_objects() before keras.models.load_model.",
            stacklevel=2,
        )


class _NotifyingLoader:
    """Runs the original loader, then tells the finder that a module was imported."""

    def __init__(self, loader, finder):
        self.loader = loader
        self.finder = finder

    def __getattr__(self, name):
        # Everything but the two import steps is the original loader's
        # (`get_code` for `python -m`, `get_resource_reader`, `is_package`...).
        return getattr(self.loader, name)

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        # The module sees its own loader only, during and after its import.
        module.__loader__ = self.loader
        if getattr(module, "__spec__", None) is not None:
            module.__spec__.loader = self.loader
        self.loader.exec_module(module)
        self.finder.imported(module)


class _RegisterAfterKeras:
    """A `sys.meta_path` finder that registers once Keras and its company are imported.

    It finds nothing itself: for the top-level packages of `_DEPENDENCIES`
    and the submodules of `kd_keras` it asks the other finders and wraps the
    loader they return, so that it hears when each has been executed. When
    Keras is imported and none of those packages is half-imported, it removes
    itself and registers (`register_custom_objects`).
    """

    def find_spec(self, fullname, path=None, target=None):
        top = fullname.partition(".")[0]
        if top not in _DEPENDENCIES or (top != "kd_keras" and top != fullname):
            return None
        for finder in list(sys.meta_path):
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if hasattr(spec.loader, "exec_module") and hasattr(spec.loader, "create_module"):
            spec.loader = _NotifyingLoader(spec.loader, self)
        return spec

    def imported(self, module):
        if "keras" in sys.modules and not _half_imported(finished=module):
            _register_now()


if "keras" in sys.modules and not _half_imported():
    _register_now()
elif not any(isinstance(f, _RegisterAfterKeras) for f in sys.meta_path):
    sys.meta_path.insert(0, _RegisterAfterKeras())
