"""Builds two small labeled sets "of a user's own" from the shipped transfer-en corpus.

They exercise the recipes on data that is neither STS-B nor SST-2, in the
formats a user brings:

- `pairs-{train,dev,test}.tsv` (header `sentence1<TAB>sentence2<TAB>score`):
  sentence pairs labeled 1 when both come from the same source (topic) and 0
  otherwise, for `kd-keras distill --train ... --max-score 1`;
- `topics-{train,dev,test}.csv` (header `text,label`): sentences labeled with
  the name of their source's domain (four string classes), for
  `kd-keras distill-classifier --train ... --text text --label label`.

Sentences are drawn (seeded) from the end of each source file, and each
sentence is used once across all splits and both sets. Usage:

    python scripts/make_user_sets.py OUT_DIR [--seed 0]
"""

import argparse
import csv
import gzip
import pathlib
import random

ROOT = pathlib.Path(__file__).resolve().parents[1]
CORPUS = ROOT / "data" / "transfer-en"

PAIR_SOURCES = ("medquad", "polyai", "coco_captions", "scitldr", "nltk_liu_reviews", "sgd")
TOPICS = {
    "movie_review": "nltk_pang_lee",
    "product_review": "nltk_liu_reviews",
    "chit_chat": "topical_chat",
    "encyclopedia": "wikisplit",
}
PAIR_SIZES = {"train": 2000, "dev": 500, "test": 500}
TOPIC_SIZES = {"train": 2000, "dev": 400, "test": 400}


def _tail(source, count):
    """The last `count` sentences of a source file (first tab-separated field)."""
    with gzip.open(CORPUS / f"{source}.txt.gz", "rt", encoding="utf-8") as f:
        lines = [line.rstrip("\n").split("\t")[0] for line in f if line.strip()]
    return lines[-count:]


def _pairs(pool, size, rng):
    rows = []
    for i in range(size):
        same = i % 2 == 0
        a_source = rng.choice(PAIR_SOURCES)
        b_source = a_source if same else rng.choice([s for s in PAIR_SOURCES if s != a_source])
        rows.append((pool[a_source].pop(), pool[b_source].pop(), 1 if same else 0))
    rng.shuffle(rows)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=pathlib.Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)

    need = 2 * sum(PAIR_SIZES.values()) + len(TOPICS) * sum(TOPIC_SIZES.values())
    pool = {s: _tail(s, need) for s in {*PAIR_SOURCES, *TOPICS.values()}}
    for sentences in pool.values():
        rng.shuffle(sentences)

    for split, size in PAIR_SIZES.items():
        with open(args.out / f"pairs-{split}.tsv", "w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f, delimiter="\t")
            writer.writerow(("sentence1", "sentence2", "score"))
            writer.writerows(_pairs(pool, size, rng))
    for split, size in TOPIC_SIZES.items():
        rows = [
            (pool[source].pop(), label) for label, source in TOPICS.items() for _ in range(size)
        ]
        rng.shuffle(rows)
        with open(args.out / f"topics-{split}.csv", "w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(("text", "label"))
            writer.writerows(rows)
    print(f"wrote pairs-*.tsv and topics-*.csv to {args.out}")


if __name__ == "__main__":
    main()
