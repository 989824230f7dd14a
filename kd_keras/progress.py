"""Progress for long steps: a bar on a terminal, plain periodic lines in a log.

`progress_bar(total, description)` is a tqdm bar when standard error is a
terminal and a `Lines` reporter otherwise, which prints one line every
`interval` seconds (done, rate, time left) and one at the end, with no
carriage returns. No TensorFlow: the training loops' Keras callback that
reports through these is `kd_keras.checkpoints.training_progress`.
"""

import sys
import time

from tqdm.auto import tqdm

__all__ = ["Lines", "is_terminal", "log", "progress_bar"]


def is_terminal(stream=None):
    """Whether `stream` (standard error by default) is a terminal."""
    stream = sys.stderr if stream is None else stream
    return bool(getattr(stream, "isatty", lambda: False)())


def log(message, prefix="kd-keras"):
    """Prints `[prefix] message` to standard output, flushed."""
    print(f"[{prefix}] {message}", flush=True)


def _duration(seconds):
    seconds = int(round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}" if seconds < 3600 else f"{seconds / 3600:.1f} h"


class Lines:
    """A progress reporter for log files: one plain line every `interval` seconds.

    Args:
        total: int. Units to do.
        description: str. What is being done.
        unit: str. Name of a unit ("sent", "step").
        interval: float. Seconds between lines.
        stream: where the lines go (standard output by default).
        initial: int. Units already done (a resumed run's), counted in the
            lines but not in the rate.
    """

    def __init__(self, total, description, unit="it", interval=30.0, stream=None, initial=0):
        self.total, self.description, self.unit = int(total), description, unit
        self.interval = float(interval)
        self.stream = stream
        self.done = self.initial = int(initial)
        self.start = self.last = time.perf_counter()
        self.postfix = ""

    def _line(self):
        elapsed = time.perf_counter() - self.start
        rate = (self.done - self.initial) / elapsed if elapsed > 0 else 0.0
        left = (self.total - self.done) / rate if rate > 0 else 0.0
        extra = f", {self.postfix}" if self.postfix else ""
        print(
            f"[kd-keras] {self.description}: {self.done}/{self.total} {self.unit} "
            f"({rate:.1f} {self.unit}/s, {_duration(left)} left){extra}",
            file=self.stream or sys.stdout,
            flush=True,
        )

    def update(self, n=1):
        self.done += n
        now = time.perf_counter()
        if now - self.last >= self.interval and self.done < self.total:
            self.last = now
            self._line()

    def set_postfix_str(self, text):
        self.postfix = text

    def close(self):
        self._line()


def progress_bar(total, description, unit="it", enabled=True, interval=30.0, initial=0):
    """A tqdm bar on a terminal, `Lines` in a log file, or nothing (`enabled=False`).

    `initial` units count as done already (a resumed run starts its bar there).

    Returns:
        An object with `update(n)`, `set_postfix_str(text)` and `close()`.
    """
    if enabled and is_terminal():
        return tqdm(total=total, desc=description, unit=unit, leave=False, initial=initial)
    if enabled:
        return Lines(total, description, unit, interval=interval, initial=initial)
    return _Silent()


class _Silent:
    def update(self, n=1):
        pass

    def set_postfix_str(self, text):
        pass

    def close(self):
        pass
