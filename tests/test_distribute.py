"""kd_keras.distribute: TF_CONFIG checks, chief and worker folders, multi-worker training."""

import json
import os
import pathlib
import re
import socket
import subprocess
import sys
import textwrap
import time
import types

import keras
import numpy as np
import pytest
import tensorflow as tf

from kd_keras import distribute
from kd_keras.data import data_path

GOOD = {
    "cluster": {"worker": ["127.0.0.1:2222", "127.0.0.1:2223"]},
    "task": {"type": "worker", "index": 0},
}


def tf_config(**task):
    return {"TF_CONFIG": json.dumps({**GOOD, "task": {"type": "worker", "index": 0, **task}})}


def test_a_valid_tf_config_is_returned_parsed():
    assert distribute.check_tf_config(tf_config(index=1))["task"] == {"type": "worker", "index": 1}
    with_chief = {
        "cluster": {"chief": ["10.0.0.1:2222"], "worker": ["10.0.0.2:2222"]},
        "task": {"type": "chief", "index": 0},
    }
    assert distribute.check_tf_config({"TF_CONFIG": json.dumps(with_chief)}) == with_chief


@pytest.mark.parametrize(
    "environ, match",
    [
        ({}, "TF_CONFIG is not set"),
        ({"TF_CONFIG": "  "}, "TF_CONFIG is not set"),
        ({"TF_CONFIG": "{cluster: 1"}, "TF_CONFIG is not valid JSON"),
        ({"TF_CONFIG": "[1, 2]"}, "TF_CONFIG has no .cluster"),
        ({"TF_CONFIG": json.dumps({"task": {"type": "worker", "index": 0}})}, "no .cluster"),
        ({"TF_CONFIG": json.dumps({**GOOD, "cluster": {"worker": []}})}, "no .cluster"),
        ({"TF_CONFIG": json.dumps({**GOOD, "cluster": {"worker": ["host0"]}})}, "host:port"),
        ({"TF_CONFIG": json.dumps({"cluster": GOOD["cluster"]})}, "TF_CONFIG has no .task"),
        ({"TF_CONFIG": json.dumps({**GOOD, "task": {"type": "worker"}})}, "has no .task"),
        (tf_config(type="ps"), "task type 'ps'"),
        (tf_config(type="chief"), "task type 'chief'"),  # no chief in the cluster
        (tf_config(index=2), "task index 2 is outside its 2 worker"),
        (tf_config(index="1"), "task index '1' is not an integer"),
        (tf_config(index=True), "not an integer"),
    ],
)
def test_an_unusable_tf_config_is_a_clear_error(environ, match):
    with pytest.raises(ValueError, match=match) as error:
        distribute.check_tf_config(environ)
    assert "TF_CONFIG" in str(error.value) and "--distribute multi-worker" in str(error.value)


def test_strategy_checks_its_name_and_tf_config_first(monkeypatch):
    with pytest.raises(ValueError, match="Unknown --distribute 'horovod'"):
        distribute.strategy("horovod")
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ValueError, match="TF_CONFIG is not set"):
        distribute.strategy("multi-worker")


def test_one_process_is_the_chief_and_writes_where_asked(tmp_path):
    strategy = distribute.strategy("none")
    assert strategy is tf.distribute.get_strategy()
    assert distribute.is_chief(strategy)
    assert distribute.worker_output_dir(tmp_path / "out", strategy) == tmp_path / "out"
    assert distribute.worker_backup_dir(tmp_path / "backup", strategy) == tmp_path / "backup"


def _worker(kind, index, cluster):
    resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
        tf.train.ClusterSpec(cluster), task_type=kind, task_id=index
    )
    return types.SimpleNamespace(cluster_resolver=resolver)


