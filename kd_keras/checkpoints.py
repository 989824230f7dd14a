"""Training that loses nothing and reports nothing false: atomic checkpoints, a NaN stop.

- `ResumableBackup` is Keras' `BackupAndRestore` with checkpoints that an
  interruption at any instant cannot damage, and that carry the training
  history: at the end of every Keras epoch it writes
  `epoch-NNNNNN.weights.h5` (weights and optimizer) and then
  `epoch-NNNNNN.json` (the history so far, the states of other callbacks and
  the weights file's SHA-256), each through a temporary file and a rename
  (`kd_keras.storage`); a checkpoint counts once both files are in place,
  and the previous one is deleted only after that. A rerun resumes from the
  newest complete checkpoint whose weights match their SHA-256, with the
  whole history; a damaged checkpoint is never loaded (`CheckpointError`).
- `StopOnNonFiniteLoss` ends training with a `NonFiniteLossError` at the first
  step whose loss is NaN or infinite, before any checkpoint or export of the
  broken weights.
- `training_progress` reports the epochs the user asked for, however many
  checkpoint chunks `fit` runs them in (`kd_keras.progress`: a bar on a
  terminal, plain periodic lines in a log).
"""

import json
import math
import pathlib
import re

import keras

from kd_keras import distribute
from kd_keras.progress import log, progress_bar
from kd_keras.storage import atomic_path, file_sha256, write_json_atomic

__all__ = [
    "CheckpointError",
    "NonFiniteLossError",
    "ResumableBackup",
    "StopOnNonFiniteLoss",
    "training_progress",
]

_CHECKPOINT = re.compile(r"^epoch-(\d{6})\.(json|weights\.h5)$")


