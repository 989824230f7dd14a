"""Labels folders and corpora on an object store: TensorFlow's in-memory `ram://` file system.

`ram://` lives in this process's memory, so everything here runs in the test
process: `label_files`, `kd-keras label` through `cli.main`, and Beam's
DirectRunner in its in-memory mode. A local run of the same inputs is the
reference: the same manifest key, the same rows, byte-identical shards.
"""

import errno
import gzip
import json
import subprocess
import sys
import types
import uuid

import numpy as np
import pytest
import tensorflow as tf

from kd_keras import cli, filesystems, storage, teacher_pass
from kd_keras.data import DataError, corpus_files, iter_corpus
from kd_keras.labels import MANIFEST, label_files, labels_dataset, read_labels, read_manifest
from kd_keras.recipes.sentence_pairs import job
from kd_keras.storage import CacheError, DiskFullError, file_sha256

WORDS = "the a cat dog sat ran on under mat tree big small red".split()
gfile = tf.io.gfile


@pytest.fixture
def ram():
    """A fresh `ram://` folder, removed afterwards."""
    root = f"ram://kd-keras-test-{uuid.uuid4().hex[:8]}"
    gfile.makedirs(root)
    yield root
    gfile.rmtree(root)


@pytest.fixture(scope="module")
def teacher(make_tiny_teacher):
    return make_tiny_teacher(hidden_dim=8, intermediate_dim=16, sequence_length=32)


@pytest.fixture
def corpus(tmp_path, ram):
    """23 sentences in a plain file (a byte-order mark, blank lines, a lone `\\r`) and a
    `.gz` one (`\\r\\n`), the same bytes locally and under `ram://.../corpus/`."""
    rng = np.random.default_rng(0)
    sentences = [" ".join(rng.choice(WORDS, size=rng.integers(1, 12))) for _ in range(23)]
    plain = "\ufeff" + "\n".join(sentences[:5]) + "\r" + "\n".join(sentences[5:10]) + "\n\n  \n"
    files = {
        "part1.txt": plain.encode("utf-8"),
        "part2.txt.gz": gzip.compress("\r\n".join(sentences[10:]).encode("utf-8"), mtime=0),
    }
    (tmp_path / "corpus").mkdir()
    gfile.makedirs(f"{ram}/corpus")
    for name, data in files.items():
        (tmp_path / "corpus" / name).write_bytes(data)
        with gfile.GFile(f"{ram}/corpus/{name}", "wb") as f:
            f.write(data)
    local = [str(tmp_path / "corpus" / name) for name in files]
    remote = [f"{ram}/corpus/{name}" for name in files]
    return local, remote, sentences


def _all(directory):
    sentences, embeddings = [], []
    for s, e in read_labels(directory):
        sentences += s
        embeddings.append(e)
    return sentences, np.concatenate(embeddings)


def _manifest(directory):
    return json.loads(filesystems.read_text(filesystems.join(directory, MANIFEST)))


def _shards(manifest):
    return {e["file"]: e["sha256"] for e in manifest["shards"]}


def test_the_corpus_reads_the_same_from_an_object_store(corpus, ram):
    local, remote, sentences = corpus
    assert corpus_files([f"{ram}/corpus/*.txt*"]) == remote  # tf.io.gfile.glob, sorted
    assert list(iter_corpus(remote)) == list(iter_corpus(local)) == sentences
    assert list(iter_corpus([f"{ram}/corpus/part*"], limit=7)) == sentences[:7]
    for pattern, message in (
        (f"{ram}/corpus/missing.txt", r"missing\.txt: no such file"),
        (f"{ram}/corpus/*.csv", "no file matches"),
        (f"{ram}/corpus", "is a folder"),
    ):
        with pytest.raises(DataError, match=message):
            list(iter_corpus([pattern]))


