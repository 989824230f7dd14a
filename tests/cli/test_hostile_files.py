"""Hostile and damaged files through the real command lines (subprocesses of `kd-keras`).

- A Hugging Face BERT folder whose `pytorch_model.bin` pickle runs `os.system`
  (zip and legacy formats), handed to `kd-keras embed`, `export` and `distill`:
  refused with exit 2 and one line naming the callable and the file; nothing
  runs, nothing is written.
- Damaged files, truncated or with one flipped bit: a label shard (`kd-keras
  label` labels it again), a student `.keras` (`kd-keras embed` refuses it),
  and, in a killed `kd-keras distill` run, its checkpoint, its teacher cache,
  its vocabulary cache and a `--labels` shard (the rerun refuses before any
  training on them, naming the file and what to do; the file is left as it
  was).
"""

import collections
import json
import os
import pathlib
import pickle
import pickletools
import shutil
import signal
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest

from kd_keras.data import data_path
from kd_keras.labels import read_labels, read_manifest
from kd_keras.storage import CacheError, file_sha256

CONSOLE_SCRIPT = pathlib.Path(sys.executable).with_name("kd-keras")
KD_KERAS = [str(CONSOLE_SCRIPT)] if CONSOLE_SCRIPT.is_file() else [sys.executable, "-m", "kd_keras"]
TINY_BERT_CONFIG = {
    "model_type": "bert",
    "vocab_size": 31,
    "hidden_size": 16,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 32,
    "hidden_act": "gelu",
    "max_position_embeddings": 16,
    "type_vocab_size": 2,
    "layer_norm_eps": 1e-12,
}
LEGACY_MAGIC, LEGACY_PROTOCOL = 0x1950A86A20F9469CFC6C, 1001


def kd_keras(argv, cwd, timeout=300):
    """`kd-keras ARGV` in a subprocess: `(exit code, stdout, stderr lines)`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TF_C", "KD_KERAS_"))}
    env["CUDA_VISIBLE_DEVICES"] = ""  # the command line's own quiet TensorFlow, as a user has
    done = subprocess.run(
        [*KD_KERAS, *map(str, argv)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return done.returncode, done.stdout, done.stderr.splitlines()


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def flip_a_bit(path):
    """Flips the lowest bit of the byte in the middle of the file."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


DAMAGE = {"truncated": truncate, "one bit flipped": flip_a_bit}


# === A pickle that runs a shell command ===


