"""Wall time of the default checks (`torch_diagnose.diagnose(target)`) on small real library models.

Usage: python benchmarks/bench_real_models.py [MODEL ...] [--timeout 300] [--threads 0]
Models: tests/models/real_models.py (REAL_MODELS, then VISION_MODELS); default: all of them.
Each model runs in a fresh subprocess (imports and the model built before the clock starts), so
one model's caches and threads do not help another. Goal (issue 14): under 120 s per model.
Prints one table row per model: run time, status counts, the slowest checks, and what failed.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOAL_S = 120.0

CHILD = f"ROOT = {ROOT!r}\n" + r'''
import json, logging, sys, time, warnings
sys.path.insert(0, ROOT)
warnings.simplefilter("ignore"); logging.disable(logging.CRITICAL)
import torch
name, threads = sys.argv[1], int(sys.argv[2])
if threads > 0:
    torch.set_num_threads(threads)
from tests.models import real_models
from torch_diagnose import diagnose
from torch_diagnose.runner import run
from torch_diagnose.options import RunOptions

class Progress:  # one stderr line per finished check, so a timeout still shows where the time went
    def start(self, run, checks): pass
    def check_started(self, spec): pass
    def check_finished(self, result, run):
        print(f"  {result.check:24} {result.status:5} {result.duration_s:7.1f}s", file=sys.stderr, flush=True)
    def finish(self, run): pass

factories = {**real_models.REAL_MODELS, **real_models.VISION_MODELS}
t = time.perf_counter()
target = factories[name]()
build_s = time.perf_counter() - t
t = time.perf_counter()
report = run(target, RunOptions(), reporters=[Progress()])
wall_s = time.perf_counter() - t
print("RESULT " + json.dumps({
    "model": name, "build_s": build_s, "wall_s": wall_s, "summary": report.summary,
    "checks": [[r.check, r.status, r.duration_s, r.summary[:200]] for r in report.results],
}), flush=True)
'''


def run_one(name: str, timeout: float, threads: int) -> dict:
    start = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-c", CHILD, name, str(threads)], capture_output=True, text=True,
                              timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired as exc:
        tail = (exc.stderr or b"").decode() if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        return {"model": name, "timeout": True, "wall_s": time.perf_counter() - start, "progress": tail}
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            out = json.loads(line[len("RESULT "):])
            out["progress"] = proc.stderr
            return out
    return {"model": name, "crashed": (proc.stderr or proc.stdout)[-600:], "wall_s": time.perf_counter() - start}


def row(res: dict) -> str:
    name = res["model"]
    if res.get("timeout"):
        done = [line.split()[0] for line in res.get("progress", "").splitlines() if line.startswith("  ")]
        return f"| {name} | > {res['wall_s']:.0f} (timeout) | | after {', '.join(done[-3:]) or 'setup'} | |"
    if "crashed" in res:
        return f"| {name} | crashed | | | {res['crashed'].splitlines()[-1] if res['crashed'] else ''} |"
    s = res["summary"]
    counts = "/".join(str(s[k]) for k in ("pass", "warn", "fail", "skip", "error"))
    slow = sorted(res["checks"], key=lambda c: -c[2])[:3]
    slowest = ", ".join(f"{c[0]} {c[2]:.1f}" for c in slow)
    bad = "; ".join(f"{c[1]} {c[0]}: {c[3][:90]}" for c in res["checks"] if c[1] in ("fail", "error")) or "-"
    flag = "" if res["wall_s"] <= GOAL_S else " (over goal)"
    return f"| {name} | {res['wall_s']:.1f}{flag} | {counts} | {slowest} | {bad} |"


def main() -> None:
    sys.path.insert(0, ROOT)
    from tests.models.real_models import REAL_MODELS, VISION_MODELS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", default=[*REAL_MODELS, *VISION_MODELS])
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per model")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    print("| model | default run s | pass/warn/fail/skip/error | slowest checks (s) | fail / error |")
    print("|---|---|---|---|---|")
    for name in args.models:
        print(row(run_one(name, args.timeout, args.threads)), flush=True)


if __name__ == "__main__":
    main()
