"""Transfer sets: the sentences and pairs a teacher labels for its student.

A gold set such as STS-B train (5,749 pairs) is small; the teacher can label
far more. Following Tang et al. 2019 ("Distilling Task-Specific Knowledge from
BERT into Simple Neural Networks"), the transfer set adds unlabeled sentences
and synthetic ones made by token masking and n-gram sampling, and new pairs
made by randomly re-pairing sentences.

Held-out sentences: the last `HELDOUT_SENTENCES` (500) sentences of each file
of a shipped transfer corpus (a file in a folder named `transfer-en` or
`transfer-zh`, `HELDOUT_FOLDERS`; the last half of a file of fewer than 1,000
sentences) are never sampled for
training (`split_heldout`); `kd-keras distill` measures the student's
fidelity to the teacher on them (`heldout_sentences`).
"""

import dataclasses
import os
import re

import numpy as np

from kd_keras.data import read_sentences

__all__ = [
    "HELDOUT_FOLDERS",
    "HELDOUT_SENTENCES",
    "TransferSet",
    "augment_sentence",
    "augment_sentences",
    "build_transfer_set",
    "heldout_sentences",
    "is_heldout_source",
    "split_heldout",
    "transfer_parts",
]

# The shipped transfer corpora, English and Chinese: every file in a folder of
# one of these names keeps a held-out tail (`split_heldout`).
HELDOUT_FOLDERS = ("transfer-en", "transfer-zh")
HELDOUT_SENTENCES = 500


_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")


def augment_sentence(sentence, rng, p_mask=0.1, p_ngram=0.25, max_ngram=5, mask_token="[MASK]"):
    """One synthetic sentence, as in Tang et al. 2019 (without POS replacement).

    Each whitespace word is replaced by `mask_token` with probability
    `p_mask`; then, with probability `p_ngram`, only a random n-gram of the
    result is kept, `n` drawn uniformly from 1 to `max_ngram`. Text with
    Chinese, Japanese or Korean ideographs and no spaces (Chinese is not
    written with them) is cut into characters instead, as a BERT tokenizer
    does, and joined back without spaces; an n-gram is then up to
    `2 * max_ngram` characters.

    Args:
        sentence: str.
        rng: `np.random.Generator`.
        p_mask: float. Probability of masking each word.
        p_ngram: float. Probability of n-gram sampling.
        max_ngram: int. Longest n-gram.
        mask_token: str. The teacher's mask token (kept whole by the BERT
            tokenizers of this project).

    Returns:
        str; never empty for a non-empty input.
    """
    characters = " " not in sentence.strip() and bool(_CJK.search(sentence))
    words = list(sentence.strip()) if characters else sentence.split()
    if not words:
        return sentence
    masked = rng.random(len(words)) < p_mask
    words = [mask_token if m else w for w, m in zip(words, masked, strict=True)]
    if rng.random() < p_ngram:
        n = int(rng.integers(1, (2 if characters else 1) * max_ngram + 1))
        if n < len(words):
            start = int(rng.integers(0, len(words) - n + 1))
            words = words[start : start + n]
    return ("" if characters else " ").join(words)


def augment_sentences(sentences, per_sentence, seed=0, **kwargs):
    """`per_sentence` synthetic variants of each sentence, new ones only.

    Args:
        sentences: list of str.
        per_sentence: int. Draws per sentence (duplicates and unchanged
            copies are dropped, so fewer may come back).
        seed: int.
        **kwargs: passed to `augment_sentence`.

    Returns:
        list of str, in draw order, none equal to an input sentence.
    """
    rng = np.random.default_rng(seed)
    seen = set(sentences)
    out = []
    for _ in range(per_sentence):
        for sentence in sentences:
            new = augment_sentence(sentence, rng, **kwargs)
            if new and new not in seen:
                seen.add(new)
                out.append(new)
    return out


@dataclasses.dataclass
class TransferSet:
    """Unique sentences and pairs of indices into them.

    Attributes:
        sentences: list of str, each once.
        first, second: int64 arrays `[P]`, the pairs' sentence indices.
        gold: float32 array `[P]`, the gold score of a pair or NaN where the
            pair is unlabeled.
    """

    sentences: list
    first: np.ndarray
    second: np.ndarray
    gold: np.ndarray

    def __len__(self):
        return len(self.first)

    @property
    def labeled(self):
        """Boolean mask of the pairs with a gold score."""
        return ~np.isnan(self.gold)


def _collect(
    sentences_a,
    sentences_b,
    scores,
    unlabeled,
    augment_per_sentence,
    repaired_pairs,
    seed,
    augment_kwargs,
):
    """The parts of a transfer set: `(sentence index, gold pairs, shuffled extra ids, re-pairs)`."""
    if not len(sentences_a) == len(sentences_b) == len(scores):
        raise ValueError(
            f"Gold pairs disagree in length: {len(sentences_a)} first sentences, "
            f"{len(sentences_b)} second sentences, {len(scores)} scores."
        )
    rng = np.random.default_rng(seed)
    index = {}

    def idx(sentence):
        return index.setdefault(sentence, len(index))

    gold_pairs = ([idx(s) for s in sentences_a], [idx(s) for s in sentences_b])
    extra = [s for s in dict.fromkeys(unlabeled) if s.strip() and s not in index]
    originals = list(index) + extra
    if augment_per_sentence:
        extra += augment_sentences(originals, augment_per_sentence, seed=seed, **augment_kwargs)
    extra_ids = np.asarray([idx(s) for s in extra], dtype=np.int64)
    rng.shuffle(extra_ids)
    n_gold = len(index) - len(extra)  # sentences of the gold pairs come first
    repairs = (
        rng.integers(0, n_gold, size=repaired_pairs),
        rng.integers(0, n_gold, size=repaired_pairs),
    )
    return index, gold_pairs, extra_ids, repairs


