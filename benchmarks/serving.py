"""Serving speed of the exported teacher and student on this machine.

Both are raw-text SavedModels written by `kd_keras.export` and called
through their `embed` signature, tokenizer included, as a server would:

- batch-1 latency: one sentence per call, p50 and p99 over the calls;
- batch-64 throughput: sentences per second over calls of 64 sentences.

Sentences are the real STS-B test sentences (columns 5 and 6 of
`data/stsb/sts-test.csv`), taken in file order and cycled.

Without `--teacher-export` / `--student-export`, the exports are written on
the fly to a temporary folder: the default teacher (all-MiniLM-L6-v2), and
the default-size student for speed purposes,
`build_bilstm_encoder(30522, embedding_dim=256, hidden_dim=256,
output_dim=384)` on the teacher's tokenizer, with random weights (weights
do not change the speed; the sizes do).

`--tflite` also converts the on-the-fly student's token-id model (not the
tokenizer: its `tensorflow_text` ops have no TFLite builtin kernels) to a
TFLite flatbuffer with builtin ops only (static batch 1 and length
`--tflite-length`, variables frozen to constants), checks it against the
Keras model and times it.

```
.venv/bin/python benchmarks/serving.py            # ~1-3 min on 2 CPU cores
.venv/bin/python benchmarks/serving.py --latency-calls 100 --throughput-batches 5
```
"""

import argparse
import os
import pathlib
import sys
import tempfile
import time

import numpy as np


def export_defaults(directory, need_teacher, need_student):
    """Writes the default teacher and/or student exports under `directory`."""
    from kd_keras.models.bilstm import build_bilstm_encoder
    from kd_keras.models.teachers import load_teacher
    from kd_keras.serving import export_student, export_teacher

    teacher = load_teacher("default")
    paths = {}
    if need_teacher:
        result = export_teacher(teacher, directory / "teacher")
        print(f"  {result.summary()}")
        paths["teacher"] = result.path
    if need_student:
        student = build_bilstm_encoder(
            len(teacher.preprocessor.vocabulary),
            embedding_dim=256,
            hidden_dim=256,
            output_dim=384,
            name="bilstm_student",
        )
        result = export_student(student, directory / "student", preprocessor=teacher.preprocessor)
        print(f"  {result.summary()}")
        paths["student"] = result.path
        paths["student_model"] = (student, teacher.preprocessor)
    return paths