class Exploit:
    """Unpickles as `os.system(command)` (pickled as `posix.system`)."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def hostile_pickle(command):
    state = collections.OrderedDict([("embeddings.word_embeddings.weight", Exploit(command))])
    return pickle.dumps(state, protocol=2)


def write_hostile_bin(path, command, legacy):
    """A `pytorch_model.bin` whose pickle calls `os.system(command)`: `torch.save`'s zip
    layout, or the legacy one (three header pickles, the state, the storage keys)."""
    payload = hostile_pickle(command)
    if legacy:
        header = [LEGACY_MAGIC, LEGACY_PROTOCOL, {"protocol_version": 1001, "little_endian": True}]
        parts = [pickle.dumps(x, protocol=2) for x in header]
        path.write_bytes(b"".join([*parts, payload, pickle.dumps([], protocol=2)]))
    else:
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("archive/data.pkl", payload)
            archive.writestr("archive/byteorder", "little")
            archive.writestr("archive/version", "3\n")
    return path


def test_the_payload_is_live_for_the_standard_unpickler(tmp_path):
    # The reference the refusals below are measured against: plain `pickle` runs it.
    canary = tmp_path / "canary"
    payload = hostile_pickle(f"touch {canary}")
    globals_named = [arg for op, arg, _ in pickletools.genops(payload) if op.name == "GLOBAL"]
    assert "posix system" in globals_named or "nt system" in globals_named
    pickle.loads(payload)
    assert canary.exists()


@pytest.fixture
def hostile_folder(tmp_path, tiny_vocabulary, request):
    """`(folder, sentinel)`: config.json, vocab.txt and a hostile pytorch_model.bin."""
    folder = tmp_path / "bert"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(TINY_BERT_CONFIG), encoding="utf-8")
    (folder / "vocab.txt").write_text("\n".join(tiny_vocabulary) + "\n", encoding="utf-8")
    sentinel = tmp_path / "SENTINEL"
    write_hostile_bin(folder / "pytorch_model.bin", f"touch {sentinel}", request.param == "legacy")
    return folder, sentinel


def _pairs_file(path):
    rows = ["sentence1,sentence2,score", "a cat sat,a cat sits,4.5", "a dog ran,the sky,0.5"]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def _argv(command, folder, tmp_path):
    """`(argv, outputs that must not appear)` of each command on the hostile folder."""
    if command == "embed":
        text = tmp_path / "x.txt"
        text.write_text("a b c\nd e\n", encoding="utf-8")
        return ["embed", "--model", folder, "--input", text, "--output", tmp_path / "y.npy"], [
            tmp_path / "y.npy"
        ]
    if command == "export":
        return ["export", "--teacher", folder, "--out", tmp_path / "OUT"], [tmp_path / "OUT"]
    pairs = _pairs_file(tmp_path / "pairs.csv")
    run = tmp_path / "RUN"
    argv = ["distill", "--teacher", folder, "--output-dir", run, "--cache-dir", tmp_path / "c"]
    argv += ["--train", pairs, "--dev", pairs, "--test", pairs, "--unlabeled", "none"]
    argv += ["--fidelity", "none", "--epochs", "1", "--max-pairs", "2"]
    outputs = ["student", "student.keras", "student.preprocessor.json", "metrics.json"]
    return argv, [run / name for name in outputs + ["report.md", "backup"]]


@pytest.mark.parametrize(
    "hostile_folder",
    ["zip", pytest.param("legacy", marks=pytest.mark.slow)],
    indirect=True,
)
@pytest.mark.parametrize("command", ["embed", "export", "distill"])
def test_a_pickle_that_runs_a_command_is_refused_by_every_command(
    hostile_folder, command, tmp_path
):
    folder, sentinel = hostile_folder
    argv, outputs = _argv(command, folder, tmp_path)
    before = set(tmp_path.iterdir())
    code, _, err = kd_keras(argv, cwd=tmp_path)
    assert code == 2, err
    assert len(err) == 1, err
    assert err[0].startswith(f"kd-keras {command}: error: {folder / 'pytorch_model.bin'}: ")
    assert "refers to `posix.system`, which is not tensor data" in err[0]
    assert "nothing from the file was run" in err[0]
    assert not sentinel.exists()
    for path in outputs:
        assert not path.exists(), path
    left = {p.name for p in set(tmp_path.iterdir()) - before}
    # `distill` makes its run folder (config.json only) and cache folder before it
    # loads the teacher; nothing else is left, no temporary file anywhere.
    assert left <= ({"RUN", "c"} if command == "distill" else set()), left
    if command == "distill" and (tmp_path / "RUN").exists():
        assert {p.name for p in (tmp_path / "RUN").iterdir()} <= {"config.json"}
    assert not list(tmp_path.rglob(".*tmp-*"))


# === A damaged label shard: `kd-keras label` labels it again ===

CORPUS = [" ".join("abcdefghijklmnopqrstuvwxyz"[(i * 5) % 26 :][: i % 7 + 1]) for i in range(24)]


@pytest.fixture(scope="module")
def labeled(tmp_path_factory, make_tiny_teacher):
    """A tiny teacher `.keras`, a corpus, and its labels in 3 shards by `kd-keras label`."""
    root = tmp_path_factory.mktemp("label")
    teacher = make_tiny_teacher(hidden_dim=8, intermediate_dim=16, sequence_length=16)
    teacher.save(str(root / "teacher.keras"))
    (root / "corpus.txt").write_text("\n".join(CORPUS) + "\n", encoding="utf-8")
    argv = ["label", "--teacher", "teacher.keras", "--input", "corpus.txt", "--output"]
    argv += ["labels", "--shard-size", "8"]
    code, out, err = kd_keras(argv, cwd=root)
    assert code == 0, err
    assert [e["file"] for e in read_manifest(root / "labels")["shards"]] == [
        f"shard-{i:05d}.npz" for i in range(3)
    ]
    return root, argv, list(read_labels(root / "labels"))


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_label_shard_is_labeled_again(labeled, damage, tmp_path):
    source, argv, expected = labeled
    root = tmp_path / "copy"
    shutil.copytree(source, root)
    shard = root / "labels" / "shard-00001.npz"
    others = {name: (root / "labels" / name).read_bytes() for name in ("shard-00000.npz",)}
    DAMAGE[damage](shard)
    damaged = shard.read_bytes()
    with pytest.raises(CacheError, match="fails its checksum"):
        list(read_labels(root / "labels"))  # never read as data
    code, out, err = kd_keras(argv, cwd=root)
    assert code == 0, err
    assert "labels: labels/shard-00001.npz is missing or fails its checksum" in out
    assert shard.read_bytes() != damaged
    for name, data in others.items():  # the good shards are kept as they were
        assert (root / "labels" / name).read_bytes() == data
    entry = read_manifest(root / "labels")["shards"][1]
    assert file_sha256(shard) == entry["sha256"]
    again = list(read_labels(root / "labels"))
    assert (
        [s for s, _ in again] == [s for s, _ in expected] == [CORPUS[:8], CORPUS[8:16], CORPUS[16:]]
    )
    for (_, got), (_, want) in zip(again, expected, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-6)


# === A damaged student .keras: `kd-keras embed` refuses it ===


@pytest.fixture(scope="module")
def student_file(tmp_path_factory, tiny_vocabulary):
    import keras

    from kd_keras import serving
    from kd_keras.models.bert_tokenizer import BertPreprocessor
    from kd_keras.models.bilstm import build_bilstm_encoder

    folder = tmp_path_factory.mktemp("student")
    keras.utils.set_random_seed(4)
    student = build_bilstm_encoder(len(tiny_vocabulary), embedding_dim=6, hidden_dim=4)
    preprocessor = BertPreprocessor(tiny_vocabulary, sequence_length=8)
    serving.save_student(student, folder / "student.keras", preprocessor)
    return folder


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_student_keras_is_refused_in_one_line(student_file, damage, tmp_path):
    for name in ("student.keras", "student.preprocessor.json"):
        shutil.copy(student_file / name, tmp_path / name)
    (tmp_path / "x.txt").write_text("a b c\nz\n", encoding="utf-8")
    model = tmp_path / "student.keras"
    DAMAGE[damage](model)
    argv = ["embed", "--model", model, "--input", "x.txt", "--output", "y.npy"]
    code, _, err = kd_keras(argv, cwd=tmp_path)
    assert code == 2, err
    assert len(err) == 1, err
    why = "not a whole zip archive" if damage == "truncated" else "fails its CRC-32 check"
    assert err[0].startswith(f"kd-keras embed: error: {model} is damaged (")
    assert why in err[0]
    assert err[0].endswith(
        "nothing was loaded from it. Export it again from its training run, or retrain it "
        "(kd-keras distill)."
    )
    assert not (tmp_path / "y.npy").exists()


# === A killed `kd-keras distill` run: its checkpoint and caches damaged ===


def _slice(src, dst, count):
    with open(src, encoding="utf-8") as f:
        dst.write_text("".join(f.readlines()[:count]), encoding="utf-8")
    return dst


@pytest.fixture(scope="module")
def killed_run(tmp_path_factory, make_tiny_teacher, minilm_vocabulary):
    """`(root, argv)`: a tiny `kd-keras distill` run SIGKILLed after its first checkpoint
    (`root/RUN/backup`), its caches (teacher pass, labels, vocabulary) in `root/CACHE`."""
    root = tmp_path_factory.mktemp("killed")
    teacher = make_tiny_teacher(minilm_vocabulary, num_layers=1, sequence_length=128)
    teacher.save(str(root / "teacher.keras"))
    _slice(data_path("stsb", "sts-train.csv"), root / "train.tsv", 160)
    _slice(data_path("stsb", "sts-dev.csv"), root / "dev.tsv", 40)
    _slice(data_path("sst2", "sentiment-train"), root / "unlabeled.txt", 60)
    argv = ["distill", "--teacher=teacher.keras", "--train=train.tsv", "--dev=dev.tsv"]
    argv += ["--test=dev.tsv", "--unlabeled=unlabeled.txt", "--unlabeled-limit=60"]
    argv += ["--augment=1", "--repaired-pairs=20", "--embedding-dim=16", "--hidden-dim=8"]
    argv += ["--embedding-init=vocab", "--epochs=2", "--batch-size=32", "--fidelity=none"]
    argv += ["--checkpoints-per-epoch=4", "--throughput-seconds=0.2", "--output-dir=RUN"]
    argv += ["--cache-dir=CACHE"]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    process = subprocess.Popen([*KD_KERAS, *argv], cwd=root, env=env, stdout=subprocess.DEVNULL)
    checkpoint = root / "RUN" / "backup" / "epoch-000001.json"
    try:
        deadline = time.monotonic() + 400
        while not checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert checkpoint.exists(), "the run wrote no checkpoint"
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    assert not (root / "RUN" / "metrics.json").exists()  # killed during training
    # Labels of the same teacher for `--labels`, by `kd-keras label`.
    label = ["label", "--teacher", "teacher.keras", "--input", "unlabeled.txt", "--output", "L"]
    code, _, err = kd_keras([*label, "--shard-size", "16"], cwd=root)
    assert code == 0, err
    return root, argv


def _damaged_file(root, kind):
    if kind == "checkpoint":  # the one complete checkpoint of the killed run
        found = sorted((root / "RUN" / "backup").glob("epoch-*.weights.h5"))
        assert len(found) == 1, found
        return found[0]
    if kind == "labels shard":
        return root / "L" / "shard-00001.npz"
    pattern = {"teacher cache": "teacher-*.npz", "vocabulary cache": "vocabulary-*.npz"}[kind]
    found = sorted((root / "CACHE").glob(pattern))
    assert found, pattern
    return found[0]


def _expected_error(root, kind, path):
    if kind == "checkpoint":
        json_name = path.name.replace(".weights.h5", ".json")
        why = f"its SHA-256 does not match the one recorded in {json_name}"
        return (
            f"checkpoint {path} is damaged ({why}); nothing was restored from it. Delete "
            f"{root / 'RUN' / 'backup'} to train again from the start."
        )
    if kind == "labels shard":
        return (
            "L/shard-00001.npz is missing or fails its checksum; nothing was trained on it. "
            "Label L again (the same kd-keras label command labels only that shard again)."
        )
    return f"Cache file {path} is"


@pytest.mark.slow
@pytest.mark.parametrize("damage", DAMAGE)
@pytest.mark.parametrize(
    "kind", ["checkpoint", "teacher cache", "vocabulary cache", "labels shard"]
)
def test_a_rerun_refuses_a_damaged_checkpoint_cache_or_shard(killed_run, kind, damage, tmp_path):
    source, argv = killed_run
    root = (tmp_path / "copy").resolve()
    shutil.copytree(source, root)
    if kind == "labels shard":  # a new run on the same cache, streaming `--labels L`
        argv = [a.replace("=RUN", "=RUN2") for a in argv] + ["--labels=L"]
    run = root / ("RUN2" if kind == "labels shard" else "RUN")
    path = _damaged_file(root, kind)
    DAMAGE[damage](path)
    damaged = path.read_bytes()
    code, out, err = kd_keras(argv, cwd=root)
    assert code == 2, (out[-3000:], err)
    assert len(err) == 1, err
    assert err[0].startswith(f"kd-keras distill: error: {_expected_error(root, kind, path)}")
    if kind.endswith("cache"):
        assert err[0].endswith("Delete it to compute it again.")
    assert path.read_bytes() == damaged  # named, never read as data, never replaced
    for name in ("student.keras", "student", "metrics.json"):
        assert not (run / name).exists()
