"""SST-2 text classification: distil a fine-tuned MiniLM into a BiLSTM (Tang et al. 2019).

A short front for the library recipe `kd_keras.recipes.classification`
(`kd-keras distill-classifier`, the same flags); its steps are described in
`kd_keras.recipes.classification.job`:

1. the offline all-MiniLM-L6-v2 encoder with a classification head is
   fine-tuned on (a `--teacher-train-limit` sample of) the 67,349 SST-2
   training phrases and cached;
2. its logits over a transfer set (the training phrases plus Tang et al.
   augmented sentences) are cached;
3. two BiLSTM classifiers of the same shape and initial weights are trained:
   one on the labels alone (token embeddings by vocabulary distillation
   through the encoder before fine-tuning), one distilled (`alpha *
   LogitMSE + (1 - alpha) * cross-entropy`, token embeddings through the
   fine-tuned teacher);
4. all three are exported as raw-text SavedModels (`classify` signature) and
   their SST-2 dev and test accuracy and CPU throughput measured through the
   exports.

The run directory gets `teacher_export/`, `baseline_export/`,
`student_export/` (the distilled student), `metrics.json` and `report.md`.
A cold run spends most of its time on the teacher fine-tune and the
teacher's pass over the 168,967 transfer sentences, both cached; a rerun
that reuses them took 15.6 minutes on 2 CPU cores (SST-2 dev: teacher 89.56,
labels-only BiLSTM 84.63, distilled BiLSTM 88.30):

    .venv/bin/python examples/distill_sst2.py --run-dir runs/sst2

A smoke test in a minute or two:

    .venv/bin/python examples/distill_sst2.py --run-dir /tmp/sst2 --teacher-train-limit 64 \\
        --train-limit 128 --augment-per-sentence 1 --epochs 1 --eval-limit 64 \\
        --throughput-seconds 0.2

`--fit-verbose N` sets the Keras fit verbosity (default 2); `--verbose` shows
TensorFlow's own log lines.
"""

import sys

from kd_keras.cli import main

if __name__ == "__main__":
    sys.exit(main(["distill-classifier", *sys.argv[1:]]))
