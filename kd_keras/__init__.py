"""kd-keras: knowledge distillation for Keras 3 on the TensorFlow backend.

The core is `Distiller` and `losses`; they are imported on first use, so that
`import kd_keras` (and `kd-keras --help`) does not start TensorFlow.

Layout: `kd_keras.models` (model builders and teacher loaders), `teacher_pass`
(the teacher over a data set, cached), `recipes` (sentence pairs, text
classification, causal LM), `serving` (raw-text SavedModel export),
`storage` (atomic writes, fingerprints, cache files), `cli` (the `kd-keras`
command).
"""

import importlib
import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

__version__ = "0.1.0"

__all__ = ["Distiller", "losses", "__version__"]


def __getattr__(name):
    if name == "Distiller":
        from kd_keras.distiller import Distiller

        return Distiller
    if name == "losses":
        return importlib.import_module("kd_keras.losses")
    raise AttributeError(f"module 'kd_keras' has no attribute {name!r}")
