"""Serving an export: raw text in, scores and embeddings out, TensorFlow alone.

Any export of the project serves this way (a `kd-keras distill` run's
`student/`, `kd-keras export --out DIR`). `tests/test_docs.py` runs this file
on a small export; the part between the snippet markers is what the
documentation shows:

    .venv/bin/python examples/serve_export.py runs/<timestamp>/student
"""

# --8<-- [start:load]
import sys

import tensorflow as tf
import tensorflow_text  # noqa: F401  (registers the tokenizer ops)

model = tf.saved_model.load(sys.argv[1])  # e.g. runs/<timestamp>/student
score = model.signatures["similarity"](
    sentence_a=tf.constant(["A man is playing a guitar."]),
    sentence_b=tf.constant(["Someone plays the guitar."]),
)["score"]
embedding = model.signatures["embed"](sentences=tf.constant(["A man is playing a guitar."]))[
    "embedding"
]
print(f"similarity {float(score[0]):.4f}, embedding width {embedding.shape[-1]}")
# --8<-- [end:load]
