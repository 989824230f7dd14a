"""The LM recipe's shipped data: `instructions/{train,test}.jsonl` and `lm/corpus.txt`.

Built from the SST-2 and STS-B files of the data folder (`kd-keras distill-lm
--write-data true`); see `data/instructions/README.md`.
"""

import json

import numpy as np

from kd_keras.data import data_dir, read_lines, read_stsb
from kd_keras.storage import write_text_atomic

__all__ = ["build_shipped_data"]


def _sentiment_examples(path, n, rng):
    """Up to `n` sentiment examples from an SST-2 file (6 to 16 words each)."""
    rows = []
    for _, line in read_lines(path):
        text, label = line.rsplit("\t", 1)
        words = text.split()
        if 6 <= len(words) <= 16:
            rows.append((" ".join(words), "positive" if label.strip() == "1" else "negative"))
    rows = list(dict.fromkeys(rows))
    pick = rng.choice(len(rows), size=min(n, len(rows)), replace=False)
    return [
        {
            "instruction": "Rate the sentiment of this review as positive or negative.",
            "input": rows[i][0],
            "output": rows[i][1],
        }
        for i in sorted(pick)
    ]


def _sts_examples(path, n, rng):
    """Up to `n` paraphrase and `n` continuation examples from an STS-B file."""
    a, b, scores = read_stsb(path)
    pairs = [(x, y) for x, y, s in zip(a, b, scores, strict=True) if s >= 4.0 and len(x) < 110]
    sentences = [s for s in dict.fromkeys(a + b) if 6 <= len(s.split()) <= 16]
    pick = rng.choice(len(pairs), size=min(n, len(pairs)), replace=False)
    paraphrase = [
        {
            "instruction": "Write a sentence that means the same as this one.",
            "input": pairs[i][0],
            "output": pairs[i][1],
        }
        for i in sorted(pick)
    ]
    pick = rng.choice(len(sentences), size=min(n, len(sentences)), replace=False)
    continuation = []
    for i in sorted(pick):
        words = sentences[i].split()
        half = len(words) // 2
        continuation.append(
            {
                "instruction": "Continue the sentence.",
                "input": " ".join(words[:half]),
                "output": " ".join(words[half:]),
            }
        )
    return paraphrase + continuation


def build_shipped_data(per_task_train=1000, per_task_test=100, seed=0, data_folder=None):
    """Writes `instructions/{train,test}.jsonl` and `lm/corpus.txt` of the data folder.

    Three tasks, training examples from the SST-2 / STS-B training files and
    held-out ones from their dev files (no sentence in both):

    - sentiment: "Rate the sentiment ..." -> `positive` / `negative`;
    - paraphrase: an STS-B pair scored >= 4 -> the other sentence;
    - continuation: the first half of a sentence -> the rest.
    The corpus is the distinct STS-B training sentences.

    Args:
        per_task_train, per_task_test: int. Examples per task and split.
        seed: int.
        data_folder: the data folder (`kd_keras.data.data_dir`'s `override`;
            default: `$KD_KERAS_DATA`, else the checkout's `data/`).

    Returns:
        dict: how many `train` and `test` examples and `corpus` lines were written.
    """
    root = data_dir(data_folder)
    sst2, stsb = root / "sst2", root / "stsb"
    rng = np.random.default_rng(seed)
    train = _sentiment_examples(str(sst2 / "sentiment-train"), per_task_train, rng)
    train += _sts_examples(str(stsb / "sts-train.csv"), per_task_train, rng)
    test = _sentiment_examples(str(sst2 / "sentiment-dev"), per_task_test, rng)
    test += _sts_examples(str(stsb / "sts-dev.csv"), per_task_test, rng)
    for examples in (train, test):
        order = rng.permutation(len(examples))
        examples[:] = [examples[i] for i in order]
    instructions = root / "instructions"
    instructions.mkdir(parents=True, exist_ok=True)
    for name, examples in (("train", train), ("test", test)):
        lines = [json.dumps(example, ensure_ascii=False) + "\n" for example in examples]
        write_text_atomic(instructions / f"{name}.jsonl", "".join(lines))
    a, b, _ = read_stsb(str(stsb / "sts-train.csv"))
    lm = root / "lm"
    lm.mkdir(parents=True, exist_ok=True)
    corpus = [s.strip() for s in dict.fromkeys(a + b) if s.strip()]
    write_text_atomic(lm / "corpus.txt", "\n".join(corpus) + "\n")
    return {"train": len(train), "test": len(test), "corpus": len(corpus)}
