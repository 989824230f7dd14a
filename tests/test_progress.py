"""Progress: plain lines in a log file, the epoch counter the user asked for."""

import io

from kd_keras import checkpoints, progress


def test_log_file_gets_plain_periodic_lines(monkeypatch):
    clock = iter(range(0, 1000, 10))  # every update is 10 s after the last
    monkeypatch.setattr(progress.time, "perf_counter", lambda: next(clock))
    out = io.StringIO()
    lines = progress.Lines(100, "teacher", unit="sent", interval=25, stream=out)
    for _ in range(10):
        lines.update(10)
    lines.close()
    text = out.getvalue()
    assert "\r" not in text
    rows = text.splitlines()
    assert 3 <= len(rows) <= 5  # one every 25 s of 100 s, and the final one
    assert rows[-1].startswith("[kd-keras] teacher: 100/100 sent (")
    assert "sent/s" in rows[0] and "left" in rows[0]


def test_progress_bar_is_plain_lines_off_a_terminal(monkeypatch):
    monkeypatch.setattr(progress, "is_terminal", lambda stream=None: False)
    assert isinstance(progress.progress_bar(5, "x"), progress.Lines)
    silent = progress.progress_bar(5, "x", enabled=False)
    assert not isinstance(silent, progress.Lines)
    silent.update(5)
    silent.close()


def test_training_progress_counts_the_epochs_asked_for(monkeypatch, capsys):
    monkeypatch.setattr(progress, "is_terminal", lambda stream=None: False)
    # 2 epochs, each run by `fit` as 4 Keras epochs ("chunks") of 3 steps.
    callback = checkpoints.training_progress(epochs=2, chunks_per_epoch=4, steps_per_chunk=3)
    for chunk in range(8):
        callback.on_epoch_begin(chunk)
        for step in range(3):
            callback.on_train_batch_end(step, {"loss": 0.5})
        callback.on_epoch_end(chunk, {"loss": 0.5, "val_loss": 0.25})
    printed = capsys.readouterr().out
    epochs = [line for line in printed.splitlines() if ": loss" in line]
    assert epochs == [
        "[kd-keras] epoch 1/2: loss 0.5, val_loss 0.25",
        "[kd-keras] epoch 2/2: loss 0.5, val_loss 0.25",
    ]
    assert "/8" not in printed  # never the count of checkpoint chunks
    assert "[kd-keras] epoch 2/2: 12/12 step" in printed

    # Resumed in the middle of epoch 2 (chunk 6 of 8): that epoch's remaining steps.
    callback = checkpoints.training_progress(epochs=2, chunks_per_epoch=4, steps_per_chunk=3)
    for chunk in (6, 7):
        callback.on_epoch_begin(chunk)
        for step in range(3):
            callback.on_train_batch_end(step, {"loss": 0.5})
        callback.on_epoch_end(chunk, {"loss": 0.5})
    printed = capsys.readouterr().out
    assert "[kd-keras] epoch 2/2: 6/6 step" in printed
    assert "[kd-keras] epoch 2/2: loss 0.5" in printed
