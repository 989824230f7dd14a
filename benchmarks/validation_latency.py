"""How fast the command line answers typical mistakes, and what it leaves behind.

Each mistake runs as its own `kd-keras` process in an empty folder (wall time of
the whole process, median of `--repeat` runs); the table shows the exit code,
the one line the user sees and whether a run folder was left. Nothing else
should run meanwhile.

    python benchmarks/validation_latency.py --json runs/validation_latency.json
    # an older checkout, for a before/after (its package first on the path):
    python benchmarks/validation_latency.py --pythonpath /path/to/old/checkout-snapshot
"""

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

MISTAKES = {
    "missing --train file": ["distill", "--train", "/nope.csv"],
    "--unlabeled glob matching nothing": ["distill", "--unlabeled", "nothing/*.txt.gz"],
    "bad flag value (--epochs 0)": ["distill", "--epochs", "0"],
    "--train without the score column": ["distill", "--train", "bad_columns.csv"],
    "--output-dir under a file": ["distill", "--output-dir", "a_file/run"],
    "kd-keras label, missing --input": ["label", "--input", "/nope/*.txt", "--output", "out"],
}


def _prepare(folder):
    (folder / "bad_columns.csv").write_text("sentence1,sentence2\na,b\n", encoding="utf-8")
    (folder / "a_file").write_text("", encoding="utf-8")


def _once(argv, env):
    with tempfile.TemporaryDirectory() as tmp:
        folder = pathlib.Path(tmp)
        _prepare(folder)
        before = set(folder.rglob("*"))
        t0 = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "kd_keras", *argv],
            cwd=folder,
            env=env,
            capture_output=True,
            text=True,
        )
        seconds = time.perf_counter() - t0
        left = sorted(str(p.relative_to(folder)) for p in set(folder.rglob("*")) - before)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    return seconds, done.returncode, lines[-1] if lines else "", left


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--pythonpath", help="put this folder first on PYTHONPATH")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args(argv)
    env = dict(os.environ)
    env.pop("KD_KERAS_VERBOSE", None)
    if args.pythonpath:
        env["PYTHONPATH"] = os.pathsep.join([args.pythonpath, env.get("PYTHONPATH", "")])
    rows = {}
    print("| mistake | seconds (median) | exit | what the user sees | left behind |")
    print("|---|---|---|---|---|")
    for name, command in MISTAKES.items():
        runs = [_once(command, env) for _ in range(args.repeat)]
        seconds = statistics.median(r[0] for r in runs)
        _, code, line, left = runs[-1]
        rows[name] = {"argv": command, "seconds": seconds, "exit": code, "line": line, "left": left}
        shown = ", ".join(left) or "nothing"
        print(f"| {name} | {seconds:.2f} | {code} | `{line}` | {shown} |")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(rows, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
