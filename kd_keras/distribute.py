"""Data-parallel training with `tf.distribute`: one machine's devices or several machines.

Every process runs the same program; `tf.distribute` keeps one copy of the
variables per replica and sums the replicas' gradients at every step, so all
copies stay identical.

```python
from kd_keras import distribute

strategy = distribute.strategy("multi-worker")  # first: before any other TF op
with strategy.scope():
    student = build_student()
    distiller = kd_keras.Distiller(None, student)
    distiller.compile(optimizer=keras.optimizers.Adam(1e-3), ...)  # optimizer made here
    distiller.fit(distribute.shard_global_batches(dataset.repeat()), steps_per_epoch=n)
save_to = distribute.worker_output_dir(out, strategy)  # the chief's survives
```

The batch-size contract: `dataset` yields GLOBAL batches (batched by the
global batch size `B`), the same pipeline in every worker (same files, same
seeds: a shuffle needs a fixed `seed`). At every step Keras' `fit` gives each
of the `N` replicas its slice of the same global batch, `B / N` rows
(`tf.distribute.Strategy.experimental_distribute_dataset`, which `fit` calls
itself), so `N` workers see exactly the batches that one process trained on
`B` would see. The losses of `kd_keras` (and Keras' own) are each replica's
mean divided by `N`, and the gradients are summed over the replicas: with
`B` divisible by `N`, each step's update is the one process's (up to float
rounding). A smaller batch (the last one of a pass, length buckets) is split
as evenly as possible; each replica's mean then counts equally, which is
close to, not exactly, the global mean.

Every iterator over a `shuffle(..., seed=s)` dataset starts a new order, so
iterate the training dataset only through `fit` (as one process would).
`kd_keras.Distiller` works around two flaws of Keras 3.15's `fit` under a
strategy (an extra iterator over the data before training, and log
reductions that fail across workers); a plain `keras.Model` would not train
under `MultiWorkerMirroredStrategy`.

A worker that dies (a kill, a crash, a machine gone) stops the others with
one line instead of a hang or a traceback: `WorkerLostError`, "worker 1
(host1:12345) is gone (connection refused); rerun the same command on every
worker to resume from the last checkpoint" (exit status 2 on the command
line). TensorFlow's coordination service notices a dead peer within seconds
and fails the collective a worker waits in; `peers_needed` (around
`kd_keras.Distiller.fit`) and `scope` (a `strategy.scope()` whose variables
are broadcast to every worker) turn that failure into `WorkerLostError`.
Before training, when no collective runs (each worker's own teacher pass), a
watchdog thread started with the strategy connects to every peer's port from
`TF_CONFIG`; a peer that accepts no connection for `KD_KERAS_PEER_TIMEOUT`
seconds (60 by default; 0 turns the watchdog off) stops this worker with that
line and exit status 2. From the start of training on, the collectives report
a gone peer themselves, and once training is done a peer that exits is no
error (the other workers stop after training; the chief goes on to export).
"""

import contextlib
import json
import os
import pathlib
import re
import socket
import sys
import tempfile
import threading
import time

import tensorflow as tf

__all__ = [
    "PEER_TIMEOUT_ENV",
    "STRATEGIES",
    "WorkerLostError",
    "check_tf_config",
    "is_chief",
    "num_workers",
    "peer_timeout",
    "lost_peers",
    "peers_needed",
    "scope",
    "shard_global_batches",
    "smallest",
    "strategy",
    "worker_backup_dir",
    "worker_output_dir",
]

STRATEGIES = ("none", "mirrored", "multi-worker")
PEER_TIMEOUT_ENV = "KD_KERAS_PEER_TIMEOUT"
DEFAULT_PEER_TIMEOUT = 60.0
_RERUN = "rerun the same command on every worker to resume from the last checkpoint"

_TF_CONFIG_EXAMPLE = (
    'TF_CONFIG=\'{"cluster": {"worker": ["host0:12345", "host1:12345"]}, '
    '"task": {"type": "worker", "index": 0}}\''
)


def _tf_config_error(problem):
    return ValueError(
        f"--distribute multi-worker: {problem}. Set TF_CONFIG on every machine to the same "
        f"cluster and that machine's own task, for example {_TF_CONFIG_EXAMPLE} "
        '(index 1 on the second machine; "index": 0 of "worker" is the chief).'
    )


