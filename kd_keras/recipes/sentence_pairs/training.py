"""Training in the sentence-pair recipe: its data, its dev curve, the fit (`train`).

The data: length-bucketed pairs with the teacher's outputs, from two sources,
mixed pair by pair in proportion to their sizes:

- pairs held in memory (the gold pairs and their re-pairings), gathered from
  a small table of the teacher's embeddings;
- the big part of the transfer set, labeled into shards (`kd_keras.labels`)
  and streamed from them (`labels_dataset`: a few shards in memory at a
  time, a shuffle buffer), two consecutive sentences making a pair, so every
  pass pairs them anew.

Then batches of pairs of similar length (`kd_keras.batching.bucket_by_length`,
on the longer sentence of the pair), each padded to its own longest row.

The fit: the `Distiller` over those batches in checkpointed parts
(`kd_keras.checkpoints.ResumableBackup`), the student's dev Spearman after
each part (`DevCurve`, with optional early stopping on it).
"""

import math

import keras
import numpy as np
import tensorflow as tf

from kd_keras import distribute, filesystems
from kd_keras.batching import bucket_by_length
from kd_keras.checkpoints import ResumableBackup, StopOnNonFiniteLoss, training_progress
from kd_keras.correlation import spearman
from kd_keras.distiller import Distiller
from kd_keras.labels import labels_dataset, read_labels, read_manifest
from kd_keras.progress import log
from kd_keras.recipes.sentence_pairs.objectives import (
    BinaryPairLoss,
    GoldScoreMSE,
    objective_loss,
    pair_training_model,
    teacher_pair_outputs,
)
from kd_keras.recipes.sentence_pairs.students import student_name
from kd_keras.storage import CacheError, file_sha256

__all__ = [
    "SHUFFLE_BUFFER",
    "DevCurve",
    "StepHistory",
    "check_label_shards",
    "compiled_distiller",
    "pair_datasets",
    "target_transform",
    "train",
]


def _log(message):
    log(message, prefix="kd-keras distill")


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


def target_transform(table, labels=(), components=0, limit=20000):
    """`(mean, projection)` of the teacher's targets for `target_pca` (tokenlearn's PCA).

    Fitted on up to `limit` unit-length teacher embeddings of the transfer
    set (the in-memory table first, then the labels folders' shards in
    order). A target `t` becomes `(t / |t| - mean) @ projection`: centered,
    and kept to its `components` strongest principal directions (the width
    stays the teacher's, so the student and its exports keep theirs; only
    the directions of the targets change).

    Args:
        table: float `[N, D]`: the teacher's embeddings held in memory.
        labels: labels folders (`kd_keras.labels`).
        components: int in `[1, D]`.
        limit: int. Embeddings fitted on.

    Returns:
        `(mean [D], projection [D, D])` float32 arrays.
    """
    rows = [np.asarray(table, np.float32)[:limit]]
    count = len(rows[0])
    for folder in labels:
        for _, embeddings in read_labels(folder):
            if count >= limit:
                break
            rows.append(embeddings[: limit - count])
            count += len(rows[-1])
    x = np.concatenate(rows).astype(np.float64)
    width = x.shape[1]
    if not 1 <= components <= width:
        raise ValueError(f"target_pca={components}: expected 1 to the teacher's width, {width}.")
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    mean = x.mean(axis=0)
    _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
    basis = vt[:components]
    return mean.astype(np.float32), (basis.T @ basis).astype(np.float32)


