"""`kd-keras label` as whole processes: wall time against sentence-transformers, peak
memory at several corpus sizes, and a SIGKILL half-way followed by a resuming rerun.

Every number comes from separate processes started one after the other on this
machine, start-up (imports, model load, tokenization) included:

1. **speed**: the first `--sentences` sentences of the corpus (in file order,
   blank lines skipped, as `kd-keras label --limit` reads them) are written
   to a plain text file; then `kd-keras label` labels that file, and a
   sentence-transformers process (the `reference` extra: torch on the CPU)
   encodes the same file with the same batch size. Prints both wall times,
   their ratio and the largest difference between the two embeddings.
2. **memory**: `kd-keras label --limit N` for each of `--rss-sizes`, its peak
   resident memory (`getrusage` of the child).
3. **kill**: `kd-keras label` over `--kill-sentences` sentences, killed with
   SIGKILL once half of its shards are listed in the manifest; the same
   command again, which must keep those shards (its log says how many); then
   an uninterrupted run into another folder. Prints whether every shard's
   SHA-256 is the same in both folders.

```
.venv/bin/python benchmarks/label_process.py                  # all three, ~6 min
.venv/bin/python benchmarks/label_process.py --only speed --precision bfloat16
```

Run it on a quiet machine: nothing else should compete for the cores.
"""

import argparse
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time

CORPUS = "data/transfer-en/*.txt.gz"
ST_SCRIPT = """
import sys, numpy as np
from sentence_transformers import SentenceTransformer
model_dir, text, out, batch = sys.argv[1:5]
sentences = open(text, encoding="utf-8").read().split("\\n")[:-1]
model = SentenceTransformer(model_dir, device="cpu")
np.save(out, model.encode(sentences, batch_size=int(batch), convert_to_numpy=True))
"""


def _child_env():
    return {**os.environ, "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "3"}


def timed(command):
    """Runs `command` to the end; `(seconds, its peak RSS in bytes, its stderr)`."""
    with tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        child = subprocess.Popen(command, env=_child_env(), stdout=err, stderr=err)
        _, status, usage = os.wait4(child.pid, 0)  # this child's own resource usage
        seconds = time.perf_counter() - start
        child.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        text = err.read().decode("utf-8", "replace")
    if child.returncode:
        sys.exit(f"failed ({child.returncode}): {' '.join(command)}\n{text[-2000:]}")
    return seconds, usage.ru_maxrss * 1024, text


def label_command(inputs, output, args, *extra):
    return [
        str(pathlib.Path(sys.executable).parent / "kd-keras"),
        "label",
        "--input",
        *inputs,
        "--output",
        str(output),
        "--batch-size",
        str(args.batch_size),
        "--precision",
        args.precision,
        "--no-progress",
        *extra,
    ]


def speed(args, work):
    import numpy as np

    from kd_keras.data import corpus_files, iter_corpus
    from kd_keras.labels import read_labels
    from kd_keras.models.teachers import default_model_dir

    text = work / "sentences.txt"
    sentences = list(iter_corpus(corpus_files([args.corpus]), args.sentences))
    text.write_text("".join(s + "\n" for s in sentences), encoding="utf-8")
    ours_s, _, _ = timed(label_command([str(text)], work / "speed", args))
    ours = np.concatenate([e for _, e in read_labels(work / "speed")])
    print(
        f"kd-keras label ({args.precision}): {ours_s:.1f} s, {len(sentences) / ours_s:.0f} sent/s"
    )
    try:
        import sentence_transformers  # noqa: F401
    except ImportError:
        print("sentence-transformers: not installed (pip install -e '.[reference]'); no comparison")
        return
    out = work / "theirs.npy"
    command = [sys.executable, "-c", ST_SCRIPT, str(default_model_dir()), str(text), str(out)]
    theirs_s, _, _ = timed([*command, str(args.batch_size)])
    theirs = np.load(out)
    print(
        f"sentence-transformers on torch:  {theirs_s:.1f} s, {len(sentences) / theirs_s:.0f} sent/s"
    )
    print(
        f"whole process, {len(sentences)} sentences: ours / sentence-transformers = "
        f"{theirs_s / ours_s:.2f}x; max abs difference {np.abs(ours - theirs).max():.1e}"
    )


def memory(args, work):
    for size in sorted(args.rss_sizes):
        seconds, peak, _ = timed(
            label_command([args.corpus], work / f"rss-{size}", args, "--limit", str(size))
        )
        print(f"kd-keras label --limit {size}: {seconds:.1f} s, peak RSS {peak / 2**30:.3f} GiB")


def _shard_sums(folder):
    manifest = json.loads((folder / "manifest.json").read_text())
    return manifest["complete"], [s["sha256"] for s in manifest["shards"]]


def kill(args, work):
    size = args.kill_sentences
    shards = -(-size // args.shard_size)
    extra = ("--limit", str(size), "--shard-size", str(args.shard_size))
    folder = work / "killed"
    command = label_command([args.corpus], folder, args, *extra)
    child = subprocess.Popen(command, env=_child_env(), stderr=subprocess.DEVNULL)
    manifest = folder / "manifest.json"
    while child.poll() is None:
        if manifest.exists():
            try:
                done = len(json.loads(manifest.read_text())["shards"])
            except ValueError:  # never happens: the manifest is written atomically
                sys.exit(f"{manifest} was read half-written")
            if done >= shards // 2:
                child.send_signal(signal.SIGKILL)
                break
        time.sleep(0.05)
    child.wait()
    complete, kept = _shard_sums(folder)
    print(f"SIGKILL after {len(kept)} of {shards} shards (manifest complete: {complete})")
    _, _, log = timed(command)
    print("rerun: " + log.strip().splitlines()[-1])
    _, _, _ = timed(label_command([args.corpus], work / "whole", args, *extra))
    same = _shard_sums(folder) == _shard_sums(work / "whole")
    print(f"resumed run identical to an uninterrupted one (every shard's SHA-256): {same}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default=CORPUS, help=f"glob of the corpus (default {CORPUS})")
    parser.add_argument("--sentences", type=int, default=12000, help="for the speed comparison")
    parser.add_argument("--rss-sizes", type=int, nargs="+", default=[3000, 12000])
    parser.add_argument("--kill-sentences", type=int, default=6000)
    parser.add_argument("--shard-size", type=int, default=1000, help="for the kill check")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--precision", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--only", choices=("speed", "memory", "kill"), nargs="+")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args(argv)
    work = pathlib.Path(tempfile.mkdtemp(prefix="kd-label-bench-"))
    print(f"{os.cpu_count()} CPUs; work folder {work}")
    try:
        for name, step in (("speed", speed), ("memory", memory), ("kill", kill)):
            if not args.only or name in args.only:
                print(f"\n== {name} ==")
                step(args, work)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
