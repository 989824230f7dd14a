"""The library in a screen: `kd_keras.Distiller` on a classifier teacher and student.

The part between the snippet markers is what the README and the documentation
show (`tests/test_docs.py` runs this file and checks the README's copy). It
trains on random data in a few seconds and writes `student.keras` in the
current directory:

    .venv/bin/python examples/library_distiller.py
"""

# --8<-- [start:example]
import keras
import numpy as np

import kd_keras

x = np.random.normal(size=(256, 32)).astype("float32")  # your inputs
y = np.random.randint(0, 10, size=256)  # and labels
teacher = keras.Sequential([keras.Input((32,)), keras.layers.Dense(64), keras.layers.Dense(10)])
student = keras.Sequential([keras.Input((32,)), keras.layers.Dense(10)])

distiller = kd_keras.Distiller(teacher, student)  # the teacher is frozen
distiller.compile(
    optimizer="adam",
    student_loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    distillation_loss="forward_kl",  # or a kd_keras.losses object
    alpha=0.5,  # loss = alpha * soft + (1 - alpha) * hard
    temperature=2.0,
    metrics=["accuracy"],
)
distiller.fit(x, y, epochs=3)
distiller.student.save("student.keras")  # the student alone
# --8<-- [end:example]
