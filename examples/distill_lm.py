"""Token-level distillation of a causal LM, compared across objectives.

A short front for the library recipe `kd_keras.recipes.causal_lm`
(`kd-keras distill-lm`, the same flags); its steps are described in
`kd_keras.recipes.causal_lm.job`. With no pretrained LM offline, it first
trains its own GPT-2 teacher and tokenizer on the shipped corpus, then one
student per objective (cross-entropy alone, forward, reverse and skewed KL,
KL plus cross-entropy), each scored by its perplexity on held-out answers.

The run directory gets `metrics.json`, `report.md` (the comparison table),
`tokenizer/` (`vocab.json`, `merges.txt`) and `teacher/`. Run (about 10
minutes on 2 CPU cores):

    .venv/bin/python examples/distill_lm.py --run-dir runs/lm

and a smoke test in seconds:

    .venv/bin/python examples/distill_lm.py --run-dir /tmp/lm --train-limit 64 \\
        --test-limit 32 --corpus-limit 200 --vocabulary-size 300 --teacher-epochs 1 \\
        --student-epochs 1

`--write-data` rebuilds the shipped `data/instructions/*.jsonl` and
`data/lm/corpus.txt` from the SST-2 and STS-B files in `data/` (see
`data/instructions/README.md`). `--fit-verbose N` sets the Keras fit
verbosity (default 0); `--verbose` shows TensorFlow's own log lines.
"""

import sys

from kd_keras.cli import main

if __name__ == "__main__":
    sys.exit(main(["distill-lm", *sys.argv[1:]]))
