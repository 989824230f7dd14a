"""Vocabulary distillation time on this CPU: the pass before and after issue 22.

Vocabulary distillation runs the teacher on `[CLS] token [SEP]` for every
token of its vocabulary (30,522 for all-MiniLM-L6-v2). This times, in turns
in one process, on the same teacher and tokens:

- *before*: the pass of main d535c51 (the teacher's Keras graph through a
  `tf.function` over the BERT input dict, inputs built in NumPy), copied
  here verbatim;
- *after*: `kd_keras.teacher_pass.vocabulary_token_outputs` (the fused
  KerasHub-BERT path of `kd_keras.models.student_init.token_forward`);

and prints seconds per round, tokens per second, the ratio, and the largest
absolute difference between the two outputs. The first call of each is a
warm-up (tracing) and is timed separately.

```
.venv/bin/python benchmarks/vocabulary_pass.py              # 2 rounds, ~3 min
.venv/bin/python benchmarks/vocabulary_pass.py --rounds 3
```
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402


def before(teacher, vocabulary_size, batch_size=1024):
    """`vocabulary_token_outputs` of main d535c51."""
    import tensorflow as tf

    preprocessor = teacher.preprocessor

    @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.int32)] * 3, reduce_retracing=True)
    def forward(token_ids, segment_ids, padding_mask):
        inputs = {"token_ids": token_ids, "segment_ids": segment_ids, "padding_mask": padding_mask}
        return teacher(inputs, training=False)

    rows = []
    for start in range(0, vocabulary_size, batch_size):
        ids = np.arange(start, min(start + batch_size, vocabulary_size), dtype=np.int32)
        token_ids = np.stack(
            [
                np.full_like(ids, preprocessor.cls_token_id),
                ids,
                np.full_like(ids, preprocessor.sep_token_id),
            ],
            axis=1,
        )
        outputs = forward(token_ids, np.zeros_like(token_ids), np.ones_like(token_ids))
        rows.append(np.asarray(outputs, dtype=np.float32))
    return np.concatenate(rows, axis=0)


def after(teacher, vocabulary_size, batch_size=1024):
    from kd_keras.teacher_pass import vocabulary_token_outputs

    return vocabulary_token_outputs(teacher, batch_size=batch_size)[:vocabulary_size]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="default")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)

    import tensorflow as tf

    from kd_keras.models.teachers import load_teacher

    teacher = load_teacher(args.teacher)
    vocabulary_size = len(teacher.preprocessor.vocabulary)
    tokens = vocabulary_size
    print(
        f"teacher {args.teacher}: {tokens} tokens; "
        f"TensorFlow {tf.__version__}, {len(os.sched_getaffinity(0))} cores"
    )
    runs = {
        "before (d535c51)": lambda: before(teacher, tokens),
        "after": lambda: after(teacher, tokens),
    }
    times = {name: [] for name in runs}
    outputs = {}
    for name, run in runs.items():  # warm-up: tracing
        start = time.perf_counter()
        outputs[name] = run()
        print(f"{name}: first call (with tracing) {time.perf_counter() - start:.1f} s")
    for _ in range(args.rounds):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    for name, seconds in times.items():
        best = min(seconds)
        print(
            f"{name}: {', '.join(f'{s:.1f}' for s in seconds)} s per round; "
            f"{tokens / best:,.0f} tokens/s at best"
        )
    first, second = times
    print(f"after / before time: {min(times[second]) / min(times[first]):.2f}")
    difference = np.abs(outputs[first] - outputs[second]).max()
    print(f"largest absolute difference between the outputs: {difference:.2e}")


if __name__ == "__main__":
    main()
