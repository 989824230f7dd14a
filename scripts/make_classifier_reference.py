"""Writes the tiny Hugging Face BERT classifier fixture and its reference logits.

Needs the `reference` extra (torch and transformers); the tests never do. It
builds a random `BertForSequenceClassification` (hidden 32, 2 layers, 3
labels "negative", "neutral", "positive") over a tiny WordPiece vocabulary,
spreads its weights so that its logits differ by whole units (and centres
the classes' logits over the sentences), saves it with
`save_pretrained` (`model.safetensors`, `config.json`, `vocab.txt`,
`tokenizer.json`, ...) plus the same state dict as `pytorch_model.bin`
(`torch.save`, the format of transformers 4), and writes the token ids and
the logits `transformers` gives on fixed sentences (one batch, padded) to
`reference.json` in the same folder.

Usage:

    python scripts/make_classifier_reference.py [--out tests/fixtures/hf_bert_classifier]
"""

import argparse
import json
import pathlib
import tempfile

import torch
import transformers
from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

SENTENCES = [
    "The film was great!",
    "a dull , boring movie .",
    "It is not bad, it is fine.",
    "Nothing happens; the plot is thin and the actors look tired.",
    "WONDERFUL acting, a real joy",
    "Café au lait?",
    "",
    "zzz qqq xyz 123",
]
WORDS = (
    "the an is it was not and of to film movie plot actor actors acting good great "
    "bad fine dull boring wonderful joy real thin tired look nothing happens"
).split()
LABELS = ("negative", "neutral", "positive")


def vocabulary():
    """Specials, punctuation, digits, letters, `##` letters and a few whole words."""
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    punctuation = list(".,;:!?'\"()-")
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    digits = [str(d) for d in range(10)]
    pieces = [f"##{x}" for x in letters + digits]
    tokens = specials + punctuation + digits + letters + pieces + WORDS
    assert len(set(tokens)) == len(tokens), "a token is listed twice"
    return tokens


def build(out):
    """Saves the model and tokenizer to `out`; returns them."""
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocabulary()),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        hidden_act="gelu",
        id2label=dict(enumerate(LABELS)),
        label2id={name: i for i, name in enumerate(LABELS)},
    )
    model = BertForSequenceClassification(config).eval()
    with torch.no_grad():  # BERT's initializer makes every output nearly equal
        for name, parameter in model.named_parameters():
            if "LayerNorm" not in name:
                parameter.normal_(0.0, 0.3)
    with tempfile.TemporaryDirectory() as tmp:
        vocab_file = pathlib.Path(tmp) / "vocab.txt"
        vocab_file.write_text("\n".join(vocabulary()) + "\n", encoding="utf-8")
        tokenizer = BertTokenizer(str(vocab_file), do_lower_case=True)
    # Centre each class's logit over the sentences, so that the predicted class varies.
    with torch.no_grad():
        logits = model(**tokenizer(SENTENCES, padding=True, return_tensors="pt")).logits
        model.classifier.bias -= logits.mean(dim=0)
    model.save_pretrained(out)
    torch.save(model.state_dict(), out / "pytorch_model.bin")
    tokenizer.save_pretrained(out)
    return model, tokenizer


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="tests/fixtures/hf_bert_classifier")
    out = pathlib.Path(parser.parse_args().out)
    out.mkdir(parents=True, exist_ok=True)
    model, tokenizer = build(out)
    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits.numpy()
    reference = {
        "made_by": "scripts/make_classifier_reference.py",
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "labels": list(LABELS),
        "sentences": SENTENCES,
        "token_ids": [
            [int(t) for t, m in zip(ids, mask, strict=True) if m]
            for ids, mask in zip(
                batch["input_ids"].tolist(), batch["attention_mask"].tolist(), strict=True
            )
        ],
        "logits": logits.tolist(),
    }
    (out / "reference.json").write_text(json.dumps(reference, indent=1) + "\n", encoding="utf-8")
    print(f"Wrote {out} ({sum(f.stat().st_size for f in out.iterdir()) / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
