"""`kd_keras.transfer`: transfer sets, whole or in two parts."""

import numpy as np
import pytest

from kd_keras.transfer import augment_sentence, build_transfer_set, transfer_parts

A = ["a cat sat", "the dog ran", "a red tree", "the cat sat"]
B = ["a cat sits", "a dog runs", "the red tree", "one cat"]
SCORES = [4.0, 3.5, 5.0, 2.0]
UNLABELED = ["big small", "under the mat", "", "a cat sat", "on a mat", "big small"]


def test_augment_sentence_masks_words_and_keeps_an_ngram():
    rng = np.random.default_rng(0)
    sentence = "one two three four five six seven eight"
    masked = augment_sentence(sentence, rng, p_mask=1.0, p_ngram=0.0)
    assert masked == " ".join(["[MASK]"] * 8)
    kept = augment_sentence(sentence, rng, p_mask=0.0, p_ngram=1.0, max_ngram=3)
    assert 1 <= len(kept.split()) <= 3 and kept in sentence


def test_transfer_set_pairs_gold_then_extras_then_repairs():
    t = build_transfer_set(A, B, SCORES, unlabeled=UNLABELED, repaired_pairs=3, seed=1)
    sentence = np.asarray(t.sentences)
    assert list(zip(sentence[t.first[:4]], sentence[t.second[:4]], strict=True)) == list(
        zip(A, B, strict=True)
    )
    np.testing.assert_array_equal(t.gold[:4], SCORES)
    # Blank, duplicate and gold sentences are not extras: 3 extras make one pair.
    extras = set(sentence[t.first[4:5]]) | set(sentence[t.second[4:5]])
    assert extras <= {"big small", "under the mat", "on a mat"}
    assert len(t) == 4 + 1 + 3 and np.isnan(t.gold[4:]).all()
    gold_sentences = set(A) | set(B)
    assert set(sentence[t.first[5:]]) | set(sentence[t.second[5:]]) <= gold_sentences
    assert len(build_transfer_set(A, B, SCORES, unlabeled=UNLABELED, max_pairs=2)) == 2


@pytest.mark.parametrize("augment", [0, 2])
def test_transfer_parts_are_the_same_draws_as_the_whole_set(augment):
    kwargs = dict(unlabeled=UNLABELED, augment_per_sentence=augment, repaired_pairs=3, seed=4)
    whole = build_transfer_set(A, B, SCORES, **kwargs)
    pairs, free = transfer_parts(A, B, SCORES, **kwargs)
    w, p = np.asarray(whole.sentences), np.asarray(pairs.sentences)
    n_free = len(free) // 2
    # The whole set's extra pairs are the free sentences two by two, in order ...
    assert [
        (a, b)
        for a, b in zip(
            w[whole.first[4 : 4 + n_free]], w[whole.second[4 : 4 + n_free]], strict=True
        )
    ] == list(zip(free[0 : 2 * n_free : 2], free[1 : 2 * n_free : 2], strict=True))
    # ... and the in-memory part is its gold pairs and re-pairings.
    keep = np.r_[0:4, 4 + n_free : len(whole)]
    assert list(w[whole.first[keep]]) == list(p[pairs.first])
    assert list(w[whole.second[keep]]) == list(p[pairs.second])
    np.testing.assert_array_equal(whole.gold[keep], pairs.gold)
    assert not set(free) & set(pairs.sentences)
    assert len(set(free)) == len(free) and "" not in free


def test_gold_pairs_of_different_lengths_are_refused():
    with pytest.raises(ValueError, match="disagree in length"):
        transfer_parts(A, B[:3], SCORES)


def test_chinese_is_augmented_character_by_character():
    rng = np.random.default_rng(1)
    sentence = "一架飞机要起飞了。"
    masked = augment_sentence(sentence, rng, p_mask=1.0, p_ngram=0.0)
    assert masked == "[MASK]" * len(sentence)
    for _ in range(20):
        kept = augment_sentence(sentence, rng, p_mask=0.0, p_ngram=1.0, max_ngram=2)
        assert 1 <= len(kept) <= 4 and kept in sentence
    # Text with spaces keeps whole words, ideographs or not.
    assert augment_sentence("我 爱 你", rng, p_mask=1.0, p_ngram=0.0) == "[MASK] [MASK] [MASK]"
