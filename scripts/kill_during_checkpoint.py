"""Kills `kd-keras distill` while it rewrites a checkpoint, then resumes the run.

Runs the main job on small slices of the shipped STS-B data (the default
teacher and the default-sized BiLSTM student, whose checkpoint of weights and
optimizer state takes a moment to write), watches the run's `backup/` folder,
and sends SIGKILL at the instant a checkpoint's weights file is being
written. Then it shows what the kill left, reruns the same command, and checks
that the rerun resumed from the last complete checkpoint, finished, kept the
whole training history, and left no temporary file behind.

    .venv/bin/python scripts/kill_during_checkpoint.py --workdir /tmp/kill-demo

Exit status 0 when every check holds.
"""

import argparse
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

from kd_keras.data import data_path

EPOCHS, CHUNKS = 2, 4


def _slice(src, dst, count):
    with open(src, encoding="utf-8") as f:
        dst.write_text("".join(f.readlines()[:count]), encoding="utf-8")
    return str(dst)


def _command(work):
    files = {
        "--train": _slice(data_path("stsb", "sts-train.csv"), work / "train.tsv", 600),
        "--dev": _slice(data_path("stsb", "sts-dev.csv"), work / "dev.tsv", 60),
        "--test": _slice(data_path("stsb", "sts-test.csv"), work / "test.tsv", 60),
    }
    return [
        sys.executable, "-m", "kd_keras", "distill",
        *[x for item in files.items() for x in item],
        "--unlabeled", "none", "--embedding-init", "random",
        "--epochs", str(EPOCHS), "--checkpoints-per-epoch", str(CHUNKS),
        "--throughput-seconds", "0.5",
        "--output-dir", str(work / "run"), "--cache-dir", str(work / "cache"),
    ]  # fmt: skip


def _kill_mid_checkpoint(command, backup, log):
    """Starts the run; SIGKILLs it while a weights file (not the first) is being written."""
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        while process.poll() is None:
            writing = list(backup.glob(".epoch-*.weights.h5.tmp-*")) if backup.is_dir() else []
            complete = sorted(backup.glob("epoch-*.weights.h5")) if backup.is_dir() else []
            if writing and complete:
                os.kill(process.pid, signal.SIGKILL)
                process.wait()
                return writing[0].name, [p.name for p in complete]
            time.sleep(0.0005)
    finally:
        if process.poll() is None:
            process.kill()
    raise SystemExit("the run ended before a checkpoint write could be interrupted")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default="/tmp/kd-keras-kill-demo")
    args = parser.parse_args(argv)
    work = pathlib.Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    command = _command(work)
    backup = work / "run" / "backup"

    with open(work / "first.log", "w") as log:
        writing, complete = _kill_mid_checkpoint(command, backup, log)
    print(f"SIGKILL while writing {writing}; complete checkpoints then: {complete}")
    print("left on disk:", sorted(p.name for p in backup.iterdir()))

    rerun = subprocess.run(command, capture_output=True, text=True)
    (work / "rerun.log").write_text(rerun.stdout + rerun.stderr)
    print(f"rerun exit status: {rerun.returncode}")
    resumed = [line for line in rerun.stdout.splitlines() if "resuming from" in line]
    print("rerun:", resumed[0] if resumed else "did not resume")
    metrics = json.loads((work / "run" / "metrics.json").read_text())
    losses = metrics["training"]["history"]["loss"]
    leftovers = [p.name for p in (work / "run").rglob("*") if ".tmp-" in p.name]
    checks = {
        "the rerun finished": rerun.returncode == 0,
        "it resumed from the last complete checkpoint": bool(resumed),
        f"the history has all {EPOCHS * CHUNKS} checkpoint chunks": len(losses) == EPOCHS * CHUNKS,
        "no temporary file is left": not leftovers,
        "the backup folder is gone": not backup.exists(),
        "the student was exported": (work / "run" / "student" / "saved_model.pb").is_file(),
    }
    for name, ok in checks.items():
        print(f"{'ok  ' if ok else 'FAIL'} {name}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
