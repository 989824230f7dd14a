"""One logit-distillation training step: `kd_keras.Distiller` vs `keras.distillation.Distiller`.

Builds one teacher and one student (small Dense models, 32 features -> 10
classes, fixed seeds), one batch of inputs and integer labels, and configures
both distillers to the same objective:

```
pure distillation:  T^2 * mean_batch KL(softmax(t / T) || softmax(s / T))
kd_keras:  Distiller.compile(distillation_loss="forward_kl", alpha=1.0, temperature=T)
keras:     Distiller(student_loss_weight=0.0,
                     distillation_losses=LogitsDistillation(T, loss=keras.losses.KLDivergence()))
```

Same temperature, same optimizer (SGD, same learning rate), and both students
start from the same weights (one student, cloned). Keras is given the
`KLDivergence()` *instance*: its default `LogitsDistillation(loss="kl_divergence")`
(the string) resolves to the function `keras.losses.kl_divergence`, which
skips the softmax branch of `LogitsDistillation.compute_loss`, so the default
computes `mean_batch sum_v clip(t/T, eps, 1) * log(clip(t/T, eps, 1) / clip(s/T, eps, 1))`
on the raw logits, without `T^2` -- not a softmax KL.

Prints:
- the distillation loss each distiller reports on the batch in its first
  `train_on_batch` (computed before the update), Keras' default
  `LogitsDistillation` loss, a NumPy float64 reference softmax KL x T^2, and a
  NumPy re-derivation of what the Keras default computes;
- ms per `train_on_batch` (median of `--steps` calls after `--warmup` calls,
  the two distillers alternating so that background load hits both alike)
  and the ratio.

```
.venv/bin/python benchmarks/kd_step.py
.venv/bin/python benchmarks/kd_step.py --steps 50 --batch-size 64 --temperature 2
```
"""

import argparse
import os
import platform
import statistics
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from kd_keras.cli import quiet_tensorflow  # noqa: E402

quiet_tensorflow()  # TensorFlow without its C++ start-up lines

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import kd_keras  # noqa: E402
from kd_keras.evaluation import cpu_description  # noqa: E402

FEATURES = 32
CLASSES = 10
MATCH_RTOL = 1e-5


# === Models and data ===


def make_models(features=FEATURES, classes=CLASSES, seed=0):
    """A teacher (32 -> 128 -> 128 -> classes) and a student (32 -> 32 -> classes), logits out."""
    keras.utils.set_random_seed(seed)
    teacher = keras.Sequential(
        [
            keras.Input((features,)),
            keras.layers.Dense(128, activation="relu"),
            keras.layers.Dense(128, activation="relu"),
            keras.layers.Dense(classes),
        ],
        name="teacher",
    )
    student = keras.Sequential(
        [
            keras.Input((features,)),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dense(classes),
        ],
        name="student",
    )
    return teacher, student


