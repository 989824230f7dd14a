"""Exactness of `load_hf_classifier` on a real fine-tuned folder, against `transformers`.

Two steps, two environments (kd-keras never needs torch):

    # 1. with the `reference` extra (torch, transformers): the reference logits
    python scripts/compare_hf_classifier.py reference FOLDER TEXTS.csv OUT.npz [--limit 400]
    # 2. in kd-keras' environment: the same texts through kd-keras, compared
    .venv/bin/python scripts/compare_hf_classifier.py compare FOLDER TEXTS.csv OUT.npz

`TEXTS.csv` has a `text` column (`--text` to change it). Step 1 stores the
token ids and logits of `BertForSequenceClassification` (`eval()`, batches of
32, truncation at `--sequence-length`); step 2 prints whether the token ids
are the same and the largest absolute logit difference and the share of equal
argmax predictions.
"""

import argparse
import csv
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402


def _texts(path, column, limit):
    with open(path, encoding="utf-8", newline="") as f:
        rows = [row[column] for row in csv.DictReader(f)]
    return rows[:limit] if limit else rows


def reference(folder, texts, out, length):
    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = BertForSequenceClassification.from_pretrained(folder).eval()
    ids, logits = [], []
    with torch.no_grad():
        for start in range(0, len(texts), 32):
            encoded = tokenizer(
                texts[start : start + 32],
                padding="max_length",
                truncation=True,
                max_length=length,
                return_tensors="pt",
            )
            logits.append(model(**encoded).logits.numpy())
            ids.append(encoded["input_ids"].numpy())
    np.savez(out, token_ids=np.concatenate(ids), logits=np.concatenate(logits))
    print(f"wrote {out}: {len(texts)} texts, torch {torch.__version__}")


def compare(folder, texts, out, length):
    from kd_keras.models.teachers import load_hf_classifier

    stored = np.load(out)
    classifier, preprocessor, classes = load_hf_classifier(folder, sequence_length=length)
    inputs = preprocessor(texts)
    token_ids = np.asarray(inputs["token_ids"])
    same_ids = token_ids.shape == stored["token_ids"].shape and bool(
        (token_ids == stored["token_ids"]).all()
    )
    logits = np.concatenate(
        [
            np.asarray(classifier({k: v[i : i + 64] for k, v in inputs.items()}, training=False))
            for i in range(0, len(texts), 64)
        ]
    )
    difference = np.abs(logits - stored["logits"])
    agree = (logits.argmax(-1) == stored["logits"].argmax(-1)).mean()
    print(f"classes {classes}; {len(texts)} texts, padded to {length} tokens")
    print(f"token ids equal to the Hugging Face tokenizer's: {same_ids}")
    print(
        f"largest absolute logit difference: {difference.max():.2e} "
        f"(mean {difference.mean():.2e}); same predicted class: {100 * agree:.2f}%"
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=("reference", "compare"))
    parser.add_argument("folder")
    parser.add_argument("texts")
    parser.add_argument("out")
    parser.add_argument("--text", default="text")
    parser.add_argument("--limit", type=int, default=400)
    parser.add_argument("--sequence-length", type=int, default=128)
    args = parser.parse_args(argv)
    texts = _texts(args.texts, args.text, args.limit)
    step = reference if args.step == "reference" else compare
    step(args.folder, texts, args.out, args.sequence_length)


if __name__ == "__main__":
    main()
