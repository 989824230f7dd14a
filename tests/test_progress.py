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

    # Resumed in the middle of epoch 2 (chunk 6 of 8): the epoch's 12 steps, 6 of them done.
    callback = checkpoints.training_progress(epochs=2, chunks_per_epoch=4, steps_per_chunk=3)
    for chunk in (6, 7):
        callback.on_epoch_begin(chunk)
        for step in range(3):
            callback.on_train_batch_end(step, {"loss": 0.5})
        callback.on_epoch_end(chunk, {"loss": 0.5})
    printed = capsys.readouterr().out
    assert "[kd-keras] epoch 2/2: 12/12 step" in printed
    assert "/6 step" not in printed
    assert "[kd-keras] epoch 2/2: loss 0.5" in printed


def test_lines_start_at_the_steps_done_before_a_resume(monkeypatch):
    clock = iter(range(0, 1000, 10))
    monkeypatch.setattr(progress.time, "perf_counter", lambda: next(clock))
    out = io.StringIO()
    lines = progress.Lines(600, "epoch 1/1", unit="step", interval=15, stream=out, initial=150)
    for _ in range(3):
        lines.update(50)
    rows = out.getvalue().splitlines()
    # 150 done before the resume, 100 since, in 30 s (the clock ticks at each read):
    # 3.3 steps/s (not 250 / 30 = 8.3), 350 left at that rate.
    assert rows[0].startswith("[kd-keras] epoch 1/1: 250/600 step (3.3 step/s, 1:45 left)")
