"""`kd_keras.labels_beam` and `kd-keras label --runner beam`: the same folder as in-process."""

import gzip
import json
import subprocess
import sys

import numpy as np
import pytest

from kd_keras import cli
from kd_keras.data import iter_corpus
from kd_keras.labels import MANIFEST, label_files, read_labels
from kd_keras.storage import read_arrays, write_json_atomic

WORDS = "the a cat dog sat ran on under mat tree big small red".split()


@pytest.fixture
def labels_beam():
    pytest.importorskip("apache_beam")
    from kd_keras import labels_beam

    return labels_beam


@pytest.fixture
def beam_worker(labels_beam):
    from kd_keras import labels_beam_worker

    return labels_beam_worker


@pytest.fixture
def corpus(tmp_path):
    """51 sentences of 1 to 40 words (some longer than the teacher's 32 tokens) in 2 files."""
    rng = np.random.default_rng(1)
    sentences = [" ".join(rng.choice(WORDS, size=rng.integers(1, 41))) for _ in range(51)]
    plain = tmp_path / "part1.txt"
    plain.write_text(
        "\n".join(sentences[:7]) + "\n\n  \n" + "\n".join(sentences[7:20]) + "\n", encoding="utf-8"
    )
    packed = tmp_path / "part2.txt.gz"
    with gzip.open(packed, "wt", encoding="utf-8") as f:
        f.write("\r\n".join(sentences[20:]))
    return [str(plain), str(packed)], sentences


def _all(directory):
    sentences, embeddings = [], []
    for s, e in read_labels(directory):
        sentences += s
        embeddings.append(e)
    return sentences, np.concatenate(embeddings)


def _manifest(directory):
    return json.loads((directory / MANIFEST).read_text(encoding="utf-8"))


@pytest.mark.parametrize("shard_size", [1, 5, 16, 20, 51, 100])
@pytest.mark.parametrize("limit", [None, 1, 19, 20, 21, 50])
def test_each_shard_reads_exactly_its_rows(labels_beam, beam_worker, corpus, shard_size, limit):
    files, _ = corpus
    expected = list(iter_corpus(files, limit))
    counts = labels_beam._sentence_counts(files, limit)
    plan = labels_beam._plan(files, counts, shard_size)
    assert [index for index, _, _ in plan] == list(range(len(plan)))
    got = []
    for _, start, segments in plan:
        assert start == len(got)
        rows = beam_worker.read_rows(segments)
        assert 0 < len(rows) <= shard_size
        got += rows
    assert got == expected


def test_the_workers_module_loads_no_tensorflow(beam_worker):
    # Each worker imports it to unpickle `LabelShard`, before `setup` quiets TensorFlow.
    code = "import sys, kd_keras.labels_beam_worker\nprint('tensorflow' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_default_pipeline_options(labels_beam):
    defaults = list(labels_beam.DEFAULT_PIPELINE_ARGS)
    assert labels_beam.pipeline_args_with_defaults(None) == defaults
    assert labels_beam.pipeline_args_with_defaults(["--direct_num_workers=4"]) == [
        *[d for d in defaults if not d.startswith("--direct_num_workers")],
        "--direct_num_workers=4",
    ]
    remote = ["--runner=DataflowRunner", "--project=p", "--region=r"]
    assert labels_beam.pipeline_args_with_defaults(remote) == remote


@pytest.mark.slow
def test_beam_writes_the_in_process_folder_and_resumes_it(
    labels_beam, beam_worker, make_tiny_teacher, corpus, tmp_path, capsys
):
    files, sentences = corpus
    teacher = make_tiny_teacher(hidden_dim=8, intermediate_dim=16, sequence_length=32)
    local, beam = tmp_path / "local", tmp_path / "beam"
    settings = dict(shard_size=16, teacher_spec="tiny", progress=False)
    label_files(teacher, files, local, **settings)
    result = labels_beam.label_files_beam(teacher, files, beam, **settings)  # 2 processes
    assert (result.rows, result.shards, result.reused) == (51, 4, 0)

    want, got = _manifest(local), _manifest(beam)
    assert list(got) == list(want) and got["complete"]
    for name in ("format", "key", "teacher", "inputs", "settings", "rows", "dim"):
        assert got[name] == want[name], name
    assert [{k: v for k, v in e.items() if k != "sha256"} for e in got["shards"]] == [
        {k: v for k, v in e.items() if k != "sha256"} for e in want["shards"]
    ]
    assert sorted(p.name for p in beam.iterdir()) == sorted(p.name for p in local.iterdir())
    for entry in got["shards"]:
        meta, arrays = read_arrays(beam / entry["file"])
        assert meta["rows"] == entry["rows"] and arrays["embeddings"].dtype == np.float32
    (want_sentences, want_embeddings), (got_sentences, got_embeddings) = _all(local), _all(beam)
    assert got_sentences == want_sentences == sentences
    np.testing.assert_allclose(got_embeddings, want_embeddings, atol=1e-6)

    # Either runner resumes the other's folder: in-process keeps every Beam shard.
    assert label_files(teacher, files, beam, **settings).reused == 4

    # A killed Beam run: its manifest lists the first shard, the workers' records
    # shards 1 and 3, shard 2 was never written. The command line labels only it.
    kept = {e["file"]: e["sha256"] for e in got["shards"] if e["file"] != "shard-00002.npz"}
    (beam / "shard-00002.npz").unlink()
    for index in (1, 3):
        path = beam_worker.entry_path(beam / labels_beam.WORK_DIR, index)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, {"key": got["key"], "entry": got["shards"][index]})
    killed = {**got, "complete": False, "shards": got["shards"][:1], "rows": 16}
    write_json_atomic(beam / MANIFEST, killed)
    teacher_path = tmp_path / "teacher.keras"
    teacher.save(teacher_path)
    argv = ["label", "--teacher", str(teacher_path), "--input", *files, "--output", str(beam)]
    argv += ["--shard-size", "16", "--no-progress", "--runner", "beam"]
    assert cli.main([*argv, "--", "--direct_num_workers=2"]) == 0
    assert "51 sentences in 4 shards (3 kept from an earlier run)" in capsys.readouterr().out
    again = _manifest(beam)
    assert {e["file"]: e["sha256"] for e in again["shards"] if e["file"] in kept} == kept
    assert again["key"] == want["key"] and not (beam / labels_beam.WORK_DIR).exists()
    np.testing.assert_allclose(_all(beam)[1], want_embeddings, atol=1e-6)


def test_command_line_runner_errors(tmp_path, corpus, capsys, monkeypatch):
    files, _ = corpus
    argv = ["label", "--input", *files, "--output", str(tmp_path / "out")]
    monkeypatch.setitem(sys.modules, "apache_beam", None)  # not installed
    assert cli.main([*argv, "--runner", "beam"]) == 2
    err = capsys.readouterr().err
    assert "kd-keras label: error: install the beam extra: pip install 'kd-keras[beam]'" in err
    assert cli.main([*argv, "--project=p"]) == 2
    assert "--project=p (Beam pipeline options need --runner beam)" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:  # other commands take no unknown arguments
        cli.main(["embed", "--input", "a.txt", "--output", "a.npy", "--project=p"])
    assert exit_info.value.code == 2
    assert "unrecognized arguments: --project=p" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
