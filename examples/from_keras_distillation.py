"""From `keras.distillation.Distiller` to `kd_keras.Distiller`: the same job, side by side.

The same teacher, student and data; Keras' distiller (3.12+) first, ours
second. `tests/test_docs.py` runs this file; the documentation shows the two
marked parts:

    .venv/bin/python examples/from_keras_distillation.py
"""

import keras
import numpy as np

import kd_keras

x = np.random.normal(size=(128, 16)).astype("float32")
y = np.random.randint(0, 4, size=128)
teacher = keras.Sequential([keras.Input((16,)), keras.layers.Dense(32), keras.layers.Dense(4)])
student = keras.Sequential([keras.Input((16,)), keras.layers.Dense(4)])
twin = keras.models.clone_model(student)  # the same starting student for ours
twin.set_weights(student.get_weights())

# --8<-- [start:keras]
theirs = keras.distillation.Distiller(
    teacher=teacher,
    student=student,
    distillation_losses=keras.distillation.LogitsDistillation(
        temperature=3.0, loss=keras.losses.KLDivergence()
    ),
    student_loss_weight=0.5,
)
theirs.compile(
    optimizer="adam",
    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    metrics=["accuracy"],
)
theirs.fit(x, y, epochs=1, verbose=0)
# --8<-- [end:keras]

student = twin
# --8<-- [start:ours]
ours = kd_keras.Distiller(teacher, student)
ours.compile(
    optimizer="adam",
    student_loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    distillation_loss="forward_kl",  # softmax KL(teacher || student) x T^2, in log space
    temperature=3.0,
    alpha=0.5,  # = 1 - student_loss_weight
    metrics=["accuracy"],
)
ours.fit(x, y, epochs=1, verbose=0)
# --8<-- [end:ours]
# The same job: from the same start, the two end an epoch with nearly the same losses.
print("student loss, keras.distillation:", theirs.evaluate(x, y, verbose=0, return_dict=True))
print("student loss, kd_keras:", ours.evaluate(x, y, verbose=0, return_dict=True))
