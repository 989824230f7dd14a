"""kd-keras: knowledge distillation for Keras 3 on the TensorFlow backend."""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from kd_keras import losses  # noqa: E402
from kd_keras.distiller import Distiller  # noqa: E402

__version__ = "0.1.0"

__all__ = ["Distiller", "losses", "__version__"]