class NonFiniteLossError(ValueError):
    """Training produced a NaN or infinite loss; nothing after it can be trusted."""


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Raises `NonFiniteLossError` at the first step (or epoch end) with a non-finite value.

    Unlike `keras.callbacks.TerminateOnNaN`, which stops quietly and lets the
    caller go on to save and export, this stops the whole run. Put it before
    any checkpointing callback, so that its epoch-end check runs first.
    """

    def __init__(self):
        super().__init__()
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def _check(self, logs, where):
        for key, value in (logs or {}).items():
            if key.endswith("loss") and not math.isfinite(float(value)):
                raise NonFiniteLossError(
                    f"training stopped: {key} became {float(value)} {where}; nothing was saved "
                    "or exported (check the learning rate and the data's scores)"
                )

    def on_train_batch_end(self, batch, logs=None):
        self._check(logs, f"at step {batch + 1} of Keras epoch {self.epoch + 1}")

    def on_epoch_end(self, epoch, logs=None):
        self._check(logs, f"at the end of Keras epoch {epoch + 1}")


class CheckpointError(ValueError):
    """A checkpoint that cannot be trusted (truncated, corrupted): nothing is restored from it."""


class ResumableBackup(keras.callbacks.BackupAndRestore):
    """`BackupAndRestore` with atomic, verified checkpoints that also keep the whole history.

    Checkpoints are saved at the end of every Keras epoch (run `fit` in short
    epochs to checkpoint often). `history` holds every epoch's logs, those
    restored from the checkpoint included, so it is whole after a resume.

    Each checkpoint's JSON records the SHA-256 of its weights file; a resume
    verifies it. A damaged newest checkpoint (truncated, a flipped bit) is
    named and passed over for an older complete one; with none left, the run
    stops with a `CheckpointError` that says what to delete. A damaged
    checkpoint is never loaded.

    Under a multi-worker `strategy`, every worker keeps its own checkpoints
    (`kd_keras.distribute.worker_backup_dir`), the newest two (a worker killed
    while saving may be one behind the others), and all resume from the
    newest one they all have (`resume_epoch`).

    Args:
        backup_dir: str or path. Deleted when training finishes.
        states: dict `{name: object}` of other stateful callbacks, each with
            `get_state() -> JSON-able` and `set_state(state)`, saved and
            restored with the checkpoint.
        keep: optional `fn() -> int or None`: an older checkpoint (by its
            epoch count) to keep beside the newest, e.g. the best one so far,
            to restore with `restore(epoch)` before the backup is deleted.
        strategy: the `tf.distribute.Strategy` of the training; `None` takes
            the model's once `fit` starts.
    """

    def __init__(self, backup_dir, states=None, keep=None, strategy=None):
        super().__init__(str(backup_dir), save_freq="epoch", delete_checkpoint=True)
        self.directory = pathlib.Path(backup_dir)
        self.states = dict(states or {})
        self.keep = keep
        self.strategy = strategy
        self.history = {}
        self._resume = None  # (epoch, its state), once decided

    def _paths(self, epoch):
        stem = self.directory / f"epoch-{epoch:06d}"
        return stem.with_name(stem.name + ".json"), stem.with_name(stem.name + ".weights.h5")

    def checkpoints(self):
        """Epochs with a complete checkpoint (both files in place), oldest first.

        Complete, not verified: see `resume_epoch`.
        """
        found = {}
        if self.directory.is_dir():
            for path in self.directory.iterdir():
                match = _CHECKPOINT.match(path.name)
                if match:
                    found.setdefault(int(match.group(1)), set()).add(match.group(2))
        return sorted(epoch for epoch, kinds in found.items() if len(kinds) == 2)

    def _verified_state(self, epoch):
        """The JSON state of checkpoint `epoch`; a `CheckpointError` if a file is damaged."""
        meta_path, weights_path = self._paths(epoch)
        try:
            state = json.loads(meta_path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as e:
            raise self._damaged(weights_path, f"{meta_path.name} is not valid JSON: {e}") from None
        if not isinstance(state, dict) or not {"history", "states"} <= set(state):
            raise self._damaged(weights_path, f"{meta_path.name} is not a kd-keras checkpoint")
        recorded = state.get("weights_sha256")  # absent in checkpoints of older versions
        if recorded is not None and file_sha256(weights_path) != recorded:
            raise self._damaged(
                weights_path, f"its SHA-256 does not match the one recorded in {meta_path.name}"
            )
        return state

    def _damaged(self, weights_path, why):
        return CheckpointError(
            f"checkpoint {weights_path} is damaged ({why}); nothing was restored from it. "
            f"Delete {self.directory} to train again from the start."
        )

    def _strategy(self):
        if self.strategy is not None:
            return self.strategy
        return getattr(getattr(self, "_model", None), "distribute_strategy", None)

    def resume_epoch(self):
        """The Keras epochs done by the checkpoint the training resumes from (0: none).

        The newest complete checkpoint that verifies; under a multi-worker
        strategy, the oldest of every worker's (a collective: every worker
        calls it, at the same point). Decided once: `saved_state` and the
        restore at the start of `fit` use it.

        Raises:
            CheckpointError: checkpoints are there, but none verifies.
        """
        if self._resume is not None:
            return self._resume[0]
        done, states, damaged = self.checkpoints(), {}, []
        for epoch in reversed(done):
            try:
                states[epoch] = self._verified_state(epoch)
                break
            except CheckpointError as e:
                damaged.append(e)
        if done and not states:
            raise damaged[0]  # the newest one's: the one the user expects to resume from
        local = max(states, default=0)
        for error in damaged:  # "checkpoint PATH is damaged (WHY)"
            what = str(error).partition("; nothing")[0]
            log(f"{what}; resuming from the older checkpoint {self._paths(local)[1]}")
        epoch = distribute.smallest(self._strategy(), local)
        if epoch and epoch not in states:  # another worker is one checkpoint behind
            states[epoch] = self._verified_state(epoch)
        self._resume = (epoch, states.get(epoch))
        return epoch

    def saved_state(self, name):
        """The state of `states[name]` in the checkpoint resumed from (`None` if none)."""
        self.resume_epoch()
        state = self._resume[1]
        return None if state is None else state["states"].get(name)

    def restore(self, epoch):
        """Loads the weights of the checkpoint after `epoch` Keras epochs (kept by `keep`)."""
        self._load_weights(epoch, self._verified_state(epoch))

    def _load_weights(self, epoch, state):
        weights_path = self._paths(epoch)[1]
        try:
            self.model.load_weights(str(weights_path))
        except (OSError, ValueError, KeyError) as e:
            if "weights_sha256" not in state:  # an older checkpoint, unverified: damaged
                raise self._damaged(weights_path, f"{type(e).__name__}: {e}") from None
            raise CheckpointError(
                f"checkpoint {weights_path} does not fit this model ({type(e).__name__}: "
                f"{e}); a run with other settings saved it. Delete {self.directory} to train "
                "again from the start."
            ) from None

    def on_train_begin(self, logs=None):
        self._load_model()

    def _load_model(self):
        if not self.model.built:
            raise ValueError("To resume from a backup, the model must be built before `fit()`.")
        epoch = self.resume_epoch()
        state, self._resume = self._resume[1], None  # a later `fit` decides again
        done = self.checkpoints()
        if self.directory.is_dir():  # half checkpoints a kill left, and any after `epoch`
            self._remove(lambda other: other not in done or other > epoch)
        if not epoch:
            return
        if self.model.optimizer is not None and not self.model.optimizer.built:
            self.model.optimizer.build(self.model.trainable_variables)
        self._load_weights(epoch, state)
        self.history = {k: list(v) for k, v in state["history"].items()}
        for name, obj in self.states.items():
            obj.set_state(state["states"][name])
        self.model._initial_epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        for key, value in (logs or {}).items():
            self.history.setdefault(key, []).append(float(value))
        super().on_epoch_end(epoch, logs)  # saves, through `_save_model`

    def _save_model(self):
        self.directory.mkdir(parents=True, exist_ok=True)
        epoch = self._current_epoch
        meta_path, weights_path = self._paths(epoch)
        with atomic_path(weights_path) as tmp:
            self.model.save_weights(str(tmp), overwrite=True)
        state = {"states": {name: obj.get_state() for name, obj in self.states.items()}}
        state["weights_sha256"] = file_sha256(weights_path)
        try:
            write_json_atomic(meta_path, {"epoch": epoch, "history": self.history, **state})
        except BaseException:
            weights_path.unlink(missing_ok=True)  # not a checkpoint without its JSON
            raise
        # The new checkpoint is complete: only now do the older ones go (but those kept).
        kept = {self.keep() if self.keep else None}
        if distribute.num_workers(self._strategy()) > 1:
            kept.add(max((e for e in self.checkpoints() if e < epoch), default=None))
        self._remove(lambda other: other < epoch and other not in kept)

    def _remove(self, which):
        """Deletes the checkpoint files of the epochs `which(epoch)` selects."""
        for path in self.directory.iterdir():
            match = _CHECKPOINT.match(path.name)
            if match and which(int(match.group(1))):
                path.unlink(missing_ok=True)


def training_progress(epochs, chunks_per_epoch, steps_per_chunk, enabled=True, interval=30.0):
    """A Keras callback that reports `epochs` epochs run as `fit` chunks.

    `fit` may run each epoch as `chunks_per_epoch` shorter Keras epochs (one
    checkpoint each); this shows "epoch 2/4" where Keras would show
    "Epoch 6/16": a bar per epoch on a terminal, periodic plain lines and one
    line per epoch (losses and validation losses) in a log.

    Args:
        epochs: int. Epochs the user asked for.
        chunks_per_epoch: int. Keras epochs per epoch.
        steps_per_chunk: int. Steps of each Keras epoch.
        enabled: bool. `False` reports nothing.
        interval: float. Seconds between plain lines.
    """

    class _TrainingProgress(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.bar = None

        def on_epoch_begin(self, chunk, logs=None):
            # A new epoch, or the first chunk after a resume mid-epoch: the bar
            # counts the epoch's steps, from those done before the resume.
            if enabled and (chunk % chunks_per_epoch == 0 or self.bar is None):
                epoch = chunk // chunks_per_epoch + 1
                self.bar = progress_bar(
                    chunks_per_epoch * steps_per_chunk,
                    f"epoch {epoch}/{epochs}",
                    unit="step",
                    interval=interval,
                    initial=(chunk % chunks_per_epoch) * steps_per_chunk,
                )

        def on_train_batch_end(self, batch, logs=None):
            if self.bar is not None:
                self.bar.update(1)
                if logs and "loss" in logs:
                    self.bar.set_postfix_str(f"loss {float(logs['loss']):.4g}")

        def on_epoch_end(self, chunk, logs=None):
            if self.bar is None or (chunk + 1) % chunks_per_epoch:
                return
            self.bar.close()
            self.bar = None
            values = ", ".join(f"{k} {float(v):.4g}" for k, v in (logs or {}).items())
            log(f"epoch {(chunk + 1) // chunks_per_epoch}/{epochs}: {values}")

    return _TrainingProgress()
