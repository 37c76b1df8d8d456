"""Time `diagnose` against a hand-written script doing the same work on the same model.

Usage: python benchmarks/bench_vs_script.py [--repeat 3]

Both run as fresh subprocesses (imports included, as a user would run them) on the demo
target (random-weight resnet18, 2x3x224x224) with the eval_mode and determinism checks: the
hand-written script checks the training flags, calls .eval(), runs the reference and the same
four comparison forwards, and compares bitwise. Prints the median wall time of each and the
ratio, plus the runner's own overhead from one in-process run.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

HAND_WRITTEN = r'''
import torch, torchvision
torch.manual_seed(0)
model = torchvision.models.resnet18(weights=None)
x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
training = [n for n, m in model.named_modules() if m.training]
model.eval()
with torch.inference_mode():
    ref = model(x)
    outs = [model(x), model(x)]
    for seed in (1, 2):
        torch.manual_seed(seed)
        outs.append(model(x))
same = all(torch.equal(o, ref) for o in outs)
print("training modules:", len(training), "deterministic:", same)
'''


def timed(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=False, env=env, cwd=ROOT, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--checks", default="eval_mode,determinism")
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # As users run it: bytecode cached (some CI images set PYTHONDONTWRITEBYTECODE, which makes every run
    # compile this package's ~120 modules again, ~0.35 s that a hand-written script never pays).
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    with tempfile.TemporaryDirectory() as tmp:
        diag_cmd = [sys.executable, "-m", "torch_diagnose", "demo", "--checks", args.checks, "--report-dir", tmp, "-q"]
        script_cmd = [sys.executable, "-c", HAND_WRITTEN]
        timed(diag_cmd, env), timed(script_cmd, env)  # warm: bytecode written, files in the page cache
        pairs = [(timed(diag_cmd, env), timed(script_cmd, env)) for _ in range(args.repeat)]  # interleaved: drift hits both
        diag, hand = [d for d, _ in pairs], [h for _, h in pairs]
    d, h = statistics.median(diag), statistics.median(hand)
    print(f"diagnose demo --checks {args.checks}: median {d:.2f} s over {args.repeat} runs")
    print(f"hand-written script:                  median {h:.2f} s over {args.repeat} runs")
    print(f"ratio diagnose / script: {d / h:.2f}")

    sys.path.insert(0, str(ROOT))
    import torch  # noqa: F401  (imported before timing: both sides pay it the same)

    from torch_diagnose.options import RunOptions
    from torch_diagnose.report import file_reporters
    from torch_diagnose.runner import run
    from torch_diagnose.target import load_target

    t0 = time.perf_counter()
    target = load_target("demo")
    load_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        options = RunOptions(checks=args.checks.split(","), report_dir=tmp, format=["json", "junit", "md"])
        t0 = time.perf_counter()
        report = run(target, options, reporters=file_reporters(options))
        total = time.perf_counter() - t0
    o = report.overhead
    model_s = o["model_forward_s"]
    overhead = total - o["checks_s"] + (o["checks_s"] - model_s)
    print(f"in-process: target loading {load_s:.3f} s; run {total:.3f} s, of which model forwards {model_s:.3f} s "
          f"({o['model_forward_calls']} calls)")
    print(f"  runner + reports (json, junit, md) {total - o['checks_s']:.3f} s; checks' own non-forward work (hooks, comparisons) "
          f"{o['checks_s'] - model_s:.3f} s; overhead / model work = {overhead / model_s:.1%}")


if __name__ == "__main__":
    main()
