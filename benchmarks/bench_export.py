"""Cost of the export family (torchscript + torch_export + onnx checks) vs the bare exports.

Usage: python bench_export.py [--repeat 3] [--size 224]
Each measurement is a fresh subprocess (imports and model built before the clock starts):
  bare   = torch.jit.trace + torch.jit.script + torch.export.export (dynamic batch/H/W)
           + torch.onnx.export(dynamo, dynamic batch/H/W), then one eager forward per swept shape
  family = diagnostics runner with checks torchscript,torch_export,onnx (sweep, exports, saves,
           ONNX Runtime session, every artifact over every sweep case)
Budget (issue 5): family <= 1.3 x bare exports + one forward per swept shape.
"""
import argparse, json, os, statistics, subprocess, sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHILD = f"ROOT = {ROOT!r}\n" + r'''
import json, sys, time, warnings, logging
sys.path.insert(0, ROOT)
warnings.simplefilter("ignore"); logging.disable(logging.CRITICAL)
import torch, torchvision
size, mode, threads = int(sys.argv[1]), sys.argv[2], int(sys.argv[-1])
if threads > 0: torch.set_num_threads(threads)
torch.manual_seed(0)
m = torchvision.models.resnet18(weights=None).eval()
x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
with torch.inference_mode(): m(x)
out = {}
if mode == "bare":
    from torch.export import Dim
    T = time.perf_counter
    t = T(); torch.jit.trace(m, (x,), check_trace=False); out["trace"] = T() - t
    t = T(); torch.jit.script(m); out["script"] = T() - t
    t = T(); torch.export.export(m, (x,), dynamic_shapes={"x": {0: Dim.DYNAMIC, 2: Dim.AUTO, 3: Dim.AUTO}}); out["export"] = T() - t
    t = T(); torch.onnx.export(m, (x,), dynamic_shapes={"x": {0: "batch", 2: "h", 3: "w"}}, dynamo=True, verbose=False); out["onnx"] = T() - t
    out["exports"] = sum(out.values())
    shapes = [tuple(s) for s in json.loads(sys.argv[3])]
    t = T()
    with torch.inference_mode():
        for s in shapes: m(torch.randn(*s))
    out["forwards"] = T() - t
    out["n_shapes"] = len(shapes)
else:
    from torch_diagnose import Target
    from torch_diagnose.context import Context
    from torch_diagnose.options import RunOptions
    from torch_diagnose.runner import run
    target = Target(m, x)
    ctx = Context(target, RunOptions(device="cpu", report_dir="/tmp/exp/bench-reports"))
    t = time.perf_counter()
    rep = run(target, RunOptions(device="cpu", checks=["torchscript", "torch_export", "onnx"], report_dir="/tmp/exp/bench-reports"), context=ctx)
    out["family"] = time.perf_counter() - t
    out["statuses"] = {r.check: r.status for r in rep.results}
    out["per_check"] = {r.check: round(r.duration_s, 2) for r in rep.results}
    sweep = ctx.peek("export:sweep")
    shapes = [list(c.inputs.shape) for c in sweep.cases if c.kind in ("example", "shape")]
    shapes += [list(c.inputs.shape) for cs in sweep.group_cases.values() for c in cs if list(c.inputs.shape) not in shapes]
    out["shapes"] = shapes
    out["fp64_used"] = ctx.has_cached("fp64")
    out["forward_calls"] = rep.overhead["model_forward_calls"]
    out["cases"] = len(sweep.cases)
    out["eager_forwards"] = rep.overhead["model_forward_calls"]
print("RESULT" + json.dumps(out))
'''


def child(*args):
    proc = subprocess.run([sys.executable, "-c", CHILD, *map(str, args)], capture_output=True, text=True)
    line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT")]
    if not line:
        raise SystemExit(proc.stderr[-3000:])
    return json.loads(line[0][6:])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--threads", type=int, default=0, help="torch threads in both (0 = torch default)")
    a = ap.parse_args()
    fams, bares = [], []
    for i in range(a.repeat):
        f = child(a.size, "family", a.threads)
        b = child(a.size, "bare", json.dumps(f["shapes"]), a.threads)
        fams.append(f); bares.append(b)
        budget = 1.3 * b["exports"] + b["forwards"]
        print(f"run {i}: family {f['family']:.2f}s {f['per_check']} {f['statuses']} | bare exports {b['exports']:.2f}s "
              f"(trace {b['trace']:.2f}, script {b['script']:.2f}, export {b['export']:.2f}, onnx {b['onnx']:.2f}) + "
              f"fp64 {f['fp64_used']}, eager calls {f['forward_calls']}; {b['n_shapes']} swept-shape forwards {b['forwards']:.2f}s -> budget {budget:.2f}s; ratio family/budget {f['family']/budget:.2f}",
              flush=True)
    fm = statistics.median(f["family"] for f in fams)
    bm = statistics.median(1.3 * b["exports"] + b["forwards"] for b in bares)
    em = statistics.median(b["exports"] for b in bares)
    print(f"median family {fm:.2f}s; median bare exports {em:.2f}s; median budget (1.3x exports + forwards) {bm:.2f}s; "
          f"family / bare exports = {fm/em:.2f}; family / budget = {fm/bm:.2f}; cases {fams[0]['cases']}, swept shapes {len(fams[0]['shapes'])}")


if __name__ == "__main__":
    main()