def _transfer_set(index, first, second, gold):
    """A `TransferSet` keeping only the sentences some pair uses, in first-use order."""
    first = np.asarray(first, np.int64)
    second = np.asarray(second, np.int64)
    used = np.unique(np.concatenate([first, second]))
    remap = np.full(len(index), -1, np.int64)
    remap[used] = np.arange(len(used))
    sentences = list(index)
    return TransferSet(
        sentences=[sentences[i] for i in used],
        first=remap[first],
        second=remap[second],
        gold=np.asarray(gold, np.float32),
    )


def build_transfer_set(
    sentences_a,
    sentences_b,
    scores,
    unlabeled=(),
    augment_per_sentence=0,
    repaired_pairs=0,
    max_pairs=None,
    seed=0,
    **augment_kwargs,
):
    """The gold pairs plus unlabeled, augmented and re-paired ones.

    Pairs, in order: every gold pair (labeled); the unlabeled and augmented
    sentences, shuffled and paired two by two (unlabeled; each such sentence
    appears once); `repaired_pairs` random pairs over the gold pairs'
    sentences (unlabeled). `max_pairs` then keeps the gold pairs first.

    Args:
        sentences_a, sentences_b: lists of str, the gold pairs.
        scores: array of gold scores.
        unlabeled: iterable of extra str sentences (e.g. those the recipe samples from
            a transfer corpus).
        augment_per_sentence: int. Synthetic variants per gold and unlabeled
            sentence (`augment_sentences`).
        repaired_pairs: int. Random re-pairings to add.
        max_pairs: int or `None`. Cap on the number of pairs.
        seed: int.
        **augment_kwargs: passed to `augment_sentence`.

    Returns:
        `TransferSet`.
    """
    index, (first, second), extra_ids, repairs = _collect(
        sentences_a,
        sentences_b,
        scores,
        unlabeled,
        augment_per_sentence,
        repaired_pairs,
        seed,
        augment_kwargs,
    )
    gold = [float(s) for s in scores]
    n_extra = len(extra_ids) // 2
    first = first + extra_ids[0 : 2 * n_extra : 2].tolist() + repairs[0].tolist()
    second = second + extra_ids[1 : 2 * n_extra : 2].tolist() + repairs[1].tolist()
    gold += [np.nan] * (n_extra + len(repairs[0]))
    if max_pairs is not None and len(first) > max_pairs:
        first, second, gold = first[:max_pairs], second[:max_pairs], gold[:max_pairs]
    return _transfer_set(index, first, second, gold)


def transfer_parts(
    sentences_a,
    sentences_b,
    scores,
    unlabeled=(),
    augment_per_sentence=0,
    repaired_pairs=0,
    seed=0,
    **augment_kwargs,
):
    """`build_transfer_set` in two parts, for a corpus too big to hold its teacher outputs.

    The same sentences and the same random draws as `build_transfer_set`, but
    the unlabeled and augmented sentences come back as a list (shuffled)
    instead of as fixed pairs, so that they can be labeled into shards
    (`kd_keras.labels`) and paired as they stream
    (`kd_keras.recipes.sentence_pairs.training`).

    Returns:
        `(pairs, free)`: a `TransferSet` of the gold pairs and the
        re-pairings, and the list of the other sentences, shuffled.
    """
    index, (first, second), extra_ids, repairs = _collect(
        sentences_a,
        sentences_b,
        scores,
        unlabeled,
        augment_per_sentence,
        repaired_pairs,
        seed,
        augment_kwargs,
    )
    gold = [float(s) for s in scores] + [np.nan] * len(repairs[0])
    pairs = _transfer_set(index, first + repairs[0].tolist(), second + repairs[1].tolist(), gold)
    sentences = list(index)
    return pairs, [sentences[i] for i in extra_ids]


# === Held-out sentences of the transfer corpus ===


def is_heldout_source(path):
    """Whether `path` is a file of a shipped transfer corpus: in a folder named as one of
    `HELDOUT_FOLDERS` (`transfer-en`, `transfer-zh`)."""
    return os.path.basename(os.path.dirname(os.path.abspath(str(path)))) in HELDOUT_FOLDERS


def split_heldout(path, sentences):
    """`(for training, held out)`: a transfer corpus file's sentences without and with its tail.

    The held-out tail is the last `HELDOUT_SENTENCES` sentences (non-empty
    lines, as `kd_keras.data.read_sentences` gives them) of a file of the
    transfer corpus (`is_heldout_source`), or its last half when it has
    fewer than twice as many; any other file keeps all its sentences for
    training.

    Args:
        path: the file the sentences were read from.
        sentences: list of str, all of the file's, in file order.
    """
    sentences = list(sentences)
    if not is_heldout_source(path):
        return sentences, []
    cut = len(sentences) - min(HELDOUT_SENTENCES, len(sentences) // 2)
    return sentences[:cut], sentences[cut:]


def heldout_sentences(path):
    """The held-out tail of a transfer corpus file (`split_heldout`); the whole file is read."""
    return split_heldout(path, read_sentences(path))[1]