def check_tf_config(environ=None):
    """The parsed `TF_CONFIG` of a multi-worker run; a `ValueError` naming it if unusable.

    Needs `cluster.worker` (a non-empty list of `"host:port"`) and `task`
    (`type` `"worker"` or `"chief"`, `index` an int within that list).

    Args:
        environ: mapping of environment variables; `os.environ` when `None`.

    Returns:
        dict, the parsed `TF_CONFIG`.
    """
    raw = (os.environ if environ is None else environ).get("TF_CONFIG", "")
    if not raw.strip():
        raise _tf_config_error("the environment variable TF_CONFIG is not set")
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as e:
        raise _tf_config_error(f"TF_CONFIG is not valid JSON ({e})") from None
    cluster = config.get("cluster") if isinstance(config, dict) else None
    workers = cluster.get("worker") if isinstance(cluster, dict) else None
    if not isinstance(workers, list) or not workers:
        raise _tf_config_error('TF_CONFIG has no "cluster": {"worker": [...]} list')
    for tasks in cluster.values():
        if not isinstance(tasks, list) or not all(
            isinstance(a, str) and a.rpartition(":")[2].isdigit() for a in tasks
        ):
            raise _tf_config_error(f'TF_CONFIG\'s cluster lists {tasks!r}, not "host:port" strings')
    task = config.get("task")
    if not isinstance(task, dict) or "type" not in task or "index" not in task:
        raise _tf_config_error('TF_CONFIG has no "task": {"type": ..., "index": ...}')
    kind, index = task["type"], task["index"]
    if kind not in ("worker", "chief") or kind not in cluster:
        raise _tf_config_error(
            f"TF_CONFIG's task type {kind!r} is not one of the cluster's {sorted(cluster)} "
            '("worker" or "chief")'
        )
    if isinstance(index, bool) or not isinstance(index, int):
        raise _tf_config_error(f"TF_CONFIG's task index {index!r} is not an integer")
    if not 0 <= index < len(cluster[kind]):
        raise _tf_config_error(
            f"TF_CONFIG's task index {index} is outside its {len(cluster[kind])} {kind}(s)"
        )
    return config


def strategy(name="none"):
    """The `tf.distribute.Strategy` called `name`.

    - `"none"`: the default strategy (one device, no distribution);
    - `"mirrored"`: `MirroredStrategy` over this machine's GPUs (or its CPU);
    - `"multi-worker"`: `MultiWorkerMirroredStrategy` over the machines of
      `TF_CONFIG` (checked first, see `check_tf_config`). It connects to the
      other workers and waits for them.

    Under `"multi-worker"`, a peer that stops answering before training
    stops this process (see the module's docstring and `peer_timeout`).

    Call it first, before any other TensorFlow op (loading a model, a
    `tf.data` pipeline, a teacher pass): `MultiWorkerMirroredStrategy`
    configures the collective ops of the TensorFlow runtime, which TensorFlow
    allows only at program startup. Then create the student, the `Distiller`
    and its optimizer (`compile`) under `strategy.scope()`.
    """
    if name not in STRATEGIES:
        raise ValueError(f"Unknown --distribute {name!r}; expected one of {list(STRATEGIES)}.")
    if name == "multi-worker":
        check_tf_config()
    if name == "none":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    timeout = peer_timeout()
    try:
        built = tf.distribute.MultiWorkerMirroredStrategy()  # waits for every worker
    except RuntimeError as e:
        raise RuntimeError(
            "--distribute multi-worker: create the strategy before any other TensorFlow op "
            f"(call kd_keras.distribute.strategy first): {e}"
        ) from e
    if timeout and num_workers(built) > 1:
        _start_watchdog(built, timeout)
    return built