def _to_batches(ds, c, encoder, transform=None):
    to_student = _student_inputs_fn(encoder)
    if transform is not None:
        mean, projection = (tf.constant(v) for v in transform)

    def batch(a, b, ea, eb, y):
        if transform is not None:
            ea, eb = (
                tf.matmul(tf.math.l2_normalize(tf.cast(e, tf.float32), -1) - mean, projection)
                for e in (ea, eb)
            )
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
    transform = None
    if c.target_pca:
        transform = target_transform(table, labels, c.target_pca)
    return (
        _to_batches(train, c, encoder, transform).prefetch(2),
        _to_batches(val, c, encoder, transform).prefetch(2),
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


class DevCurve:
    """Dev Spearman x100 after every checkpoint part; optional early stopping on it.

    At the end of every Keras epoch (a checkpoint part) it scores the dev
    pairs with the student (cosine of the two embeddings against the gold
    scores), adds `dev_spearman` to the logs (so the checkpoint's history
    keeps the curve) and, with `patience`, stops training once that many
    parts have passed without a better score, as Keras' `EarlyStopping(
    restore_best_weights=True)` would: the job then restores the best part's
    checkpoint (`ResumableBackup(keep=curve.best_epoch)`). Its state travels
    with the checkpoints, so a resumed run stops where the uninterrupted one
    would have.

    Args:
        pair_model: the student's pair model (`pair_training_model`).
        dev_batches: `(x, gold)` batches of the dev pairs, `x["student"]`
            the pair model's inputs (the validation set of `pair_datasets`).
        patience: int. Parts without improvement before stopping; 0: never.
    """

    def __init__(self, pair_model, dev_batches, patience=0):
        curve = self
        self.patience = patience
        self.best = None  # (epoch count, dev Spearman)
        self.since_best = 0
        self.stopped = False
        score = tf.function(lambda x: pair_model(x, training=False)["score"], reduce_retracing=True)

        class Callback(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                value = curve.measure(score, dev_batches)
                if logs is not None:
                    logs["dev_spearman"] = value
                if curve.improves(value):
                    curve.best, curve.since_best = (epoch + 1, value), 0
                else:
                    curve.since_best += 1
                if curve.patience and curve.since_best >= curve.patience:
                    curve.stopped = True
                    self.model.stop_training = True

        self.callback = Callback()

    @staticmethod
    def measure(score, dev_batches):
        scores, gold = [], []
        for x, y in dev_batches:
            scores.append(np.asarray(score(x["student"])).reshape(-1))
            gold.append(np.asarray(y).reshape(-1))
        return 100.0 * spearman(np.concatenate(scores), np.concatenate(gold))

    def improves(self, value):
        """Whether `value` beats the best so far; a NaN (constant scores) is beaten by any."""
        if self.best is None or math.isnan(self.best[1]):
            return True
        return value > self.best[1]

    def best_epoch(self):
        """The Keras epoch count of the best part so far (`None` before the first)."""
        return self.best[0] if self.best else None

    def restore_best(self, backup):
        """A callback that loads the best part's checkpoint at the end of training.

        Place it before `backup` (a `ResumableBackup(keep=self.best_epoch)`),
        whose own end of training deletes the checkpoints.
        """
        curve = self

        class RestoreBest(keras.callbacks.Callback):
            def on_train_end(self, logs=None):
                if curve.best is not None:
                    backup.restore(curve.best[0])

        return RestoreBest()

    def get_state(self):
        return {"best": self.best, "since_best": self.since_best, "stopped": self.stopped}

    def set_state(self, state):
        self.best = tuple(state["best"]) if state["best"] else None
        self.since_best, self.stopped = state["since_best"], state["stopped"]


def compiled_distiller(c, encoder, steps):
    """The `Distiller` of the student's pair model, compiled (build it in the strategy's scope)."""
    if c.hard_loss == "binary":
        hard_loss = BinaryPairLoss(threshold=c.negative_threshold)
    else:
        hard_loss = GoldScoreMSE(c.max_score)
    train_model = pair_training_model(
        encoder, scale=c.similarity_scale, threshold=c.similarity_threshold
    )
    distill_output, loss = objective_loss(c.objective, c.distillation_loss, c.temperature)
    # No teacher object: every batch carries the teacher's cached outputs.
    distiller = Distiller(None, train_model, distill_output=distill_output, label_output="score")
    chunk = -(-steps // c.checkpoints_per_epoch)
    learning_rate = c.learning_rate
    if c.lr_schedule == "cosine":
        learning_rate = keras.optimizers.schedules.CosineDecay(
            c.learning_rate, decay_steps=c.epochs * c.checkpoints_per_epoch * chunk
        )
    distiller.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        student_loss=hard_loss,
        distillation_loss=loss,
        alpha=c.alpha,
    )
    return distiller, chunk


def check_label_shards(folders):
    """Checks every shard of the labels `folders` against its manifest's SHA-256.

    Training streams the shards through `tf.data`, which would stop at a
    damaged one mid-training with TensorFlow's traceback; this finds it first.

    Raises:
        CacheError: one line naming the shard and how to label it again.
    """
    for folder in folders:
        for entry in (read_manifest(folder) or {}).get("shards", []):
            path = filesystems.join(folder, entry["file"])
            if not filesystems.is_file(path) or file_sha256(path) != entry["sha256"]:
                raise CacheError(
                    f"{path} is missing or fails its checksum; nothing was trained on it. Label "
                    f"{folder} again (the same kd-keras label command labels only that shard "
                    "again)."
                )


def train(c, out, data, encoder, preprocessor, progress, strategy):
    """Trains the student's pair model (the recipe's step 2).

    Returns `(history, step curve, steps trained, early stopping)`: the
    whole run's Keras history (resumed parts included, `dev_spearman` among
    it), the `StepHistory` points, and the early-stopping outcome.

    `data`: `(pairs, tables, label folders, dev)`, as `pair_datasets` takes them.
    Under a multi-worker `strategy` every worker trains on its slice of the
    same global batches and keeps its own checkpoints (`kd_keras.distribute`).
    """
    pairs, tables, labels, dev = data
    check_label_shards(labels)
    train_ds, val_ds, steps = pair_datasets(
        c, pairs, tables, preprocessor, encoder, dev, labels=labels
    )
    if c.steps_per_epoch:
        steps = c.steps_per_epoch
    dev_batches = val_ds  # whole on every worker: each scores all the dev pairs
    train_ds = distribute.shard_global_batches(train_ds)
    val_ds = distribute.shard_global_batches(val_ds)
    with distribute.scope(strategy):
        distiller, chunk = compiled_distiller(c, encoder, steps)
    curve = StepHistory()
    dev_curve = DevCurve(distiller.student, dev_batches, patience=c.early_stopping)
    backup_dir = distribute.worker_backup_dir(out / "backup", strategy)
    backup = ResumableBackup(
        backup_dir,
        states={"step_loss": curve, "dev_curve": dev_curve},
        keep=dev_curve.best_epoch if c.early_stopping else None,
        strategy=strategy,
    )
    parts = c.epochs * c.checkpoints_per_epoch
    stopping = (
        f"; early stopping after {c.early_stopping} dev evaluation(s) without a better dev Spearman"
        if c.early_stopping
        else ""
    )
    _log(
        f"training {student_name(c, encoder)} student ({encoder.count_params():,} parameters): "
        f"{c.epochs} epoch(s) of {steps} steps, checkpoint and dev Spearman every {chunk} "
        f"steps{stopping}"
    )
    done = backup.resume_epoch()  # verified; under multi-worker, one all workers have
    if done:
        _log(
            f"resuming from the checkpoint after {done} of {parts} parts "
            f"({done / c.checkpoints_per_epoch:g} epochs)"
        )
        saved = backup.saved_state("dev_curve")
        if saved and saved["stopped"]:
            parts = done  # it had stopped early: nothing more to train
        # The stream goes on where the checkpoint left it, as in an uninterrupted run.
        train_ds = train_ds.skip(done * chunk)
    # Each epoch runs as `checkpoints_per_epoch` Keras epochs of `chunk` steps
    # over one endless stream, each ending with an atomic checkpoint; the
    # progress the user sees counts the epochs asked for. A non-finite loss
    # stops the run before anything is saved. The dev curve's callback comes
    # before the backup, so each checkpoint holds its point.
    callbacks = [StopOnNonFiniteLoss(), dev_curve.callback, backup, curve.callback]
    if c.early_stopping:  # the best part's weights, before the backup deletes them
        callbacks.insert(2, dev_curve.restore_best(backup))
    distiller.fit(
        train_ds,
        epochs=parts,
        steps_per_epoch=chunk,
        validation_data=val_ds,
        callbacks=[
            *callbacks,
            training_progress(c.epochs, c.checkpoints_per_epoch, chunk, enabled=progress),
        ],
        verbose=0,
        shuffle=False,  # the dataset shuffles itself (Keras would warn that it ignores this)
    )
    if c.early_stopping:
        best, value = dev_curve.best
        last = len(backup.history.get("dev_spearman", []))
        _log(
            f"kept the student after {best * chunk} steps (dev Spearman {value:.2f})"
            + (f"; stopped early after {last * chunk} steps" if dev_curve.stopped else "")
        )
    stopping = {
        "patience": c.early_stopping,
        "steps_per_evaluation": chunk,
        "best_step": dev_curve.best[0] * chunk if dev_curve.best else None,
        "best_dev_spearman": dev_curve.best[1] if dev_curve.best else None,
        "stopped": dev_curve.stopped,
    }
    # The whole run's, resumed parts included.
    return backup.history, curve.points, curve.step, stopping
