"""Length bucketing: batches of rows of similar length, each padded to its own longest.

A BiLSTM steps through every padded position and a transformer attends over
them, so batches cut from rows of similar length cost far less than random
ones. Two forms, one idea:

- `length_batches` plans batches of row indices up front: sorted by length
  for a teacher pass (deterministic, no shuffling), or shuffled, sorted
  within pools and shuffled again for training (`BucketedBatches` serves such
  a plan as a `tf.data.Dataset`, a new order on every pass);
- `bucket_by_length` groups a streaming `tf.data.Dataset` by length
  (`tf.data`'s `bucket_by_sequence_length` with `TRAIN_BUCKETS`), for
  training data that is never held as a whole.
"""

import numpy as np
import tensorflow as tf

__all__ = ["TRAIN_BUCKETS", "BucketedBatches", "bucket_by_length", "length_batches"]

# Upper bounds (exclusive) of the training batches' length buckets, in tokens.
TRAIN_BUCKETS = [*range(6, 34, 2), 36, 40, 48, 56]


def length_batches(lengths, batch_size, bucketing=True, rng=None, pool_batches=None):
    """Splits row indices into batches of similar length.

    Without `rng`: rows sorted by length (stable) when `bucketing`, else in
    input order, then cut. With `rng` (training): rows shuffled, sorted by
    length within pools of `pool_batches` batches (the whole set when
    `None`), cut, and the batches shuffled.

    Args:
        lengths: int array of row lengths.
        batch_size: int. Rows per batch (the last batch of a pool may be smaller).
        bucketing: bool. Sort by length; `False` keeps the (shuffled) order.
        rng: `np.random.Generator` or `None`.
        pool_batches: int or `None`. Batches per sorting pool.

    Returns:
        list of int arrays of row indices.
    """
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be positive; received {batch_size}.")
    lengths = np.asarray(lengths)
    n = len(lengths)
    order = np.arange(n) if rng is None else rng.permutation(n)
    pool = n if pool_batches is None else batch_size * int(pool_batches)
    batches = []
    for start in range(0, n, max(pool, 1)):
        chunk = order[start : start + pool]
        if bucketing:
            chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    if rng is not None:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


class BucketedBatches:
    """Training batches of rows of similar length, each cut to its longest row.

    A new `length_batches` plan (shuffled, sorted within pools of 50 batches,
    shuffled again) on every pass; `shuffle=False` keeps the input order.
    `dataset(signature)` serves the batches as a `tf.data.Dataset`, whose
    batch widths may differ (which `keras.utils.PyDataset` does not allow).

    Args:
        make_batch: `fn(indices, width) -> batch` (for example `(x, y)`).
        lengths: int array, the length of each row.
        batch_size: int.
        shuffle: bool.
        seed: int.
    """

    def __init__(self, make_batch, lengths, batch_size, shuffle=True, seed=0):
        self.make_batch = make_batch
        self.lengths = np.asarray(lengths)
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.rng = np.random.default_rng(seed)

    def __len__(self):
        return -(-len(self.lengths) // self.batch_size)

    def __iter__(self):
        plan = length_batches(
            self.lengths,
            self.batch_size,
            bucketing=self.shuffle,
            rng=self.rng if self.shuffle else None,
            pool_batches=50,
        )
        for rows in plan:
            yield self.make_batch(rows, int(self.lengths[rows].max()))

    def dataset(self, output_signature):
        """A `tf.data.Dataset` of the batches (a new order on each pass)."""
        dataset = tf.data.Dataset.from_generator(
            lambda: iter(self), output_signature=output_signature
        )
        return dataset.apply(tf.data.experimental.assert_cardinality(len(self)))


def bucket_by_length(dataset, length_fn, batch_size, boundaries=TRAIN_BUCKETS):
    """Batches a `tf.data.Dataset` by the length `length_fn(*element)` of each element.

    Each element goes to the bucket of its length (`boundaries` are the
    buckets' exclusive upper bounds), and a batch is cut from one bucket, so
    it pads to about its own rows' length.

    Args:
        dataset: `tf.data.Dataset` of unbatched elements.
        length_fn: `fn(*element) -> int32 scalar tensor`.
        batch_size: int. Elements per batch in every bucket.
        boundaries: list of int.

    Returns:
        The batched `tf.data.Dataset`.
    """
    return dataset.bucket_by_sequence_length(
        length_fn,
        bucket_boundaries=list(boundaries),
        bucket_batch_sizes=[batch_size] * (len(boundaries) + 1),
    )
