"""Kill a recipe's run just after one of its phases finishes, rerun it, and time both.

For each `--after PHASE`, a fresh run folder: the command runs until the marker
`phases/PHASE.json` appears, gets SIGKILL, and the same command runs again to
the end. Printed per phase: the time to the kill, the rerun's time, the phases
the rerun reused (its log lines), against one uninterrupted run's time.

    python scripts/kill_at_phase.py --runs runs/kill --after train export evaluate fidelity \\
        -- distill --cache-dir runs/cache --max-pairs 2000 --unlabeled-limit 4000 --epochs 1
    python scripts/kill_at_phase.py --runs runs/kill-clf --folder-flag=--run-dir \\
        --after train_baseline train_distilled export_teacher -- distill-classifier ...
"""

import argparse
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time


def _command(argv, folder, flag):
    return [sys.executable, "-m", "kd_keras", *argv, flag, str(folder)]


def _run(command, log):
    t0 = time.perf_counter()
    with open(log, "w", encoding="utf-8") as out:
        code = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT).returncode
    return code, time.perf_counter() - t0


def _until(command, marker, log, timeout):
    """Runs `command` until `marker` exists, then SIGKILLs it: `(seconds, killed)`."""
    t0 = time.perf_counter()
    with open(log, "w", encoding="utf-8") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        while process.poll() is None and not marker.exists():
            if time.perf_counter() - t0 > timeout:
                break
            time.sleep(0.05)
        killed = process.poll() is None
        if killed:
            os.kill(process.pid, signal.SIGKILL)
        process.wait()
    return time.perf_counter() - t0, killed


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", required=True, help="a folder for the run folders and logs")
    parser.add_argument("--after", nargs="+", required=True, help="phase markers to kill after")
    parser.add_argument("--folder-flag", default="--output-dir", help="the run-folder flag")
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("--json", help="write the figures here")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the kd-keras command")
    args = parser.parse_args(argv)
    command = [a for a in args.command if a != "--"]
    runs = pathlib.Path(args.runs)
    runs.mkdir(parents=True, exist_ok=True)
    code, full = _run(_command(command, runs / "full", args.folder_flag), runs / "full.log")
    if code:
        raise SystemExit(f"the uninterrupted run failed ({code}); see {runs / 'full.log'}")
    print(f"uninterrupted run: {full:.1f} s")
    rows = {"uninterrupted_s": full, "kills": {}}
    for phase in args.after:
        folder = runs / f"after-{phase}"
        run = _command(command, folder, args.folder_flag)
        marker = folder / "phases" / f"{phase}.json"
        to_kill, killed = _until(run, marker, runs / f"{phase}.log", args.timeout)
        code, rerun = _run(run, runs / f"{phase}.rerun.log")
        text = (runs / f"{phase}.rerun.log").read_text(encoding="utf-8")
        reused = re.findall(r"\] (\w+): reused from an earlier run", text)
        rows["kills"][phase] = {
            "killed_after_s": to_kill,
            "killed": killed,
            "rerun_s": rerun,
            "rerun_exit": code,
            "reused": reused,
            "saved_s": full - rerun,  # against training again from the first step
        }
        print(
            f"killed after {phase} at {to_kill:.1f} s ({'SIGKILL' if killed else 'it had ended'}); "
            f"rerun {rerun:.1f} s, exit {code}, reused: {', '.join(reused) or 'nothing'}; "
            f"{full - rerun:.1f} s saved against starting over ({full:.1f} s)"
        )
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(rows, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