def test_labels_on_an_object_store_resume_and_equal_a_local_run(
    teacher, corpus, tmp_path, ram, monkeypatch
):
    local_inputs, remote_inputs, sentences = corpus
    local = tmp_path / "labels"
    label_files(teacher, local_inputs, local, shard_size=5, progress=False)
    out = f"{ram}/labels"
    calls = []
    real = teacher_pass.run_teacher

    def dies_on_the_third_shard(*args, **kwargs):  # a kill, after two finished shards
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(teacher_pass, "run_teacher", dies_on_the_third_shard)
    with pytest.raises(KeyboardInterrupt):
        label_files(teacher, remote_inputs, out, shard_size=5, progress=False)
    half = _manifest(out)
    assert not half["complete"] and [e["file"] for e in half["shards"]] == [
        "shard-00000.npz",
        "shard-00001.npz",
    ]
    with pytest.raises(CacheError, match="no finished labels"):
        list(read_labels(out))

    calls.clear()
    monkeypatch.setattr(
        teacher_pass, "run_teacher", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    result = label_files(teacher, remote_inputs, out, shard_size=5, progress=False)
    assert (result.rows, result.shards, result.reused, len(calls)) == (23, 5, 2, 3)
    assert result.directory == out
    done, want = _manifest(out), _manifest(local)
    assert done["complete"] and done["key"] == want["key"]  # same teacher, bytes, settings
    assert _shards(done) == _shards(want)  # byte-identical shards, the two kept ones included
    assert {k: v for k, v in _shards(done).items() if k in _shards(half)} == _shards(half)
    for entry in done["shards"]:
        assert file_sha256(f"{out}/{entry['file']}") == entry["sha256"]
    assert sorted(gfile.listdir(out)) == [MANIFEST, *sorted(_shards(want))]  # no temporaries
    got_sentences, got = _all(out)
    assert got_sentences == sentences
    np.testing.assert_array_equal(got, _all(local)[1])
    np.testing.assert_allclose(got, real(teacher, sentences), atol=1e-6)

    # A damaged shard on the store is labeled again, alone.
    with gfile.GFile(f"{out}/shard-00003.npz", "wb") as f:
        f.write(b"damaged")
    calls.clear()
    assert label_files(teacher, remote_inputs, out, shard_size=5, progress=False).reused == 4
    assert len(calls) == 1 and _shards(_manifest(out)) == _shards(want)


def test_labels_dataset_streams_an_object_store_folder(teacher, corpus, tmp_path, ram):
    local_inputs, remote_inputs, sentences = corpus
    out = f"{ram}/labels"
    label_files(teacher, remote_inputs, out, shard_size=4, progress=False)
    label_files(teacher, local_inputs, tmp_path / "local", shard_size=4, progress=False)
    expected = dict(zip(*_all(tmp_path / "local"), strict=True))
    ds, rows = labels_dataset([out], tf.constant, shuffle=True, seed=3)
    seen = [(s.numpy().decode(), e.numpy()) for s, e in ds]
    assert rows == 23 and sorted(s for s, _ in seen) == sorted(sentences)
    for s, e in seen:
        np.testing.assert_array_equal(e, expected[s])
    # A shard damaged after the run is an error naming it when the stream reaches it.
    with gfile.GFile(f"{out}/shard-00002.npz", "wb") as f:
        f.write(b"damaged")
    with pytest.raises(Exception, match="shard-00002.npz is missing or fails its checksum"):
        list(ds)


def test_command_line_labels_into_an_object_store(teacher, corpus, tmp_path, ram, capsys):
    local_inputs, _, sentences = corpus
    teacher_path = tmp_path / "teacher.keras"
    teacher.save(teacher_path)
    out = f"{ram}/out"
    argv = ["label", "--teacher", str(teacher_path), "--input", f"{ram}/corpus/*.txt*"]
    assert cli.main([*argv, "--output", out, "--shard-size", "10", "--no-progress"]) == 0
    assert "23 sentences in 3 shards (0 kept from an earlier run)" in capsys.readouterr().out
    label_files(teacher, local_inputs, tmp_path / "local", shard_size=10, progress=False)
    assert _shards(_manifest(out)) == _shards(_manifest(tmp_path / "local"))
    assert _all(out)[0] == sentences
    assert storage.LOCK_FILE not in gfile.listdir(out)  # object stores are not locked
    # A missing input on the store is one line, before the teacher loads.
    assert cli.main(["label", "--input", f"{ram}/corpus/nope.txt", "--output", out]) == 2
    assert capsys.readouterr().err.strip() == (
        f"kd-keras label: error: {ram}/corpus/nope.txt: no such file"
    )


def test_a_full_object_store_is_a_disk_full_error(ram, monkeypatch):
    path = f"{ram}/a/manifest.json"
    storage.write_json_atomic(path, {"old": True})
    real = tf.io.gfile.GFile

    class Full(real):
        def write(self, data):
            raise tf.errors.ResourceExhaustedError(
                None, None, f"{self.name}; No space left on device"
            )

    monkeypatch.setattr(tf.io.gfile, "GFile", Full)
    with storage.phase("labeling"), pytest.raises(DiskFullError) as caught:
        storage.write_json_atomic(path, {"new": True})
    assert str(caught.value) == (
        f"no space left on device writing {path} (labeling): free space and rerun the same "
        "command; finished work is kept"
    )
    assert caught.value.errno == errno.ENOSPC
    assert gfile.listdir(f"{ram}/a") == ["manifest.json"]  # the temporary object is gone
    monkeypatch.setattr(tf.io.gfile, "GFile", real)
    assert json.loads(filesystems.read_text(path)) == {"old": True}
    storage.write_json_atomic(path, {"new": True})
    assert json.loads(filesystems.read_text(path)) == {"new": True}


def test_distill_accepts_labels_on_an_object_store(teacher, make_tiny_teacher, corpus, ram):
    _, remote_inputs, _ = corpus
    out = f"{ram}/labels"
    label_files(teacher, remote_inputs, out, shard_size=8, progress=False)
    c = types.SimpleNamespace(labels=out, teacher="tiny", teacher_precision="float32")
    folders = job._label_folders(c, teacher, [], None, progress=False)
    assert len(folders) == 1 and read_manifest(out)["rows"] == 23
    other = make_tiny_teacher(hidden_dim=8, intermediate_dim=16, sequence_length=32, seed=1)
    with pytest.raises(Exception, match="was labeled by another teacher"):
        job._label_folders(c, other, [], None, progress=False)
    with pytest.raises(Exception, match="holds no finished labels"):
        job._label_folders(
            types.SimpleNamespace(**{**vars(c), "labels": f"{ram}/none"}),
            teacher,
            [],
            None,
            progress=False,
        )


def test_distill_streams_labels_from_an_object_store(teacher, corpus, ram):
    _, remote_inputs, sentences = corpus
    out = f"{ram}/labels"
    label_files(teacher, remote_inputs, out, shard_size=8, progress=False)
    c = types.SimpleNamespace(labels=out, teacher="tiny", teacher_precision="float32")
    folders = job._label_folders(c, teacher, [], None, progress=False)
    assert [s for folder in folders for s in _all(folder)[0]] == sentences
    assert labels_dataset(folders, tf.constant)[1] == 23


# === Apache Beam, in this process ===

IN_MEMORY = ["--direct_running_mode=in_memory", "--direct_num_workers=1"]


@pytest.fixture
def labels_beam():
    pytest.importorskip("apache_beam")
    from kd_keras import labels_beam

    return labels_beam


def test_beam_refuses_ram_paths_its_worker_processes_cannot_see(labels_beam, corpus, ram):
    _, remote_inputs, _ = corpus
    for args in (None, ["--direct_running_mode=multi_processing"], ["--runner=FlinkRunner"]):
        with pytest.raises(ValueError, match="in this process's memory"):
            labels_beam.label_files_beam("unused", remote_inputs, f"{ram}/out", pipeline_args=args)
    assert not gfile.exists(f"{ram}/out")


@pytest.mark.slow
def test_beam_labels_into_an_object_store_and_resumes(
    labels_beam, teacher, corpus, tmp_path, ram, capsys
):
    local_inputs, remote_inputs, sentences = corpus
    local = tmp_path / "local"
    settings = dict(shard_size=5, teacher_spec="tiny", progress=False)
    label_files(teacher, local_inputs, local, **settings)
    out = f"{ram}/beam"
    result = labels_beam.label_files_beam(
        teacher, remote_inputs, out, pipeline_args=IN_MEMORY, **settings
    )
    assert (result.rows, result.shards, result.reused) == (23, 5, 0)
    got, want = _manifest(out), _manifest(local)
    assert got["complete"] and got["key"] == want["key"]
    assert [e["rows"] for e in got["shards"]] == [e["rows"] for e in want["shards"]]
    assert sorted(gfile.listdir(out)) == sorted(p.name for p in local.iterdir())  # work gone
    got_sentences, got_embeddings = _all(out)
    assert got_sentences == sentences
    np.testing.assert_allclose(got_embeddings, _all(local)[1], atol=1e-6)

    # A killed run: the manifest lists the first two shards, shard 3 is gone. The
    # command line (Beam, in this process) labels only the missing ones.
    gfile.remove(f"{out}/shard-00003.npz")
    killed = {**got, "complete": False, "shards": got["shards"][:2], "rows": 10}
    storage.write_json_atomic(f"{out}/{MANIFEST}", killed)
    teacher_path = tmp_path / "teacher.keras"
    teacher.save(teacher_path)
    argv = ["label", "--teacher", str(teacher_path), "--input", *remote_inputs, "--output", out]
    argv += ["--shard-size", "5", "--no-progress", "--runner", "beam", "--", *IN_MEMORY]
    assert cli.main(argv) == 0
    assert "23 sentences in 5 shards (2 kept from an earlier run)" in capsys.readouterr().out
    again = _manifest(out)
    assert {k: v for k, v in _shards(again).items() if k in _shards(killed)} == _shards(killed)
    np.testing.assert_allclose(_all(out)[1], _all(local)[1], atol=1e-6)


def test_the_command_lines_checks_leave_object_store_inputs_to_the_run():
    # `check` runs before TensorFlow loads; tf.io.gfile globs the inputs in the run.
    code = (
        "import argparse, sys\n"
        "from kd_keras.cli import label\n"
        "args = argparse.Namespace(shard_size=4, batch_size=2, limit=None, runner='local',\n"
        "                          extra_args=[], input=['gs://bucket/corpus/*.txt.gz'])\n"
        "label.check(args)\n"
        "print(args.files, 'tensorflow' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['gs://bucket/corpus/*.txt.gz'] False"
