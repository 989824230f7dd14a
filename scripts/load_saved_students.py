"""Reloads run folders' `student.keras` with plain Keras, in a fresh process each.

For every run folder given, a new interpreter runs

    import kd_keras, keras
    model = keras.models.load_model("RUN/student.keras")

(nothing else of kd-keras imported by hand), embeds a few sentences with the
model and the sidecar tokenizer, and compares them with the run's exported
SavedModel (`RUN/student`, its `embed` signature). Printed per run: the model
name, the `.keras` file size against the bytes of its weights, the size of
its `config.json`, and the largest difference to the export.

    .venv/bin/python scripts/load_saved_students.py runs/a runs/b ...
"""

import json
import os
import subprocess
import sys
import textwrap
import zipfile

CHECK = textwrap.dedent(
    """
    import sys
    import kd_keras
    import keras
    import numpy as np
    import tensorflow as tf

    run = sys.argv[1]
    model = keras.models.load_model(f"{run}/student.keras")
    from kd_keras.serving.student_files import load_preprocessor
    preprocessor = load_preprocessor(f"{run}/student.preprocessor.json")
    sentences = ["A man is playing a guitar.", "The cat sat on the mat.", "Is it raining?"]
    inputs = {k: np.asarray(v) for k, v in preprocessor(sentences).items()}
    if not isinstance(model.input, dict):
        inputs = inputs["token_ids"]
    ours = np.asarray(model(inputs))
    ours = ours / np.linalg.norm(ours, axis=1, keepdims=True)
    export = tf.saved_model.load(f"{run}/student")
    theirs = export.signatures["embed"](sentences=tf.constant(sentences))["embedding"].numpy()
    weights = sum(w.numpy().nbytes for w in model.weights)
    print(f"RESULT {model.name} {weights} {float(np.abs(ours - theirs).max()):.2e}")
    """
)


def main(runs):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    for run in runs:
        path = os.path.join(run, "student.keras")
        done = subprocess.run(
            [sys.executable, "-c", CHECK, run], capture_output=True, text=True, env=env
        )
        lines = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
        if done.returncode or not lines:
            print(f"{run}: FAILED\n{done.stderr[-2000:]}")
            continue
        _, name, weights, difference = lines[-1].split()
        size = os.path.getsize(path)
        with zipfile.ZipFile(path) as archive:
            config = archive.getinfo("config.json").file_size
            json.loads(archive.read("config.json"))
        print(
            f"{run}: {name}: student.keras {size / 2**20:.2f} MiB, weights "
            f"{int(weights) / 2**20:.2f} MiB ({size / int(weights):.3f}x), config.json "
            f"{config / 1024:.1f} KiB; loaded in a fresh process after `import kd_keras`; "
            f"largest difference to the export's embed {difference}"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