def test_only_the_chief_writes_to_the_output_folder(tmp_path):
    workers = {"worker": ["a:1", "b:1"]}
    assert distribute.is_chief(_worker("worker", 0, workers))
    other = _worker("worker", 1, workers)
    assert not distribute.is_chief(other)
    with_chief = {"chief": ["c:1"], **workers}
    assert distribute.is_chief(_worker("chief", 0, with_chief))
    assert not distribute.is_chief(_worker("worker", 0, with_chief))
    elsewhere = distribute.worker_output_dir(tmp_path / "out", other)
    try:
        assert elsewhere.is_dir() and tmp_path not in elsewhere.parents
        assert "worker-1" in elsewhere.name
    finally:
        elsewhere.rmdir()
    backup = distribute.worker_backup_dir(tmp_path / "backup", other)
    assert backup == tmp_path / "backup-worker-1"


def test_shard_global_batches_sets_data_sharding_that_later_steps_keep():
    dataset = distribute.shard_global_batches(tf.data.Dataset.range(8).batch(4))
    policy = dataset.repeat().prefetch(1).options().experimental_distribute.auto_shard_policy
    assert policy == tf.data.experimental.AutoShardPolicy.DATA
    assert [b.tolist() for b in dataset.as_numpy_iterator()] == [[0, 1, 2, 3], [4, 5, 6, 7]]


# === Two replicas in one process ===

MIRRORED_SCRIPT = textwrap.dedent(
    """
    import json, os
    os.environ["KERAS_BACKEND"] = "tensorflow"
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    import numpy as np
    import kd_keras
    from kd_keras import distribute

    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 6)).astype("float32")
    teacher_logits = rng.normal(size=(16, 4)).astype("float32")
    y = rng.integers(0, 4, size=(16,)).astype("int32")

    def train():
        keras.utils.set_random_seed(2)
        x_batch = {"student": x, "teacher_outputs": teacher_logits}
        ds = tf.data.Dataset.from_tensor_slices((x_batch, y))
        ds = distribute.shard_global_batches(ds.shuffle(16, seed=3).batch(8))  # reshuffles
        student = keras.Sequential(
            [keras.Input((6,)), keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(4)]
        )
        distiller = kd_keras.Distiller(None, student)
        distiller.compile(
            optimizer=keras.optimizers.SGD(0.5),
            student_loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            alpha=0.5,
            temperature=2.0,
        )
        history = distiller.fit(ds, epochs=1, verbose=0).history
        return student.get_weights(), history["loss"][0]

    one, loss_one = train()
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        two, loss_two = train()
    print(json.dumps({
        "replicas": strategy.num_replicas_in_sync,
        "weight_diff": max(float(np.abs(a - b).max()) for a, b in zip(one, two)),
        "loss_diff": abs(loss_one - loss_two),
    }))
    """
)