def _task(strategy):
    """`(type, index)` of this worker; `(None, None)` outside a multi-worker cluster."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "task_type", None):
        return None, None
    return resolver.task_type, resolver.task_id


def is_chief(strategy):
    """Whether this process writes the run's outputs (checkpoints, exports, reports).

    The `"chief"` task, or worker 0 of a cluster without one; always True
    for a single process (`"none"`, `"mirrored"`).
    """
    kind, index = _task(strategy)
    if kind is None or kind == "chief":
        return True
    cluster = strategy.cluster_resolver.cluster_spec().as_dict()
    return kind == "worker" and index == 0 and "chief" not in cluster


def worker_output_dir(path, strategy):
    """Where this worker saves: `path` for the chief, a new temporary folder for the others.

    Keras' multi-worker pattern: every worker runs the same saving code (a
    save may run collective ops that all workers must join), but only the
    chief's files land in `path`; delete a non-chief's folder when done.
    """
    if is_chief(strategy):
        return pathlib.Path(path)
    kind, index = _task(strategy)
    return pathlib.Path(tempfile.mkdtemp(prefix=f"kd-keras-{kind}-{index}-"))


def worker_backup_dir(path, strategy):
    """A lasting backup (`ResumableBackup`) folder per worker: `path`, `path-worker-1`, ...

    Every worker must resume from the same step, so a non-chief keeps its own
    checkpoints too (not in a temporary folder), under a name of its own that
    cannot clash with the chief's on a shared file system.
    """
    if is_chief(strategy):
        return pathlib.Path(path)
    kind, index = _task(strategy)
    path = pathlib.Path(path)
    return path.with_name(f"{path.name}-{kind}-{index}")


def shard_global_batches(dataset):
    """`dataset` set up so that each replica gets its slice of every global batch.

    Sets the `tf.data` auto-shard policy to `DATA`: every worker runs the
    whole pipeline and keeps its slice of each batch. (The default, `AUTO`,
    would split a pipeline that reads files by file, so the workers' batches
    would no longer add up to one process's.) `fit` does the slicing itself
    (`experimental_distribute_dataset`); pass it the result. The options
    carry over to later transformations (`.repeat()`, `.prefetch()`).

    Args:
        dataset: `tf.data.Dataset` batched by the GLOBAL batch size.

    Returns:
        The same `tf.data.Dataset` with the option set.
    """
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


def num_workers(strategy):
    """The number of worker processes of `strategy` (1 outside a multi-worker cluster)."""
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return 1
    tasks = strategy.cluster_resolver.cluster_spec().as_dict()
    return max(1, len(tasks.get("chief", [])) + len(tasks.get("worker", [])))


def smallest(strategy, value):
    """The smallest of every worker's int `value` (`value` itself for one process).

    A collective: every worker must call it at the same point of the program.
    `ResumableBackup` agrees on the checkpoint to resume from with it.
    """
    if num_workers(strategy) == 1:
        return int(value)
    with peers_needed(strategy):
        values = strategy.experimental_distribute_values_from_function(
            lambda context: tf.constant([int(value)], tf.int64)
        )
        return int(tf.reduce_min(strategy.gather(values, axis=0)).numpy())


# === A dead worker ===


class WorkerLostError(ConnectionError):
    """Another worker of a multi-worker run is gone; this one cannot go on.

    One line, naming the worker and its address; rerunning the same command
    on every worker resumes from the last checkpoint.
    """


def peer_timeout(environ=None):
    """Seconds without an answer after which a peer counts as gone (0: never).

    `KD_KERAS_PEER_TIMEOUT` (default 60): long enough for a loaded machine
    or a slow network, short next to a training run.
    """
    raw = (os.environ if environ is None else environ).get(PEER_TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_PEER_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise ValueError(
            f"{PEER_TIMEOUT_ENV}={raw!r}: expected seconds (a number >= 0; 0 turns the "
            "peer watchdog off)"
        )
    return value


def _peers(strategy):
    """`[(name, "host:port")]` of the other tasks of the cluster ("worker 1", ...)."""
    kind, index = _task(strategy)
    cluster = strategy.cluster_resolver.cluster_spec().as_dict()
    return [
        (f"{job} {i}", address)
        for job in ("chief", "worker")
        for i, address in enumerate(cluster.get(job, []))
        if (job, i) != (kind, index)
    ]


def _probe(address, timeout):
    """`None` if `host:port` accepts a TCP connection within `timeout` s, else why not."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            return None
    except ConnectionRefusedError:
        return "connection refused"
    except TimeoutError:
        return f"no answer within {timeout:g} s"
    except OSError as e:
        return e.strerror or type(e).__name__


def _lost_message(gone):
    """The one line for `gone`, `[(name, address, why)]`."""
    names = " and ".join(f"{name} ({address})" for name, address, _ in gone)
    whys = "; ".join(dict.fromkeys(why for _, _, why in gone))
    verb = "is" if len(gone) == 1 else "are"
    return f"{names} {verb} gone ({whys}); {_RERUN}"


class _Watchdog:
    """Connects to every peer's port; calls `on_lost(message)` once a peer stays silent.

    A peer counts as gone after `timeout` seconds without a connection
    accepted. Reports only while `armed` (`peers_needed` disarms it when
    training starts), and at most once.
    """

    def __init__(self, peers, timeout, on_lost, interval=None):
        self.peers = list(peers)
        self.timeout = float(timeout)
        self.interval = interval or max(0.05, min(5.0, self.timeout / 4))
        self.on_lost = on_lost
        self.armed = True
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kd-keras-peers", daemon=True)

    def start(self):
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        self._thread.join()

    def _run(self):
        seen = {address: time.monotonic() for _, address in self.peers}
        while not self._stop.wait(self.interval):
            gone = []
            for name, address in self.peers:
                why = _probe(address, min(self.interval, 5.0))
                now = time.monotonic()
                if why is None:
                    seen[address] = now
                elif now - seen[address] >= self.timeout:
                    gone.append((name, address, f"{why} for {now - seen[address]:.1f} s"))
            if gone and self.armed:
                self.on_lost(_lost_message(gone))
                return


_WATCHDOG = None


def _command_name():
    """`kd-keras SUBCOMMAND` of this process, for the watchdog's one line."""
    words = [a for a in sys.argv[1:] if not a.startswith("-")]
    return f"kd-keras {words[0]}" if words else "kd-keras"


def _stop_process(message):
    """Prints the one line and ends the process at once (a thread cannot interrupt
    the main thread, and a later collective would wait for the gone peer)."""
    sys.stdout.flush()
    print(f"{_command_name()}: error: {message}", file=sys.stderr, flush=True)
    os._exit(2)


def _start_watchdog(strategy, timeout):
    global _WATCHDOG
    if _WATCHDOG is not None:
        _WATCHDOG.stop()
    _WATCHDOG = _Watchdog(_peers(strategy), timeout, _stop_process).start()


# The failures of a collective whose peer is gone, as TensorFlow 2.21 reports them:
# a connection refused or reset, the coordination service's missed heartbeats.
_PEER_FAILURES = (tf.errors.UnavailableError, tf.errors.DeadlineExceededError)
_PEER_WORDS = re.compile(r"ollective|heartbeat|unhealthy|connect to|CoordinationService")


def _gone_peers(strategy, text):
    """`[(name, address, why)]` of the peers a collective's failure points at."""
    peers = _peers(strategy)
    gone = [(n, a, why) for n, a in peers if (why := _probe(a, 2.0)) is not None]
    if gone:
        return gone
    for name, address in peers:  # alive to a connection, but named by TensorFlow
        job, _, index = name.partition(" ")
        if address in text or re.search(rf"/job:{job}/(replica:0/)?task:{index}\b", text):
            return [(name, address, "it stopped answering TensorFlow")]
    return [("another worker", "of TF_CONFIG", "TensorFlow lost contact with it")]


@contextlib.contextmanager
def lost_peers(strategy):
    """Runs the body with a collective's lost peer reported as `WorkerLostError`.

    Under a multi-worker `strategy`, a collective whose peer is gone fails
    with `tf.errors.UnavailableError` or `DeadlineExceededError` (a
    connection refused, missed heartbeats); that failure comes out as one
    `WorkerLostError` naming the worker. Nothing changes for one process.
    """
    if num_workers(strategy) == 1:
        yield
        return
    try:
        yield
    except _PEER_FAILURES as e:
        if not _PEER_WORDS.search(str(e)):
            raise
        raise WorkerLostError(_lost_message(_gone_peers(strategy, str(e)))) from None


@contextlib.contextmanager
def scope(strategy):
    """`strategy.scope()`, a lost peer reported as `WorkerLostError` (`lost_peers`).

    Under `MultiWorkerMirroredStrategy` a variable made here is broadcast from
    worker 0 to the others: a collective.
    """
    with strategy.scope(), lost_peers(strategy):
        yield


@contextlib.contextmanager
def peers_needed(strategy):
    """The body (training: `kd_keras.Distiller.fit`) under `lost_peers`; the watchdog off.

    From here on this worker waits for its peers in collectives, which
    report a gone peer themselves; and once training is done the peers may
    exit (only the chief goes on).
    """
    if _WATCHDOG is not None:
        _WATCHDOG.armed = False
    with lost_peers(strategy):
        yield
