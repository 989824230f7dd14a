"""Small causal LMs for token-level distillation: tokenizer, builders, checkpoints, data.

- `train_byte_bpe` learns a GPT-2 style byte-level BPE (vocabulary + merges)
  from a list of texts, in pure Python; `build_gpt2_tokenizer` turns it into a
  `keras_hub.models.GPT2Tokenizer`. `extend_vocabulary` appends tokens to a
  vocabulary, giving a teacher a larger vocabulary that shares the student's
  as a prefix (the case `truncate_teacher_vocab=True` of `kd_keras.losses`
  handles).
- `build_gpt2_causal_lm` builds a `keras_hub.models.GPT2CausalLM` of any size.
- `load_causal_lm` reads a local checkpoint directory, offline: a KerasHub
  preset (`save_to_preset`) or a Hugging Face directory (`config.json`,
  `model.safetensors`, tokenizer files) that KerasHub converts on load (GPT-2,
  Qwen, Llama, ... - whatever `keras_hub.models.CausalLM.from_preset`
  supports); `kd_keras.serving.save_causal_lm` writes one.
- `encode_instructions` turns instruction-tuning examples (`instruction`,
  `input`, `output`) into `token_ids`, `padding_mask` and next-token `labels`
  where prompt tokens and padding carry -100; `encode_corpus` packs plain
  text into fixed-length chunks; `masked_perplexity` evaluates a model on
  them.
"""

import collections
import heapq
import json
import pathlib
import re

import keras
import keras_hub
import numpy as np
import tensorflow as tf

__all__ = [
    "END_OF_TEXT",
    "IGNORE_INDEX",
    "PROMPT_TEMPLATE",
    "PROMPT_TEMPLATE_NO_INPUT",
    "build_gpt2_causal_lm",
    "build_gpt2_tokenizer",
    "bytes_to_unicode",
    "encode_corpus",
    "encode_instructions",
    "extend_vocabulary",
    "format_prompt",
    "load_causal_lm",
    "load_gpt2_tokenizer",
    "masked_perplexity",
    "read_instructions",
    "train_byte_bpe",
]

END_OF_TEXT = "<|endoftext|>"
IGNORE_INDEX = -100
PROMPT_TEMPLATE = "Instruction: {instruction}\nInput: {input}\nResponse:\n"
PROMPT_TEMPLATE_NO_INPUT = "Instruction: {instruction}\nResponse:\n"

