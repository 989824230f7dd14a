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
"""

import json
import os
import pathlib
import tempfile

import tensorflow as tf

__all__ = [
    "STRATEGIES",
    "check_tf_config",
    "is_chief",
    "shard_global_batches",
    "strategy",
    "worker_backup_dir",
    "worker_output_dir",
]

STRATEGIES = ("none", "mirrored", "multi-worker")

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
    try:
        return tf.distribute.MultiWorkerMirroredStrategy()
    except RuntimeError as e:
        raise RuntimeError(
            "--distribute multi-worker: create the strategy before any other TensorFlow op "
            f"(call kd_keras.distribute.strategy first): {e}"
        ) from e


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
