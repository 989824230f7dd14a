"""Training data of the sentence-pair recipe: length-bucketed pairs with the teacher's outputs."""

import keras
import numpy as np
import tensorflow as tf

from kd_keras.batching import bucket_by_length
from kd_keras.recipes.sentence_pairs.objectives import teacher_pair_outputs

__all__ = ["StepHistory", "pair_datasets"]


def _student_inputs_fn(encoder):
    """Maps packed BERT inputs to what the encoder takes (ids alone or the dict)."""
    if keras.tree.is_nested(encoder.input):
        return lambda packed: packed
    return lambda packed: packed["token_ids"]


def _ragged_ids(preprocessor, sentences, length):
    """Every sentence tokenized and packed, rows kept ragged (no padding yet)."""
    pieces = preprocessor.tokenize(sentences)
    packed = preprocessor.pack(pieces, sequence_length=length)
    mask = tf.cast(packed["padding_mask"], tf.bool)
    return {k: tf.ragged.boolean_mask(v, mask) for k, v in packed.items()}


def _pairs_dataset(c, sentences, table, first, second, gold, preprocessor, encoder, shuffle):
    to_student = _student_inputs_fn(encoder)
    ids = _ragged_ids(preprocessor, sentences, c.sequence_length)
    table = tf.constant(np.asarray(table, np.float32))
    ds = tf.data.Dataset.from_tensor_slices(
        (first.astype(np.int64), second.astype(np.int64), gold.astype(np.float32))
    )
    if shuffle:
        ds = ds.shuffle(len(first), seed=c.seed, reshuffle_each_iteration=True)
        # A pair goes to the bucket of its longer sentence, so a batch pads to
        # about its own rows' length (a BiLSTM steps through every padded
        # position). Random batches of the default transfer set are 3.2x
        # their real tokens; these 1.4x.
        lengths = tf.constant(ids["token_ids"].row_lengths().numpy())
        ds = bucket_by_length(
            ds,
            lambda i, j, y: tf.cast(tf.maximum(lengths[i], lengths[j]), tf.int32),
            c.batch_size,
        )
    else:
        ds = ds.batch(c.batch_size)

    def batch(i, j, y):
        side = {}
        for key, rows in (("sentence_a", i), ("sentence_b", j)):
            packed = {k: tf.gather(v, rows).to_tensor() for k, v in ids.items()}
            side[key] = to_student(packed)
        x = {
            "student": side,
            "teacher_outputs": teacher_pair_outputs(table, i, j, scale=c.similarity_scale),
        }
        return x, y

    return ds.map(batch, num_parallel_calls=tf.data.AUTOTUNE)


def pair_datasets(c, transfer, tables, preprocessor, encoder, dev):
    """`(train, validation)` `tf.data` pipelines of pairs for the `Distiller`.

    Each batch is `({"student": {"sentence_a": ids, "sentence_b": ids},
    "teacher_outputs": teacher_pair_outputs(...)}, gold)`, every sentence
    padded to the longest of its side of the batch; training batches are
    shuffled and length-bucketed (`kd_keras.batching.bucket_by_length`).

    Args:
        c: the `DistillConfig`.
        transfer: the `TransferSet`.
        tables: `(transfer embeddings, dev embeddings)` of the teacher.
        preprocessor: the student's `BertPreprocessor`.
        encoder: the student's sentence encoder.
        dev: `(sentences_a, sentences_b, scores)`.
    """
    table, dev_table = tables
    train = _pairs_dataset(
        c,
        transfer.sentences,
        table,
        transfer.first,
        transfer.second,
        transfer.gold,
        preprocessor,
        encoder,
        shuffle=True,
    )
    dev_a, dev_b, dev_scores = dev
    n = len(dev_a)
    val = _pairs_dataset(
        c,
        list(dev_a) + list(dev_b),
        dev_table,
        np.arange(n),
        np.arange(n, 2 * n),
        np.asarray(dev_scores),
        preprocessor,
        encoder,
        shuffle=False,
    )
    return train.prefetch(2), val.prefetch(2)


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
