"""Length bucketing (`kd_keras.batching`): plans, the tf.data batches, coverage."""

import numpy as np
import pytest
import tensorflow as tf

from kd_keras.batching import TRAIN_BUCKETS, BucketedBatches, bucket_by_length, length_batches


def test_length_batches_cover_every_row_once():
    lengths = np.array([5, 1, 9, 3, 3, 7, 2])
    batches = length_batches(lengths, 3)
    assert sorted(np.concatenate(batches).tolist()) == list(range(7))
    assert [lengths[b].tolist() for b in batches] == [[1, 2, 3], [3, 5, 7], [9]]
    assert [b.tolist() for b in length_batches(lengths, 3, bucketing=False)] == [
        [0, 1, 2],
        [3, 4, 5],
        [6],
    ]
    assert length_batches(np.array([], int), 3) == []
    with pytest.raises(ValueError):
        length_batches(lengths, 0)


def test_shuffled_plan_sorts_within_pools_and_shuffles_batches():
    rng = np.random.default_rng(7)
    lengths = rng.integers(1, 50, size=103)
    plan = length_batches(lengths, 4, rng=np.random.default_rng(0), pool_batches=5)
    assert sorted(np.concatenate(plan).tolist()) == list(range(103))
    # By hand: shuffle, sort each pool of 20 rows by length, cut, shuffle the batches.
    reference_rng = np.random.default_rng(0)
    order = reference_rng.permutation(103)
    batches = []
    for start in range(0, 103, 20):
        pool = order[start : start + 20]
        pool = pool[np.argsort(lengths[pool], kind="stable")]
        batches += [pool[i : i + 4] for i in range(0, len(pool), 4)]
    batches = [batches[i] for i in reference_rng.permutation(len(batches))]
    assert [b.tolist() for b in plan] == [b.tolist() for b in batches]
    # Each batch is sorted, so it pads to its own longest row.
    assert all(np.all(np.diff(lengths[b]) >= 0) for b in plan)


def test_bucketed_batches_serve_a_new_order_each_pass():
    lengths = np.arange(1, 41)
    batches = BucketedBatches(lambda rows, width: (rows, width), lengths, 8, seed=1)
    first = [rows.tolist() for rows, _ in batches]
    second = [rows.tolist() for rows, _ in batches]
    assert first != second
    assert sorted(sum(first, [])) == list(range(40)) == sorted(sum(second, []))
    assert all(width == lengths[rows].max() for rows, width in batches)
    assert len(batches) == 5
    in_order = BucketedBatches(lambda rows, width: rows, lengths, 8, shuffle=False)
    assert [r.tolist() for r in in_order][0] == list(range(8))


def test_bucket_by_length_groups_similar_lengths():
    lengths = np.array([3, 40, 4, 41, 5, 42, 3, 40], np.int32)
    ds = tf.data.Dataset.from_tensor_slices(lengths)
    batched = bucket_by_length(ds, lambda n: n, batch_size=2)
    groups = [sorted(b.numpy().tolist()) for b in batched]
    assert sorted(sum(groups, [])) == sorted(lengths.tolist())
    for group in groups:
        buckets = {int(np.searchsorted(TRAIN_BUCKETS, n, side="right")) for n in group}
        assert len(buckets) == 1  # never a short row beside a long one