def test_two_replicas_train_on_the_batches_of_one_device():
    # Keras reads a first batch through an extra iterator before training under a
    # strategy, which would advance the reshuffling `shuffle` (Distiller skips it).
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    out = subprocess.run(
        [sys.executable, "-c", MIRRORED_SCRIPT],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["replicas"] == 2
    assert result["weight_diff"] < 1e-5
    assert result["loss_diff"] < 1e-5


# === Two workers on localhost against one process ===

TRAIN_SCRIPT = textwrap.dedent(
    """
    import json, os, pathlib, shutil, sys
    os.environ["KERAS_BACKEND"] = "tensorflow"
    from kd_keras import distribute

    mode, result = sys.argv[1], pathlib.Path(sys.argv[2])
    strategy = distribute.strategy(mode)  # before any other TF op

    import keras
    import numpy as np
    import tensorflow as tf
    import kd_keras
    from kd_keras.checkpoints import ResumableBackup, StopOnNonFiniteLoss

    GLOBAL_BATCH, N = 8, 32
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, 6)).astype("float32")
    teacher_logits = 2.0 * rng.normal(size=(N, 4)).astype("float32")
    y = rng.integers(0, 4, size=(N,)).astype("int32")

    def dataset(rows, shuffle):
        ds = tf.data.Dataset.from_tensor_slices(
            ({"student": x[rows], "teacher_outputs": teacher_logits[rows]}, y[rows])
        )
        if shuffle:  # seeded: the same order in every worker
            ds = ds.shuffle(len(rows), seed=3)
        return distribute.shard_global_batches(ds.batch(GLOBAL_BATCH, drop_remainder=True))

    with strategy.scope():
        keras.utils.set_random_seed(1)
        student = keras.Sequential(
            [keras.Input((6,)), keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(4)]
        )
        initial = student.get_weights()
        distiller = kd_keras.Distiller(None, student)
        distiller.compile(
            optimizer=keras.optimizers.Adam(0.01),
            student_loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            distillation_loss="forward_kl",
            alpha=0.5,
            temperature=2.0,
        )
        backup = ResumableBackup(distribute.worker_backup_dir(result / "backup", strategy))
        history = distiller.fit(
            dataset(np.arange(24), shuffle=True).repeat(),
            epochs=3,
            steps_per_epoch=2,  # 6 steps: the 3 batches of a pass, twice
            validation_data=dataset(np.arange(24, 32), shuffle=False),
            callbacks=[StopOnNonFiniteLoss(), backup],
            verbose=0,
        ).history
    export = distribute.worker_output_dir(result / "export", strategy)
    export.mkdir(parents=True, exist_ok=True)
    student.save_weights(str(export / "student.weights.h5"))
    if not distribute.is_chief(strategy):
        shutil.rmtree(export)  # a non-chief's copy: thrown away
    np.savez(result / "weights.npz", *student.get_weights())
    (result / "run.json").write_text(json.dumps({
        "replicas": strategy.num_replicas_in_sync,
        "chief": distribute.is_chief(strategy),
        "export": str(export),
        "moved": min(float(np.abs(a - b).max()) for a, b in zip(initial, student.get_weights())),
        "history": history,
    }))
    """
)


def _free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _start(script, mode, result, tf_config=None):
    result.mkdir(parents=True)
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("TF_CONFIG", None)
    if tf_config is not None:
        env["TF_CONFIG"] = json.dumps(tf_config)
    return subprocess.Popen(
        [sys.executable, str(script), mode, str(result)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _finish(processes, timeout):
    """Waits for every process; kills them all when one fails or time runs out."""
    try:
        for name, process in processes.items():
            output, _ = process.communicate(timeout=timeout)
            assert process.returncode == 0, f"{name} failed:\n{output[-4000:]}"
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
                process.communicate()


def _weights(folder):
    with np.load(folder / "weights.npz") as saved:
        return [saved[f"arr_{i}"] for i in range(len(saved.files))]


@pytest.mark.slow
def test_two_workers_end_with_the_weights_of_one_process(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(TRAIN_SCRIPT)
    workers = [f"127.0.0.1:{port}" for port in _free_ports(2)]
    processes = {
        f"worker {i}": _start(
            script,
            "multi-worker",
            tmp_path / f"worker{i}",
            {"cluster": {"worker": workers}, "task": {"type": "worker", "index": i}},
        )
        for i in range(2)
    }
    processes["one process"] = _start(script, "none", tmp_path / "single")
    _finish(processes, timeout=420)

    runs = {name: tmp_path / name for name in ("worker0", "worker1", "single")}
    info = {name: json.loads((path / "run.json").read_text()) for name, path in runs.items()}
    assert [info[n]["replicas"] for n in runs] == [2, 2, 1]
    assert [info[n]["chief"] for n in runs] == [True, False, True]
    # Only the chief's export lands in its output folder; the other's is elsewhere.
    assert pathlib.Path(info["worker0"]["export"]) == runs["worker0"] / "export"
    assert (runs["worker0"] / "export" / "student.weights.h5").is_file()
    assert not (runs["worker1"] / "export").exists()
    assert not pathlib.Path(info["worker1"]["export"]).exists()
    assert info["single"]["moved"] > 1e-3  # training changed every weight
    single = _weights(runs["single"])
    for name in ("worker0", "worker1"):
        for got, want in zip(_weights(runs[name]), single, strict=True):
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-5, err_msg=name)
        for key in ("loss", "distillation_loss", "val_loss"):
            np.testing.assert_allclose(
                info[name]["history"][key], info["single"]["history"][key], rtol=0, atol=1e-5
            )
    assert len(info["single"]["history"]["loss"]) == 3


# === A dead worker ===

RERUN = "rerun the same command on every worker to resume from the last checkpoint"


def test_the_peer_timeout_comes_from_the_environment():
    assert distribute.peer_timeout({}) == distribute.DEFAULT_PEER_TIMEOUT == 60.0
    assert distribute.peer_timeout({"KD_KERAS_PEER_TIMEOUT": " 5 "}) == 5.0
    assert distribute.peer_timeout({"KD_KERAS_PEER_TIMEOUT": "0"}) == 0.0  # watchdog off
    for bad in ("soon", "-1", "inf", "nan"):
        with pytest.raises(ValueError, match=f"KD_KERAS_PEER_TIMEOUT='{bad}': expected seconds"):
            distribute.peer_timeout({"KD_KERAS_PEER_TIMEOUT": bad})


def _dead_address():
    """A `127.0.0.1:port` that refuses connections (its socket is closed)."""
    return f"127.0.0.1:{_free_ports(1)[0]}"


def test_the_watchdog_names_a_peer_that_stops_answering():
    server = socket.create_server(("127.0.0.1", 0))
    address = f"127.0.0.1:{server.getsockname()[1]}"
    lost = []
    peers = [("worker 1", address)]
    watchdog = distribute._Watchdog(peers, timeout=0.5, on_lost=lost.append, interval=0.05)
    watchdog.start()
    try:
        time.sleep(1.0)
        assert lost == []  # answering: more than the timeout, and nothing said
        server.close()
        closed = time.monotonic()
        while not lost and time.monotonic() < closed + 10:
            time.sleep(0.02)
        waited = time.monotonic() - closed
    finally:
        watchdog.stop()
        server.close()
    assert 0.5 - 0.1 <= waited < 3  # silent for the timeout since its last answer
    assert len(lost) == 1
    assert re.fullmatch(
        rf"worker 1 \({address}\) is gone \(connection refused for 0\.\d s\); {RERUN}", lost[0]
    )

    disarmed = distribute._Watchdog(peers, timeout=0.1, on_lost=lost.append, interval=0.05)
    disarmed.armed = False  # training started: the collectives report a gone peer
    disarmed.start()
    time.sleep(0.5)
    disarmed.stop()
    assert len(lost) == 1


WATCHDOG_SCRIPT = textwrap.dedent(
    """
    import sys, time
    sys.argv = ["kd-keras", "distill", "--distribute", "multi-worker"]
    from kd_keras.cli import quiet_tensorflow
    quiet_tensorflow()  # as the command line imports TensorFlow
    from kd_keras import distribute
    print("teacher pass", flush=True)
    peers = [("worker 1", ADDRESS)]
    distribute._Watchdog(peers, 0.5, distribute._stop_process, interval=0.1).start()
    time.sleep(60)  # the main thread busy elsewhere: a teacher pass
    print("not stopped", flush=True)
    """
)


def test_the_watchdog_ends_the_process_with_one_line_and_status_2():
    address = _dead_address()
    script = WATCHDOG_SCRIPT.replace("ADDRESS", repr(address))
    env = {k: v for k, v in os.environ.items() if not k.startswith("TF_CPP")}
    env["CUDA_VISIBLE_DEVICES"] = ""
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 2, done.stderr
    assert time.monotonic() - started < 50  # not the 60 s of the sleep
    assert done.stdout == "teacher pass\n"
    assert re.fullmatch(
        rf"kd-keras distill: error: worker 1 \({address}\) is gone \(connection refused for "
        rf"0\.\d s\); {RERUN}\n",
        done.stderr,
    )


def test_a_collective_that_lost_its_peer_is_one_error_naming_it(monkeypatch):
    server = socket.create_server(("127.0.0.1", 0))  # alive to a connection
    alive, dead = f"127.0.0.1:{server.getsockname()[1]}", _dead_address()
    peers = [("worker 1", dead), ("worker 2", alive)]
    monkeypatch.setattr(distribute, "num_workers", lambda strategy: 3)
    monkeypatch.setattr(distribute, "_peers", lambda strategy: peers)
    refused = tf.errors.UnavailableError(None, None, "Collective ops is aborted by: failed")
    try:
        with pytest.raises(distribute.WorkerLostError) as error:
            with distribute.lost_peers(None):
                raise refused
        assert str(error.value) == f"worker 1 ({dead}) is gone (connection refused); {RERUN}"
        assert isinstance(error.value, OSError)  # the command line's one-line errors

        peers.pop(0)  # now alive to a connection, but named by TensorFlow's message
        heartbeats = tf.errors.UnavailableError(
            None, None, "The following tasks are unhealthy: /job:worker/replica:0/task:2"
        )
        with pytest.raises(distribute.WorkerLostError, match=r"^worker 2 \(127\.0\.0\.1:\d+\) "):
            with distribute.lost_peers(None):
                raise heartbeats
        other = tf.errors.UnavailableError(None, None, "a file system is unavailable")
        with pytest.raises(tf.errors.UnavailableError, match="file system"):
            with distribute.lost_peers(None):  # not a lost peer: left as it is
                raise other
    finally:
        server.close()

    watchdog = distribute._Watchdog(peers, timeout=60, on_lost=print)
    monkeypatch.setattr(distribute, "_WATCHDOG", watchdog)
    with distribute.peers_needed(None):
        assert not watchdog.armed  # training: the collectives report a gone peer


# === `kd-keras distill` on two workers, one killed mid-training, then rerun ===

DISTILL_SETTINGS = {
    "unlabeled-limit": 60,
    "augment": 1,
    "repaired-pairs": 20,
    "embedding-dim": 16,
    "hidden-dim": 8,
    "embedding-init": "random",
    "epochs": 2,
    "batch-size": 32,
    "checkpoints-per-epoch": 4,  # 8 parts: most of the training after the first checkpoint
    "throughput-seconds": 0.2,
    "dropout": 0.0,  # each replica would draw its own masks
    "fidelity": "none",
}


@pytest.fixture
def tiny_distill(tmp_path, make_tiny_teacher, minilm_vocabulary):
    """`start(name, tf_config=None)`: a tiny `kd-keras distill` in `tmp_path/name`, as
    a subprocess (its output in `tmp_path/name.log`), and the processes started."""
    teacher = make_tiny_teacher(minilm_vocabulary, num_layers=1, sequence_length=128)
    teacher.save(str(tmp_path / "teacher.keras"))
    sources = {"train": ("stsb", "sts-train.csv", 240), "dev": ("stsb", "sts-dev.csv", 60)}
    sources.update(test=("stsb", "sts-test.csv", 80), unlabeled=("sst2", "sentiment-train", 60))
    flags = [f"--teacher={tmp_path / 'teacher.keras'}"]
    for flag, (folder, name, count) in sources.items():
        with open(data_path(folder, name), encoding="utf-8") as f:
            (tmp_path / flag).write_text("".join(f.readlines()[:count]), encoding="utf-8")
        flags.append(f"--{flag}={tmp_path / flag}")
    flags += [f"--{key}={value}" for key, value in DISTILL_SETTINGS.items()]
    processes = []

    def start(name, tf_config=None):
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TF_C", "KD_KERAS_"))}
        env["CUDA_VISIBLE_DEVICES"] = ""
        argv = [*flags, f"--output-dir={tmp_path / name}", f"--cache-dir={tmp_path / name}-c"]
        if tf_config is not None:
            env["TF_CONFIG"] = json.dumps(tf_config)
            argv.append("--distribute=multi-worker")
        log = open(tmp_path / f"{name}.log", "a", encoding="utf-8")
        code = f"import sys; from kd_keras.cli import main; sys.exit(main({['distill', *argv]!r}))"
        process = subprocess.Popen(
            [sys.executable, "-c", code], env=env, stdout=log, stderr=subprocess.PIPE, text=True
        )
        processes.append(process)
        return process

    yield start
    for process in processes:
        if process.poll() is None:
            process.kill()
        process.communicate()


def _cluster(n):
    return {"worker": [f"127.0.0.1:{port}" for port in _free_ports(n)]}


def _task(cluster, index):
    return {"cluster": cluster, "task": {"type": "worker", "index": index}}


@pytest.mark.slow
def test_a_killed_worker_stops_the_other_and_a_rerun_ends_with_the_same_student(
    tiny_distill, tmp_path
):
    single = tiny_distill("single")  # the reference: one process, never interrupted
    cluster = _cluster(2)
    workers = [tiny_distill(f"worker{i}", _task(cluster, i)) for i in range(2)]
    checkpoint = tmp_path / "worker1" / "backup-worker-1" / "epoch-000001.json"
    deadline = time.monotonic() + 500
    while not checkpoint.exists() and time.monotonic() < deadline:
        assert workers[1].poll() is None, workers[1].communicate()[1]
        time.sleep(0.05)
    workers[1].kill()  # SIGKILL, mid-training: 7 of its 8 parts to go
    # It stops rather than hangs (the timeout), on TensorFlow's own failed collective
    # ("connection refused", not the watchdog's silence): how soon TensorFlow notices
    # depends on the machine's load (6 s here, 32 s once in CI), so no bound on it.
    _, err = workers[0].communicate(timeout=distribute.DEFAULT_PEER_TIMEOUT + 120)
    assert workers[0].returncode == 2, err
    assert err.splitlines() == [
        f"kd-keras distill: error: worker 1 ({cluster['worker'][1]}) is gone (connection "
        f"refused); {RERUN}"
    ]
    assert not (tmp_path / "worker0" / "student.keras").exists()

    # The same command on both workers (new ports: the old ones may linger): they resume
    # from the checkpoint they both have and end with the uninterrupted run's student.
    cluster = _cluster(2)
    workers = [tiny_distill(f"worker{i}", _task(cluster, i)) for i in range(2)]
    for name, process in {"worker 0": workers[0], "worker 1": workers[1], "one": single}.items():
        _, err = process.communicate(timeout=600)
        assert process.returncode == 0, f"{name}: {err[-3000:]}"
    for i in range(2):
        log = (tmp_path / f"worker{i}.log").read_text(encoding="utf-8")
        assert re.search(r"resuming from the checkpoint after [1-7] of 8 parts", log), log
    chief = keras.saving.load_model(tmp_path / "worker0" / "student.keras")
    one = keras.saving.load_model(tmp_path / "single" / "student.keras")
    assert max(float(np.abs(w).max()) for w in one.get_weights()) > 1e-2
    for got, want in zip(chief.get_weights(), one.get_weights(), strict=True):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    metrics = [
        json.loads((tmp_path / n / "metrics.json").read_text()) for n in ("worker0", "single")
    ]
    np.testing.assert_allclose(
        metrics[0]["training"]["history"]["loss"],
        metrics[1]["training"]["history"]["loss"],
        rtol=1e-4,
    )
    assert len(metrics[0]["training"]["history"]["loss"]) == 8  # the whole run's history