def make_batch(batch_size, features=FEATURES, classes=CLASSES, seed=0):
    """float32 inputs `[batch_size, features]` and int32 labels `[batch_size]`."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch_size, features)).astype(np.float32)
    y = rng.integers(0, classes, size=batch_size).astype(np.int32)
    return x, y


def clone_student(student):
    """A new student with the same architecture and the same current weights."""
    clone = keras.models.clone_model(student)
    clone.set_weights(student.get_weights())
    return clone


# === The two distillers ===


def build_kd_keras(teacher, student, temperature, learning_rate=0.01, jit_compile=False):
    """`kd_keras.Distiller`, pure distillation: forward KL x T^2, `alpha=1`.

    With `alpha == 1` the student loss may be `None`, so that, like Keras'
    distiller with `student_loss_weight=0`, no cross-entropy is computed.
    """
    distiller = kd_keras.Distiller(teacher, student)
    distiller.compile(
        optimizer=keras.optimizers.SGD(learning_rate),
        student_loss=None,
        distillation_loss="forward_kl",
        alpha=1.0,
        temperature=temperature,
        jit_compile=jit_compile,
    )
    return distiller


def build_keras(teacher, student, temperature, learning_rate=0.01, loss=None, jit_compile=False):
    """`keras.distillation.Distiller`, pure distillation (`student_loss_weight=0`).

    `loss=None` passes `keras.losses.KLDivergence()` (an instance: the only
    form that takes the softmax-then-KL-x-T^2 branch of
    `LogitsDistillation.compute_loss`); pass `"kl_divergence"` for the
    default `LogitsDistillation(temperature=T)`.
    """
    if loss is None:
        loss = keras.losses.KLDivergence()
    distiller = keras.distillation.Distiller(
        teacher=teacher,
        student=student,
        distillation_losses=keras.distillation.LogitsDistillation(
            temperature=temperature, loss=loss
        ),
        student_loss_weight=0.0,
    )
    # Keras requires a student loss even at weight 0; it is then not computed.
    distiller.compile(
        optimizer=keras.optimizers.SGD(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=jit_compile,
    )
    return distiller


def reported_distillation_loss(distiller, x, y):
    """The `distillation_loss` a distiller reports for one `train_on_batch`.

    Its value is computed in the forward pass, before the optimizer update.
    """
    logs = distiller.train_on_batch(x, y, return_dict=True)
    return float(logs["distillation_loss"])


# === NumPy references ===


def _log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def numpy_softmax_kl(teacher_logits, student_logits, temperature):
    """`T^2 * mean_batch KL(softmax(t/T) || softmax(s/T))`, float64 log-softmax."""
    t = np.asarray(teacher_logits, np.float64) / temperature
    s = np.asarray(student_logits, np.float64) / temperature
    log_p, log_q = _log_softmax(t), _log_softmax(s)
    kl = (np.exp(log_p) * (log_p - log_q)).sum(axis=-1)
    return float(kl.mean() * temperature**2)


def numpy_keras_default(teacher_logits, student_logits, temperature):
    """What `LogitsDistillation(temperature=T)` (loss `"kl_divergence"`) computes.

    `keras.losses.kl_divergence` on the temperature-scaled *logits*, each
    clipped to `[epsilon, 1]`, batch mean, no `T^2`.
    """
    eps = keras.config.epsilon()
    t = np.clip(np.asarray(teacher_logits, np.float64) / temperature, eps, 1.0)
    s = np.clip(np.asarray(student_logits, np.float64) / temperature, eps, 1.0)
    return float((t * np.log(t / s)).sum(axis=-1).mean())


def losses_on_batch(teacher, student, x, y, temperature, learning_rate=0.01):
    """The distillation losses on one batch, at the student's current weights.

    Every distiller gets its own clone of `student` (which is left as is), so
    all start from the same weights. Returns a dict of floats:

    - `numpy_softmax_kl`: NumPy float64 `T^2 * KL(softmax(t/T) || softmax(s/T))`;
    - `kd_keras`: what `kd_keras.Distiller` (forward_kl, alpha=1) reports;
    - `keras_kl_instance`: what `keras.distillation.Distiller` reports with
      `LogitsDistillation(T, loss=keras.losses.KLDivergence())`;
    - `keras_default`: what it reports with the default
      `LogitsDistillation(T)`, i.e. `loss="kl_divergence"`;
    - `numpy_keras_default`: NumPy re-derivation of `keras_default`.
    """
    teacher_logits = keras.ops.convert_to_numpy(teacher(x, training=False))
    student_logits = keras.ops.convert_to_numpy(student(x, training=False))
    out = {
        "numpy_softmax_kl": numpy_softmax_kl(teacher_logits, student_logits, temperature),
        "numpy_keras_default": numpy_keras_default(teacher_logits, student_logits, temperature),
    }
    distillers = {
        "kd_keras": build_kd_keras(teacher, clone_student(student), temperature, learning_rate),
        "keras_kl_instance": build_keras(
            teacher, clone_student(student), temperature, learning_rate
        ),
        "keras_default": build_keras(
            teacher, clone_student(student), temperature, learning_rate, loss="kl_divergence"
        ),
    }
    for name, distiller in distillers.items():
        out[name] = reported_distillation_loss(distiller, x, y)
    return out


def relative_error(value, reference):
    return abs(value - reference) / max(abs(reference), 1e-12)


# === Timing ===


def time_train_steps(distillers, x, y, steps, warmup):
    """ms per `train_on_batch` of each distiller: a list of `steps` timings each.

    `warmup` calls first (tracing excluded); then the distillers alternate,
    their order flipped every step, so that background load hits both alike.
    """
    x = tf.constant(x)
    y = tf.constant(y)
    for distiller in distillers.values():
        for _ in range(warmup):
            distiller.train_on_batch(x, y)
    times = {name: [] for name in distillers}
    names = list(distillers)
    for step in range(steps):
        for name in names if step % 2 == 0 else reversed(names):
            start = time.perf_counter()
            distillers[name].train_on_batch(x, y)  # returns NumPy logs: synchronous
            times[name].append((time.perf_counter() - start) * 1e3)
    return times


# === Report ===


def _load():
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--steps", type=int, default=200, help="timed steps per distiller")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps per distiller")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=2.0)
    parser.add_argument("--learning-rate", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jit-compile", action="store_true", help="XLA for both distillers")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 1 or args.batch_size < 1 or args.temperature <= 0:
        parser.error("--steps, --warmup, --batch-size must be >= 1 and --temperature > 0")
    return args


def _print_header(args):
    print("kd_keras.Distiller vs keras.distillation.Distiller: one logit-KD train step")
    print(f"CPU: {cpu_description()}, load average {_load()}")
    print(
        f"Python {platform.python_version()}, TensorFlow {tf.__version__}, "
        f"Keras {keras.__version__}, NumPy {np.__version__}, kd_keras {kd_keras.__version__}, "
        f"backend {keras.backend.backend()}, jit_compile={args.jit_compile}"
    )
    print(
        f"models: teacher {FEATURES}-128-128-{CLASSES}, student {FEATURES}-32-{CLASSES} (Dense, "
        f"logits); batch {args.batch_size} x {FEATURES}, integer labels; seed {args.seed}"
    )
    print(
        f"objective (both): pure distillation, T^2 * mean KL(softmax(t/T) || softmax(s/T)), "
        f"T={args.temperature:g}; SGD lr={args.learning_rate:g}; "
        "students start from identical weights"
    )
    print("  kd_keras: compile(distillation_loss='forward_kl', alpha=1.0, student_loss=None)")
    print(
        "  keras:    Distiller(student_loss_weight=0.0, distillation_losses="
        "LogitsDistillation(T, loss=keras.losses.KLDivergence()))"
    )
    print()


def main(argv=None):
    args = parse_args(argv)
    T = args.temperature
    # Five distillers trace the same Keras step function once each; TF would
    # warn about "retracing" although no distiller retraces.
    tf.get_logger().setLevel("ERROR")
    _print_header(args)

    teacher, student = make_models(seed=args.seed)
    x, y = make_batch(args.batch_size, seed=args.seed)

    losses = losses_on_batch(teacher, student, x, y, T, args.learning_rate)
    ref = losses["numpy_softmax_kl"]
    print("distillation loss on the batch (reported by the first train_on_batch, before update):")
    rows = [
        ("NumPy float64 softmax KL x T^2 (reference)", "numpy_softmax_kl"),
        ("kd_keras.Distiller, forward_kl", "kd_keras"),
        ("keras Distiller, LogitsDistillation(loss=KLDivergence())", "keras_kl_instance"),
        ("keras Distiller, default LogitsDistillation (loss='kl_divergence')", "keras_default"),
        ("  NumPy: kl_divergence(clip(t/T), clip(s/T)), no T^2", "numpy_keras_default"),
    ]
    for label, key in rows:
        value = losses[key]
        if key == "numpy_softmax_kl":
            verdict = ""
        else:
            err = relative_error(value, ref)
            verdict = f"rel. diff {err:.1e}: " + (
                "matches NumPy" if err <= MATCH_RTOL else "does NOT match NumPy"
            )
        print(f"  {label:<72} {value:12.6f}  {verdict}".rstrip())
    default_err = relative_error(losses["keras_default"], losses["numpy_keras_default"])
    print(
        f"  Keras' default equals the NumPy clipped-logits formula (rel. diff {default_err:.1e}):\n"
        "  keras.losses.get('kl_divergence') is a function, not a KLDivergence instance, so\n"
        "  LogitsDistillation applies it to the temperature-scaled logits: no softmax, no T^2."
    )
    print()

    timed = {
        "kd_keras": build_kd_keras(
            teacher, clone_student(student), T, args.learning_rate, args.jit_compile
        ),
        "keras": build_keras(
            teacher, clone_student(student), T, args.learning_rate, jit_compile=args.jit_compile
        ),
    }
    times = time_train_steps(timed, x, y, args.steps, args.warmup)
    print(
        f"train_on_batch, ms/step (median of {args.steps} after {args.warmup} warm-up steps, "
        "alternating):"
    )
    medians = {}
    for name, values in times.items():
        medians[name] = statistics.median(values)
        print(
            f"  {name:<10} median {medians[name]:8.3f}   min {min(values):8.3f}   "
            f"max {max(values):8.3f}"
        )
    print(f"  ratio kd_keras / keras: {medians['kd_keras'] / medians['keras']:.2f}")
    print(f"load average at the end: {_load()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
