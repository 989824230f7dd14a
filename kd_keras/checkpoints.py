"""Training that loses nothing and reports nothing false: atomic checkpoints, a NaN stop.

- `ResumableBackup` is Keras' `BackupAndRestore` with checkpoints that an
  interruption at any instant cannot damage, and that carry the training
  history: at the end of every Keras epoch it writes
  `epoch-NNNNNN.json` (the history so far and the states of other callbacks)
  and then `epoch-NNNNNN.weights.h5` (weights and optimizer), each through a
  temporary file and a rename (`kd_keras.storage`); a checkpoint counts once
  its weights file is in place, and the previous one is deleted only after
  that. A rerun resumes from the newest complete checkpoint with the whole
  history.
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

from kd_keras.progress import log, progress_bar
from kd_keras.storage import atomic_path, write_json_atomic

__all__ = ["NonFiniteLossError", "ResumableBackup", "StopOnNonFiniteLoss", "training_progress"]

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


class ResumableBackup(keras.callbacks.BackupAndRestore):
    """`BackupAndRestore` with atomic checkpoints that also keep the whole history.

    Checkpoints are saved at the end of every Keras epoch (run `fit` in short
    epochs to checkpoint often). `history` holds every epoch's logs, those
    restored from the checkpoint included, so it is whole after a resume.

    Args:
        backup_dir: str or path. Deleted when training finishes.
        states: dict `{name: object}` of other stateful callbacks, each with
            `get_state() -> JSON-able` and `set_state(state)`, saved and
            restored with the checkpoint.
        keep: optional `fn() -> int or None`: an older checkpoint (by its
            epoch count) to keep beside the newest, e.g. the best one so far,
            to restore with `restore(epoch)` before the backup is deleted.
    """

    def __init__(self, backup_dir, states=None, keep=None):
        super().__init__(str(backup_dir), save_freq="epoch", delete_checkpoint=True)
        self.directory = pathlib.Path(backup_dir)
        self.states = dict(states or {})
        self.keep = keep
        self.history = {}

    def _paths(self, epoch):
        stem = self.directory / f"epoch-{epoch:06d}"
        return stem.with_name(stem.name + ".json"), stem.with_name(stem.name + ".weights.h5")

    def checkpoints(self):
        """Epochs with a complete checkpoint (both files in place), oldest first."""
        found = {}
        if self.directory.is_dir():
            for path in self.directory.iterdir():
                match = _CHECKPOINT.match(path.name)
                if match:
                    found.setdefault(int(match.group(1)), set()).add(match.group(2))
        return sorted(epoch for epoch, kinds in found.items() if len(kinds) == 2)

    def saved_state(self, name):
        """The state of `states[name]` in the newest complete checkpoint, or `None`."""
        done = self.checkpoints()
        if not done:
            return None
        meta = json.loads(self._paths(done[-1])[0].read_text(encoding="utf-8"))
        return meta["states"].get(name)

    def restore(self, epoch):
        """Loads the weights of the checkpoint after `epoch` Keras epochs (kept by `keep`)."""
        self.model.load_weights(str(self._paths(epoch)[1]))

    def on_train_begin(self, logs=None):
        self._load_model()

    def _load_model(self):
        if not self.model.built:
            raise ValueError("To resume from a backup, the model must be built before `fit()`.")
        done = self.checkpoints()
        if self.directory.is_dir():  # half of a checkpoint that a kill interrupted
            self._remove(lambda epoch: epoch not in done)
        if not done:
            return
        epoch = done[-1]
        meta_path, weights_path = self._paths(epoch)
        state = json.loads(meta_path.read_text(encoding="utf-8"))
        if self.model.optimizer is not None and not self.model.optimizer.built:
            self.model.optimizer.build(self.model.trainable_variables)
        self.model.load_weights(str(weights_path))
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
        state = {"states": {name: obj.get_state() for name, obj in self.states.items()}}
        write_json_atomic(meta_path, {"epoch": epoch, "history": self.history, **state})
        try:
            with atomic_path(weights_path) as tmp:
                self.model.save_weights(str(tmp), overwrite=True)
        except BaseException:
            meta_path.unlink(missing_ok=True)  # not a checkpoint without its weights
            raise
        # The new checkpoint is complete: only now do the older ones go (but the one kept).
        kept = self.keep() if self.keep else None
        self._remove(lambda other: other < epoch and other != kept)

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
