"""Training data of the sentence-pair recipe: length-bucketed pairs with the teacher's outputs.

Two sources, mixed pair by pair in proportion to their sizes:

- pairs held in memory (the gold pairs and their re-pairings), gathered from
  a small table of the teacher's embeddings;
- the big part of the transfer set, labeled into shards (`kd_keras.labels`)
  and streamed from them (`labels_dataset`: a few shards in memory at a
  time, a shuffle buffer), two consecutive sentences making a pair, so every
  pass pairs them anew.

Then batches of pairs of similar length (`kd_keras.batching.bucket_by_length`,
on the longer sentence of the pair), each padded to its own longest row.
"""

import keras
import numpy as np
import tensorflow as tf

from kd_keras.batching import bucket_by_length
from kd_keras.labels import labels_dataset
from kd_keras.recipes.sentence_pairs.objectives import teacher_pair_outputs

__all__ = ["SHUFFLE_BUFFER", "StepHistory", "pair_datasets"]

# Streamed sentences shuffled together (about 2 KB each with a 384-wide embedding).
SHUFFLE_BUFFER = 16384


def _student_inputs_fn(encoder):
    """Maps packed BERT inputs to what the encoder takes (ids alone or the dict)."""
    if keras.tree.is_nested(encoder.input):
        return lambda packed: packed
    return lambda packed: packed["token_ids"]


def _packer(preprocessor, length):
    """`fn(sentences) -> dict of ragged rows`: tokenized and packed, not padded."""

    def pack(sentences):
        pieces = preprocessor.tokenize(sentences)
        packed = preprocessor.pack(pieces, sequence_length=length)
        mask = tf.cast(packed["padding_mask"], tf.bool)
        return {k: tf.ragged.boolean_mask(v, mask) for k, v in packed.items()}

    return pack


def _memory_pairs(pack, sentences, table, first, second, gold):
    """Unbatched pair elements `(ids_a, ids_b, teacher_a, teacher_b, gold)` from a table."""
    ids = pack(sentences)
    table = tf.constant(np.asarray(table, np.float32))
    ds = tf.data.Dataset.from_tensor_slices(
        (first.astype(np.int64), second.astype(np.int64), gold.astype(np.float32))
    )

    def element(i, j, y):
        rows_a = {k: v[i] for k, v in ids.items()}
        rows_b = {k: v[j] for k, v in ids.items()}
        return rows_a, rows_b, table[i], table[j], y

    return ds, element


def _streamed_pairs(pack, labels, seed):
    """Unbatched pair elements from labels folders; `(dataset, pairs per pass)`."""
    ds, rows = labels_dataset(labels, pack, shuffle=True, seed=seed)
    ds = ds.shuffle(SHUFFLE_BUFFER, seed=seed, reshuffle_each_iteration=True)

    def element(ids, embeddings):
        rows_a = {k: v[0] for k, v in ids.items()}
        rows_b = {k: v[1] for k, v in ids.items()}
        return rows_a, rows_b, embeddings[0], embeddings[1], tf.constant(np.nan, tf.float32)

    pairs = ds.ragged_batch(2, drop_remainder=True).map(element)
    return pairs, rows // 2


def _to_batches(ds, c, encoder):
    to_student = _student_inputs_fn(encoder)

    def batch(a, b, ea, eb, y):
        x = {
            "student": {"sentence_a": to_student(a), "sentence_b": to_student(b)},
            "teacher_outputs": teacher_pair_outputs(
                ea, eb, scale=c.similarity_scale, threshold=c.similarity_threshold
            ),
        }
        return x, y

    return ds.map(batch, num_parallel_calls=tf.data.AUTOTUNE)


def pair_datasets(c, pairs, tables, preprocessor, encoder, dev, labels=()):
    """`(train, validation, steps per epoch)` `tf.data` pipelines for the `Distiller`.

    Each batch is `({"student": {"sentence_a": ids, "sentence_b": ids},
    "teacher_outputs": teacher_pair_outputs(...)}, gold)`, every sentence
    padded to the longest of its side of the batch. Training batches are
    shuffled and length-bucketed, endless (`steps` make one pass over the
    data); gold is NaN for the streamed pairs.

    Args:
        c: the `DistillConfig`.
        pairs: the `TransferSet` held in memory.
        tables: `(embeddings of pairs.sentences, dev embeddings)` of the teacher.
        preprocessor: the student's `BertPreprocessor`.
        encoder: the student's sentence encoder.
        dev: `(sentences_a, sentences_b, scores)`.
        labels: labels folders (`kd_keras.labels`) streamed as unlabeled pairs.
    """
    pack = _packer(preprocessor, c.sequence_length)
    table, dev_table = tables
    memory, element = _memory_pairs(
        pack, pairs.sentences, table, pairs.first, pairs.second, pairs.gold
    )
    memory = memory.shuffle(len(pairs), seed=c.seed, reshuffle_each_iteration=True)
    train, total = memory.map(element).repeat(), len(pairs)
    if labels:
        streamed, count = _streamed_pairs(pack, list(labels), c.seed)
        weights = [len(pairs) / (len(pairs) + count), count / (len(pairs) + count)]
        train = tf.data.Dataset.sample_from_datasets(
            [train, streamed.repeat()], weights, seed=c.seed, stop_on_empty_dataset=False
        )
        total += count
    train = bucket_by_length(
        train,
        lambda a, b, *_: tf.cast(
            tf.maximum(tf.size(a["token_ids"]), tf.size(b["token_ids"])), tf.int32
        ),
        c.batch_size,
    )

    dev_a, dev_b, dev_scores = dev
    n = len(dev_a)
    val, element = _memory_pairs(
        pack,
        list(dev_a) + list(dev_b),
        dev_table,
        np.arange(n),
        np.arange(n, 2 * n),
        np.asarray(dev_scores),
    )
    val = val.map(element).padded_batch(c.batch_size)
    steps = -(-total // c.batch_size)
    return (
        _to_batches(train, c, encoder).prefetch(2),
        _to_batches(val, c, encoder).prefetch(2),
        steps,
    )


class StepHistory:
    """Records the mean training loss of every `every` steps, for the curves plot.

    Keras logs the running mean of the epoch so far; the loss of batch `k` is
    recovered as `k * mean_k - (k - 1) * mean_(k-1)`.
    """

    def __init__(self, every=10):
        history = self

        class Callback(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                history.previous_mean = 0.0

            def on_train_batch_end(self, batch, logs=None):
                if not logs or "loss" not in logs:
                    return
                mean = float(logs["loss"])
                history.window.append((batch + 1) * mean - batch * history.previous_mean)
                history.previous_mean = mean
                history.step += 1
                if len(history.window) == every:
                    history.points.append((history.step, sum(history.window) / every))
                    history.window = []

        self.step = 0
        self.previous_mean = 0.0
        self.window = []
        self.points = []
        self.callback = Callback()

    def get_state(self):
        """The curve so far, saved with each checkpoint (`ResumableBackup`)."""
        return {"step": self.step, "window": self.window, "points": self.points}

    def set_state(self, state):
        self.step, self.window = state["step"], list(state["window"])
        self.points = [tuple(p) for p in state["points"]]