# GPT-2's pre-tokenizer, with `re` classes for `\p{L}` and `\p{N}`.
_SPLIT = re.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?[^\W\d_]+| ?\d+| ?(?:[^\s\w]|_)+|\s+(?!\S)|\s+""")


# === Tokenizer ===


def bytes_to_unicode():
    """GPT-2's reversible map from the 256 byte values to printable characters.

    Returns:
        dict `{byte: str}`; printable Latin-1 bytes map to themselves, the
        others (space, control bytes) to characters from U+0100 on (a space
        is `"Ġ"`).
    """
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars), strict=True))


def train_byte_bpe(texts, vocabulary_size, special_tokens=(END_OF_TEXT,), min_frequency=2):
    """Learns a byte-level BPE, as GPT-2's tokenizer uses, from `texts`.

    Texts are split into words with GPT-2's pre-tokenizer (a leading space
    stays with its word), each word is written as byte characters
    (`bytes_to_unicode`), and the most frequent adjacent pair is merged until
    the vocabulary has `vocabulary_size` entries (ties go to the
    lexicographically smallest pair, so the result is deterministic).

    Args:
        texts: iterable of str.
        vocabulary_size: int. Total entries: 256 bytes + merges + specials.
        special_tokens: tokens appended after the merges (GPT-2 has
            `<|endoftext|>` last).
        min_frequency: int. Stop merging when the best pair is rarer.

    Returns:
        `(vocabulary, merges)`: dict `{token: id}` and a list of `"a b"`
        merge rules, in the format of GPT-2's `vocab.json` / `merges.txt`.
    """
    special_tokens = list(special_tokens)
    if vocabulary_size < 256 + len(special_tokens):
        raise ValueError(
            f"`vocabulary_size` must be at least {256 + len(special_tokens)} (256 bytes and "
            f"{len(special_tokens)} special tokens); received {vocabulary_size}."
        )
    byte_char = bytes_to_unicode()
    counts = collections.Counter()
    for text in texts:
        for word in _SPLIT.findall(text):
            counts["".join(byte_char[b] for b in word.encode("utf-8"))] += 1
    words = [list(w) for w in counts]
    freqs = [counts[w] for w in counts]
    pair_counts = collections.Counter()
    where = collections.defaultdict(set)
    for i, symbols in enumerate(words):
        for pair in zip(symbols, symbols[1:], strict=False):
            pair_counts[pair] += freqs[i]
            where[pair].add(i)
    heap = [(-c, p) for p, c in pair_counts.items()]
    heapq.heapify(heap)
    vocabulary = {byte_char[b]: i for i, b in enumerate(sorted(byte_char))}
    merges = []
    target = vocabulary_size - len(special_tokens)
    while len(vocabulary) < target and heap:
        negative, pair = heapq.heappop(heap)
        if pair_counts.get(pair, 0) != -negative:
            continue  # stale entry
        if -negative < min_frequency:
            break
        merged = pair[0] + pair[1]
        merges.append(f"{pair[0]} {pair[1]}")
        vocabulary.setdefault(merged, len(vocabulary))
        touched = set()
        for i in list(where[pair]):
            symbols = words[i]
            for p in zip(symbols, symbols[1:], strict=False):
                pair_counts[p] -= freqs[i]
                touched.add(p)
            out, j = [], 0
            while j < len(symbols):
                if j + 1 < len(symbols) and (symbols[j], symbols[j + 1]) == pair:
                    out.append(merged)
                    j += 2
                else:
                    out.append(symbols[j])
                    j += 1
            words[i] = out
            for p in zip(out, out[1:], strict=False):
                pair_counts[p] += freqs[i]
                where[p].add(i)
                touched.add(p)
        del pair_counts[pair]
        where.pop(pair, None)
        for p in touched:
            if pair_counts.get(p, 0) > 0:
                heapq.heappush(heap, (-pair_counts[p], p))
    for token in special_tokens:
        vocabulary.setdefault(token, len(vocabulary))
    return vocabulary, merges


def extend_vocabulary(vocabulary, tokens):
    """A copy of `vocabulary` with `tokens` appended (ids after the last one).

    A teacher built on the result has a larger vocabulary whose first
    entries are the student's: distill with `truncate_teacher_vocab=True`.

    Args:
        vocabulary: dict `{token: id}` with ids `0..V-1`.
        tokens: list of new str tokens.

    Returns:
        dict `{token: id}` of size `V + len(tokens)`.
    """
    out = dict(vocabulary)
    for token in tokens:
        if token in out:
            raise ValueError(f"Token {token!r} is already in the vocabulary.")
        out[token] = len(out)
    if sorted(out.values()) != list(range(len(out))):
        raise ValueError("Vocabulary ids must be 0..V-1 without gaps.")
    return out


def build_gpt2_tokenizer(vocabulary, merges, sequence_length=None):
    """A `keras_hub.models.GPT2Tokenizer` from a vocabulary and merges.

    Args:
        vocabulary: dict `{token: id}` (or a path to `vocab.json`); must hold
            `<|endoftext|>`.
        merges: list of `"a b"` rules (or a path to `merges.txt`).
        sequence_length: int or `None`; passed to the tokenizer.

    Returns:
        `keras_hub.models.GPT2Tokenizer`.
    """
    if isinstance(vocabulary, dict) and END_OF_TEXT not in vocabulary:
        raise ValueError(f"The vocabulary must contain {END_OF_TEXT!r}.")
    return keras_hub.models.GPT2Tokenizer(
        vocabulary=vocabulary, merges=merges, sequence_length=sequence_length
    )


def load_gpt2_tokenizer(directory):
    """Reads `vocab.json` and `merges.txt`: `(vocabulary, merges)`."""
    directory = pathlib.Path(directory)
    vocabulary = json.loads((directory / "vocab.json").read_text(encoding="utf-8"))
    lines = (directory / "merges.txt").read_text(encoding="utf-8").splitlines()
    merges = [line for line in lines if line and not line.startswith("#version")]
    return vocabulary, merges


# === Models ===


def build_gpt2_causal_lm(
    vocabulary_size,
    num_layers=2,
    hidden_dim=64,
    num_heads=2,
    intermediate_dim=None,
    max_sequence_length=128,
    dropout=0.1,
    tokenizer=None,
    sequence_length=None,
    seed=None,
    name=None,
):
    """A `keras_hub.models.GPT2CausalLM` of the given size, randomly initialized.

    Called on `{"token_ids": [B, S], "padding_mask": [B, S]}` it returns the
    next-token logits `[B, S, vocabulary_size]` (tied input/output
    embeddings, as GPT-2).

    Args:
        vocabulary_size: int. May exceed the tokenizer's (a teacher with
            extra tokens).
        num_layers, hidden_dim, num_heads: ints; `hidden_dim` must be a
            multiple of `num_heads`.
        intermediate_dim: int or `None` (`4 * hidden_dim`).
        max_sequence_length: int. Size of the position embedding.
        dropout: float.
        tokenizer: a `GPT2Tokenizer` or `None`. With one, the model carries a
            `GPT2CausalLMPreprocessor` (needed by `generate` and to save the
            tokenizer with the checkpoint).
        sequence_length: int or `None`: the preprocessor's length
            (default `max_sequence_length`).
        seed: int or `None`. Seeds the initial weights.
        name: str or `None`.

    Returns:
        `keras_hub.models.GPT2CausalLM`.
    """
    if hidden_dim % num_heads:
        raise ValueError(
            f"`hidden_dim` ({hidden_dim}) must be a multiple of `num_heads` ({num_heads})."
        )
    if seed is not None:
        keras.utils.set_random_seed(seed)
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=vocabulary_size,
        num_layers=num_layers,
        num_heads=num_heads,
        hidden_dim=hidden_dim,
        intermediate_dim=intermediate_dim or 4 * hidden_dim,
        dropout=dropout,
        max_sequence_length=max_sequence_length,
    )
    preprocessor = None
    if tokenizer is not None:
        preprocessor = keras_hub.models.GPT2CausalLMPreprocessor(
            tokenizer, sequence_length=sequence_length or max_sequence_length
        )
    kwargs = {} if name is None else {"name": name}
    return keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=preprocessor, **kwargs)


def load_causal_lm(directory, **kwargs):
    """Loads a causal LM from a local directory, offline.

    Either a KerasHub preset (`kd_keras.serving.save_causal_lm(..., format="keras")`) or a
    Hugging Face checkpoint directory (`config.json` with a `model_type`
    KerasHub converts, `model.safetensors`, tokenizer files), as
    `keras_hub.models.CausalLM.from_preset` reads them.

    Args:
        directory: str or path of an existing folder.
        **kwargs: passed to `from_preset` (e.g. `dtype`).

    Returns:
        A `keras_hub.models.CausalLM` (e.g. `GPT2CausalLM`, `QwenCausalLM`).
    """
    directory = pathlib.Path(directory)
    if not (directory / "config.json").is_file():
        raise FileNotFoundError(
            f"{directory}: no config.json; expected a KerasHub preset or a Hugging Face "
            "checkpoint directory."
        )
    return keras_hub.models.CausalLM.from_preset(str(directory), **kwargs)


# === Data ===


def read_instructions(path, limit=None):
    """Reads instruction-tuning JSON lines: dicts with `instruction`, `input`, `output`.

    Args:
        path: str. One JSON object per line (blank lines skipped).
        limit: int or `None`.

    Returns:
        list of dicts with str `instruction`, `input` (may be empty), `output`.
    """
    examples = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if limit is not None and len(examples) >= limit:
                break
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{number}: not valid JSON ({e.msg})") from None
            missing = [k for k in ("instruction", "output") if not isinstance(record.get(k), str)]
            if missing or not isinstance(record.get("input", ""), str):
                raise ValueError(
                    f"{path}:{number}: expected str fields 'instruction', 'input', 'output'; "
                    f"missing or not str: {missing or ['input']}"
                )
            examples.append(
                {
                    "instruction": record["instruction"],
                    "input": record.get("input", ""),
                    "output": record["output"],
                }
            )
    if not examples:
        raise ValueError(f"{path}: no examples found")
    return examples


def format_prompt(example):
    """The prompt text of an example (Alpaca-style, the response follows it)."""
    if example.get("input"):
        return PROMPT_TEMPLATE.format(instruction=example["instruction"], input=example["input"])
    return PROMPT_TEMPLATE_NO_INPUT.format(instruction=example["instruction"])


def _token_lists(tokenizer, texts):
    if not texts:
        return []
    ids = tokenizer(list(texts))
    if hasattr(ids, "to_list"):
        ids = ids.to_list()
    return [list(map(int, np.asarray(row).tolist())) for row in ids]


def encode_instructions(examples, tokenizer, sequence_length):
    """Token ids, padding mask and next-token labels of prompt/answer examples.

    Each example becomes `<|endoftext|> prompt output <|endoftext|>` (the
    first token starts the text, the last ends the answer), shifted into
    inputs `x = ids[:-1]` and targets `ids[1:]`. A target is kept only when
    it is a token of the answer (or its final `<|endoftext|>`): the labels of
    prompt tokens and of padding are `IGNORE_INDEX` (-100), so no loss sees
    them. Examples longer than `sequence_length + 1` tokens are skipped.

    Args:
        examples: list of dicts (`read_instructions`).
        tokenizer: a `GPT2Tokenizer` (or any callable from a list of str to
            lists of ids) whose vocabulary holds `<|endoftext|>`.
        sequence_length: int. Length of the rows.

    Returns:
        `(inputs, labels, skipped)`: `inputs` a dict of int32 arrays
        `token_ids` and `padding_mask` `[N, sequence_length]`, `labels` int32
        `[N, sequence_length]`, and the number of skipped examples.
    """
    eos = int(tokenizer.token_to_id(END_OF_TEXT))
    prompts = _token_lists(tokenizer, [format_prompt(e) for e in examples])
    answers = _token_lists(tokenizer, [e["output"] for e in examples])
    rows, skipped = [], 0
    for prompt, answer in zip(prompts, answers, strict=True):
        ids = [eos] + prompt + answer + [eos]
        if len(ids) - 1 > sequence_length:
            skipped += 1
            continue
        rows.append((ids, 1 + len(prompt)))
    n = len(rows)
    token_ids = np.full((n, sequence_length), eos, np.int32)
    padding_mask = np.zeros((n, sequence_length), np.int32)
    labels = np.full((n, sequence_length), IGNORE_INDEX, np.int32)
    for i, (ids, answer_start) in enumerate(rows):
        length = len(ids) - 1
        token_ids[i, :length] = ids[:-1]
        padding_mask[i, :length] = 1
        # Target j is ids[j + 1]; keep it when ids[j + 1] is in the answer.
        labels[i, answer_start - 1 : length] = ids[answer_start:]
    return {"token_ids": token_ids, "padding_mask": padding_mask}, labels, skipped


def encode_corpus(texts, tokenizer, sequence_length):
    """Plain text packed into rows for language modelling (every token is a target).

    Texts are joined with `<|endoftext|>` and cut into rows of
    `sequence_length + 1` tokens (the last partial row is dropped).

    Returns:
        `(inputs, labels)` as `encode_instructions` returns them, no -100.
    """
    eos = int(tokenizer.token_to_id(END_OF_TEXT))
    stream = []
    for ids in _token_lists(tokenizer, texts):
        stream.extend(ids + [eos])
    n = len(stream) // (sequence_length + 1)
    if n == 0:
        raise ValueError(f"The corpus has fewer than {sequence_length + 1} tokens.")
    chunks = np.asarray(stream[: n * (sequence_length + 1)], np.int32)
    chunks = chunks.reshape(n, sequence_length + 1)
    inputs = {"token_ids": chunks[:, :-1], "padding_mask": np.ones((n, sequence_length), np.int32)}
    return inputs, chunks[:, 1:].copy()


def masked_perplexity(model, inputs, labels, batch_size=64):
    """Perplexity over the positions whose label is not -100.

    `exp(sum of -log p(label) over kept positions / their number)`, with
    `p = softmax(logits)` over the model's whole vocabulary.

    Args:
        model: callable on `inputs` returning logits `[B, S, V]`.
        inputs: dict of arrays `[N, S]`.
        labels: int array `[N, S]`, -100 where ignored.
        batch_size: int.

    Returns:
        dict with `perplexity`, `nll` (mean negative log-likelihood, nats)
        and `tokens` (the number of kept positions).
    """
    total, count = 0.0, 0
    n = len(labels)
    for start in range(0, n, batch_size):
        batch = {k: v[start : start + batch_size] for k, v in inputs.items()}
        y = labels[start : start + batch_size]
        logits = tf.cast(model(batch, training=False), tf.float32)
        log_probs = tf.nn.log_softmax(logits, axis=-1).numpy()
        keep = y != IGNORE_INDEX
        picked = np.take_along_axis(log_probs, np.where(keep, y, 0)[..., None], axis=-1)[..., 0]
        total += float(-picked[keep].sum())
        count += int(keep.sum())
    if count == 0:
        raise ValueError("No position to evaluate: every label is -100.")
    nll = total / count
    return {"perplexity": float(np.exp(nll)), "nll": nll, "tokens": count}