def tflite_check(student, preprocessor, sentences, length, calls):
    """Converts the student's id model to TFLite; prints size, parity and latency."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    @tf.function(input_signature=[tf.TensorSpec([1, length], tf.int32, name="token_ids")])
    def ids_to_embedding(token_ids):
        return {"embedding": student(token_ids, training=False)}

    # The LSTM loop reads its weights inside a WHILE body: unfrozen, TFLite
    # keeps them as resource variables that are never initialized.
    frozen = convert_variables_to_constants_v2(ids_to_embedding.get_concrete_function())
    converter = tf.lite.TFLiteConverter.from_concrete_functions([frozen], student)
    flatbuffer = converter.convert()
    interpreter = tf.lite.Interpreter(model_content=flatbuffer)
    interpreter.allocate_tensors()
    input_index = interpreter.get_input_details()[0]["index"]
    output_index = interpreter.get_output_details()[0]["index"]
    ids = preprocessor.pack(
        preprocessor.tokenize(sentences[:64]), sequence_length=length, pad_to=length
    )
    ids = ids["token_ids"].numpy()
    expected = student(ids, training=False).numpy()
    diffs, times = [], []
    for i in range(max(calls, len(ids))):
        row = ids[i % len(ids)][None]
        t0 = time.perf_counter()
        interpreter.set_tensor(input_index, row)
        interpreter.invoke()
        got = interpreter.get_tensor(output_index)
        times.append(time.perf_counter() - t0)
        if i < len(ids):
            diffs.append(float(np.abs(got[0] - expected[i]).max()))
    ops = sorted({op["op_name"] for op in interpreter._get_ops_details()})
    print(
        f"TFLite student (ids only, batch 1, {length} tokens): {len(flatbuffer) / 2**20:.1f} MiB, "
        f"max |TFLite - Keras| = {max(diffs):.2e} over {len(ids)} sentences, "
        f"p50 {np.percentile(times, 50) * 1e3:.2f} ms; ops: {', '.join(ops)}"
    )


def measure_latency(fn, sentences, calls, max_seconds):
    """Per-call seconds of `fn` on one sentence at a time."""
    import tensorflow as tf

    times = []
    start = time.perf_counter()
    for i in range(calls):
        batch = tf.constant([sentences[i % len(sentences)]])
        t0 = time.perf_counter()
        fn(sentences=batch)["embedding"].numpy()
        times.append(time.perf_counter() - t0)
        if time.perf_counter() - start > max_seconds:
            break
    return np.asarray(times)


def measure_throughput(fn, sentences, batch_size, batches, max_seconds):
    """`(sentences per second, batches run)` of `fn` on batches of `batch_size`."""
    import tensorflow as tf

    done, elapsed = 0, 0.0
    for i in range(batches):
        rows = [sentences[(i * batch_size + j) % len(sentences)] for j in range(batch_size)]
        batch = tf.constant(rows)
        t0 = time.perf_counter()
        fn(sentences=batch)["embedding"].numpy()
        elapsed += time.perf_counter() - t0
        done += 1
        if elapsed > max_seconds:
            break
    return done * batch_size / elapsed, done


def benchmark(path, sentences, args):
    """Latency and throughput figures of one export."""
    import tensorflow as tf

    from kd_keras.storage import directory_size

    model = tf.saved_model.load(str(path))
    fn = model.signatures["embed"]
    for _ in range(3):  # warm-up: first calls initialize kernels and caches
        fn(sentences=tf.constant(sentences[:1]))
        fn(sentences=tf.constant(sentences[: args.batch_size]))
    latency = measure_latency(fn, sentences, args.latency_calls, args.max_seconds)
    throughput, batches = measure_throughput(
        fn, sentences, args.batch_size, args.throughput_batches, args.max_seconds
    )
    return {
        "size": directory_size(path),
        "p50": float(np.percentile(latency, 50)) * 1e3,
        "p99": float(np.percentile(latency, 99)) * 1e3,
        "calls": len(latency),
        "throughput": throughput,
        "batches": batches,
    }


def _parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher-export", type=pathlib.Path, help="teacher SavedModel folder")
    parser.add_argument("--student-export", type=pathlib.Path, help="student SavedModel folder")
    parser.add_argument(
        "--data", default=None, help="STS-B sts-test.csv (default: the data folder's)"
    )
    parser.add_argument("--latency-calls", type=int, default=300, help="batch-1 calls per model")
    parser.add_argument(
        "--throughput-batches", type=int, default=20, help="batches per model for throughput"
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=40.0,
        help="cap on each measurement (latency, throughput) per model",
    )
    parser.add_argument(
        "--tflite", action="store_true", help="also convert the student's id model to TFLite"
    )
    parser.add_argument("--tflite-length", type=int, default=64, help="TFLite input length")
    args = parser.parse_args(argv)
    for flag, path in (
        ("--teacher-export", args.teacher_export),
        ("--student-export", args.student_export),
    ):
        if path is not None and not (path / "saved_model.pb").is_file():
            parser.error(f"{flag} {path}: not a SavedModel folder (no saved_model.pb).")
    return args


def _print_table(results, batch_size):
    teacher, student = results["teacher"], results["student"]
    print()
    print(
        f"{'model':<10}{'size':>12}{'batch-1 p50':>14}{'batch-1 p99':>14}"
        f"{f'batch-{batch_size} sent/s':>20}"
    )
    for name, r in results.items():
        print(
            f"{name:<10}{r['size'] / 2**20:>8.1f} MiB{r['p50']:>11.2f} ms{r['p99']:>11.2f} ms"
            f"{r['throughput']:>20.1f}"
        )
    # How many times better the student is: teacher / student for size and
    # latency, student / teacher for throughput.
    print(
        f"{'student x':<10}{teacher['size'] / student['size']:>11.1f}x"
        f"{teacher['p50'] / student['p50']:>13.1f}x{teacher['p99'] / student['p99']:>13.1f}x"
        f"{student['throughput'] / teacher['throughput']:>19.1f}x"
    )
    print("(student x = teacher/student for size and latency, student/teacher for throughput)")
    print(
        "calls: "
        + "; ".join(
            f"{name} {r['calls']} batch-1, {r['batches']} batch-{batch_size}"
            for name, r in results.items()
        )
        + f". Load average {os.getloadavg()[0]:.2f} at end (other processes share these cores)."
    )


def main(argv=None):
    args = _parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import tensorflow as tf
    import tensorflow_text  # noqa: F401  (registers the tokenizer ops)

    from kd_keras.data import data_path, read_stsb
    from kd_keras.evaluation import cpu_description

    first, second, _ = read_stsb(args.data or data_path("stsb", "sts-test.csv"))
    sentences = first + second
    gpus = tf.config.list_physical_devices("GPU")
    print(f"CPU: {cpu_description()}; GPU: {'none' if not gpus else len(gpus)}")
    print(f"TensorFlow {tf.__version__}; load average {os.getloadavg()[0]:.2f} at start")
    print(f"sentences: {len(sentences)} from {args.data}")

    student_model = None
    with tempfile.TemporaryDirectory(prefix="kd_keras_serving_") as tmp:
        paths = {"teacher": args.teacher_export, "student": args.student_export}
        missing = [name for name, path in paths.items() if path is None]
        if missing:
            print(f"exporting {' and '.join(missing)} to a temporary folder:")
            paths.update(
                export_defaults(pathlib.Path(tmp), "teacher" in missing, "student" in missing)
            )
            if "student" in missing:
                print("  (student weights are random: weights do not change the speed)")
        student_model = paths.pop("student_model", None)
        results = {name: benchmark(path, sentences, args) for name, path in paths.items()}
    if args.tflite:
        if student_model is None:
            print("--tflite needs the on-the-fly student (no --student-export); skipped.")
        else:
            tflite_check(*student_model, sentences, args.tflite_length, args.latency_calls)

    _print_table(results, args.batch_size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
