"""Benchmark family: latency and throughput per batch size, and the deployment matrix.

Timing follows diagnostics/timing.py (warm-up, synchronisation on CUDA, adaptive repetitions,
per-call samples). The matrix reuses the variants other checks already built and judged
(TorchScript, torch.export, ONNX Runtime, fp16/bf16, int8): nothing is rebuilt here.
"""
from __future__ import annotations

import math
import time
from typing import Any, Callable

import torch

from torch_diagnose import inputs as inp
from torch_diagnose.compare import compare
from torch_diagnose.context import Context, Variant, num_threads
from torch_diagnose.degenerate import degenerate_outputs, summarize
from torch_diagnose.locate import Culprit
from torch_diagnose.locate.culprit import INPUT
from torch_diagnose.memory import model_bytes
from torch_diagnose.registry import CheckOptions, Option, register
from torch_diagnose.results import CheckResult
from torch_diagnose.text import one_line
from torch_diagnose.timing import TimingStats, cuda_sync_for, measure

#: Verdicts of the judging check under which a variant may be recommended.
RECOMMENDABLE = ("pass", "warn")


def batch_of(inputs: Any, size: int, batch_dim: Any = 0) -> Any:
    """The example inputs resized to `size` along the batch (the one policy: `inputs.resize_batch`; samples
    repeated cyclically); as they are when they have no batch dimension."""
    return inputs if inp.batch_size(inputs, batch_dim) is None else inp.resize_batch(inputs, size, batch_dim)


def _batch_sizes(ctx: Context, opts: CheckOptions, example: int) -> list[int]:
    if opts.batch_sizes:
        sizes = [int(b) for b in opts.batch_sizes]
    else:
        sizes = [1, example]
        if ctx.options.batch_size:
            sizes.append(ctx.options.batch_size)
    return sorted(set(s for s in sizes if s > 0))


def _time(call: Callable[[], Any], ctx: Context, min_time_s: float, max_time_s: float | None = None) -> TimingStats:
    with torch.inference_mode():
        return measure(call, sync=cuda_sync_for(ctx.device), min_time_s=min_time_s, max_time_s=max_time_s)


def _one_call(call: Callable[[], Any], ctx: Context) -> tuple[Any, float]:
    """(output, seconds) of one synchronised call."""
    sync = cuda_sync_for(ctx.device) or (lambda: None)
    with torch.inference_mode():
        sync()
        start = time.perf_counter()
        out = call()
        sync()
    return out, time.perf_counter() - start


def _seconds(s: float) -> str:
    return f"{s:.1f} s" if s >= 1 else f"{1e3 * s:.1f} ms"


def _time_variant(ctx: Context, variant: Variant, opts: CheckOptions, eager: TimingStats) -> dict[str, Any]:
    """A variant timed within a budget. Its first call gives its output (and error); a variant slower than
    `max_slowdown` x eager on a warm call is not timed (an emulated fp16 conv can take 25 s a call)."""
    out, call_s = _one_call(lambda: variant.run(ctx.inputs), ctx)
    max_error = variant.max_error if variant.max_error is not None else compare(out, ctx.reference).max_abs
    del out
    limit = float(opts.max_slowdown) * eager.p50
    if call_s > limit and call_s < float(opts.max_time_s):  # a slow first call may be warm-up: one warm call decides
        call_s = _one_call(lambda: variant.run(ctx.inputs), ctx)[1]
    if call_s > limit:
        slower = call_s / eager.p50 if eager.p50 > 0 else math.inf
        low = next((p for p in ("fp16", "bf16") if p in variant.name.lower()), None)
        why = f" (no fast {low} on this CPU)" if low and (ctx.device is None or ctx.device.type == "cpu") else ""
        return {"p50_ms": None, "p99_ms": None, "speedup": None, "max_error": max_error, "call_ms": 1e3 * call_s,
                "not_timed": f"{variant.name}: not timed, {_seconds(call_s)} a call = {slower:.0f}x eager{why}"}
    stats = _time(lambda: variant.run(ctx.inputs), ctx, opts.min_time_s, float(opts.max_time_s))
    return {"p50_ms": 1e3 * stats.p50, "p99_ms": 1e3 * stats.p99, "max_error": max_error,
            "speedup": eager.p50 / stats.p50 if stats.p50 > 0 else math.inf, "samples": stats.n}


def _matrix(ctx: Context, batch: int, opts: CheckOptions, eager: TimingStats) -> list[dict[str, Any]]:
    """One row per deployment variant at the example batch size; eager first."""
    rows: list[dict[str, Any]] = [{
        "variant": "eager", "p50_ms": 1e3 * eager.p50, "p99_ms": 1e3 * eager.p99, "speedup": 1.0, "max_error": 0.0,
        "size_mb": model_bytes(ctx.model) / 1e6, "verdict": "reference", "recommended": False, "note": "",
    }]
    for i, variant in enumerate(ctx.variants.values(), 1):
        ctx.progress(f"timing variant {i}/{len(ctx.variants)}: {variant.name}")
        row: dict[str, Any] = {"variant": variant.name, "verdict": variant.verdict or "unjudged", "recommended": False,
                               "size_mb": variant.size_bytes / 1e6 if variant.size_bytes else None, "note": variant.note,
                               "source_check": variant.source_check}
        try:
            row.update(_time_variant(ctx, variant, opts, eager))
            if row.get("not_timed"):
                row["note"] = row["not_timed"] + (f"; {variant.note}" if variant.note else "")
        except Exception as exc:
            row.update(p50_ms=None, p99_ms=None, speedup=None, max_error=None, note=f"could not run: {one_line(exc, 200)}")
        rows.append(row)
    return rows


def recommend(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The fastest row whose variant passed (or warned in) its equivalence check; eager if none is faster.

    A variant that failed, errored or was never judged is never recommended.
    """
    eligible = [r for r in rows if r.get("p50_ms") is not None and (r["variant"] == "eager" or r.get("verdict") in RECOMMENDABLE)]
    if not eligible:
        return None
    best = min(eligible, key=lambda r: r["p50_ms"])
    best["recommended"] = True
    return best


def parse_latency_limits(text: Any) -> dict[int | None, float]:
    """`20` (every batch size) or `1=5,8=20` (per batch size) -> {None: 20.0} / {1: 5.0, 8: 20.0}."""
    limits: dict[int | None, float] = {}
    if text in (None, "", 0):
        return limits
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        if "=" in part:
            b, _, ms = part.partition("=")
            limits[int(b)] = float(ms)
        else:
            limits[None] = float(part)
    return limits


@register(
    "benchmark",
    family="benchmark",
    title="latency and throughput per batch size, and the deployment matrix",
    order=95,
    options=(
        Option("batch_sizes", list, [], "batch sizes to time (default: 1, the example's, and --batch-size)"),
        Option("threads", int, 0, "intra-op threads while timing (0: torch's current setting)"),
        Option("min_time_s", float, 0.3, "measure each configuration for at least this long"),
        Option("max_latency_ms", str, "", "fail above this p50 latency: `20` for every batch size or `1=5,8=20` per batch size (also --max-latency-ms)"),
        Option("matrix", bool, True, "also time the deployment variants other checks built"),
        Option("max_slowdown", float, 10.0, "a variant slower than this many times eager (one warm call) is listed, not timed"),
        Option("max_time_s", float, 3.0, "time cap per batch size and per variant: fewer samples for slow calls"),
    ),
)
def benchmark(ctx: Context, opts: CheckOptions) -> CheckResult:
    """Latency (p50/p90/p99, IQR) and throughput per batch size with warm-up and synchronisation, plus a
    deployment matrix of every variant the run built (speed-up, max error against fp32, size on disk)
    and the fastest one that passed its equivalence check. Passes and informs unless
    `max_latency_ms` is set and exceeded.
    """
    # measure
    threads = opts.threads or torch.get_num_threads()
    dims, _source = inp.run_batch_dims(ctx)
    example_batch = inp.batch_size(ctx.inputs, dims) or 1
    unit = inp.batch_unit(ctx.inputs, dims)
    with num_threads(threads):
        per_batch, rejected = _per_batch(ctx, opts, dims, example_batch)
        eager = per_batch.get(example_batch) or _time(lambda: ctx.forward(), ctx, opts.min_time_s, opts.max_time_s)
        rows = _matrix(ctx, example_batch, opts, eager) if opts.matrix and ctx.variants else []
    # judge
    # equal outputs prove nothing when they are degenerate (all zero, tied, empty): no variant is called faithful then
    degenerate = summarize(degenerate_outputs(ctx)) if rows else ""
    best = recommend(rows) if rows and not degenerate else None
    limits = parse_latency_limits(opts.max_latency_ms or ctx.options.max_latency_ms)
    over = [f"batch {size}: p50 {1e3 * stats.p50:.2f} ms > {limit:g} ms" for size, stats in per_batch.items()
            if (limit := limits.get(size, limits.get(None))) is not None and 1e3 * stats.p50 > limit]
    metrics: dict[str, Any] = {"threads": threads, "device": str(ctx.device)}
    for size, stats in per_batch.items():
        metrics.update(stats.summary(size, prefix=f"b{size}."))
    details = _details(per_batch, rows, example_batch)
    skipped = [r["not_timed"] for r in rows if r.get("not_timed")]
    if skipped:
        metrics["not_timed_variants"] = ",".join(r["variant"] for r in rows if r.get("not_timed"))
    if rejected:
        details["rejected_batches"] = {str(b): why for b, why in rejected.items()}
    if rows:
        metrics["recommended_variant"] = best["variant"] if best else "none"
        if best and best["variant"] != "eager":
            metrics["recommended_speedup"] = best["speedup"]
    # explain
    faster = f" ({best['variant']})" if best and best["variant"] != "eager" else ""
    if over:
        return CheckResult.failed(
            "latency over the limit: " + "; ".join(over), metrics=metrics, details=details,
            culprit=Culprit.named(over[0].split(":")[0], INPUT),
            hint=f"profile with torch.profiler to find the slow layers; try a faster variant from the matrix{faster}, "
                 "a smaller batch, or more threads",
        )
    hint = None
    noisy = [s for s, st in per_batch.items() if st.noise > 0.25]
    if noisy:  # informs, never fails: a busy CI machine is not the model's fault
        metrics["noisy_batch_sizes"] = ",".join(str(s) for s in noisy)
        hint = (f"timings at batch {', '.join(map(str, noisy))} were noisy (IQR > 25% of the median): the machine was busy; "
                "re-run on an idle machine before trusting them")
    lat = _latency_line(per_batch, unit, rejected)
    rec = ""
    if best:
        rec = f"; fastest faithful variant: {best['variant']}" + (f" ({best['speedup']:.2f}x eager)" if best["variant"] != "eager" else "")
    elif degenerate:
        rec = f"; no variant recommended as faithful (matching eager proves nothing on these outputs): {degenerate}"
    return CheckResult.passed(f"{lat} on {threads} thread(s){rec}" + "".join(f"; {n}" for n in skipped),
                              metrics=metrics, details=details, hint=hint)


def _per_batch(ctx: Context, opts: CheckOptions, dims: Any, example: int) -> tuple[dict[int, TimingStats], dict[int, str]]:
    """Eager latency per batch size; a size the model refuses (`x.view(2, -1)`) is recorded with why, not raised."""
    per_batch: dict[int, TimingStats] = {}
    rejected: dict[int, str] = {}
    for size in _batch_sizes(ctx, opts, example):
        ctx.progress(f"timing eager at batch {size}")
        batch = batch_of(ctx.inputs, size, dims)
        try:
            per_batch[size] = _time(lambda b=batch: ctx.forward(b), ctx, opts.min_time_s, opts.max_time_s)
        except Exception as exc:
            if size == example:
                raise
            rejected[size] = inp.rejection(exc)
    return per_batch, rejected


def _latency_line(per_batch: dict[int, TimingStats], unit: str, rejected: dict[int, str]) -> str:
    """`b1 p50 2.10 ms (476.2/s), ...`; for a list of images `1 image: p50 ... (x images/s)`; and the batches
    the model rejects."""
    if unit == "sample":
        parts = [f"b{s} p50 {1e3 * st.p50:.2f} ms ({s / st.p50:.1f}/s)" for s, st in per_batch.items()]
    else:
        parts = [f"{s} {unit}{'s' if s != 1 else ''}: p50 {1e3 * st.p50:.2f} ms ({s / st.p50:.1f} {unit}s/s)"
                 for s, st in per_batch.items()]
    line = ", ".join(parts)
    if rejected:
        first = next(iter(rejected.values()))
        line += (f" (the model rejects batch {', '.join(map(str, rejected))}: {first}; only batch "
                 f"{', '.join(map(str, per_batch))} measured)")
    return line


def _details(per_batch: dict[int, TimingStats], rows: list[dict[str, Any]], example_batch: int) -> dict[str, Any]:
    """The latency table, the matrix and their plots."""
    details: dict[str, Any] = {
        "latency": [{"batch": s, **{k: round(v, 4) if isinstance(v, float) else v for k, v in st.summary(s).items()}} for s, st in per_batch.items()],
        "plot": [{
            "kind": "line", "title": "eager latency vs batch size", "x": list(per_batch),
            "series": {"p50 ms": [1e3 * st.p50 for st in per_batch.values()], "p99 ms": [1e3 * st.p99 for st in per_batch.values()]},
            "xlabel": "batch size", "ylabel": "latency (ms)", "logy": False, "always": True,
        }],
    }
    if rows:
        details["matrix"] = rows
        timed = [r for r in rows if r.get("p50_ms") is not None]
        details["plot"].append({
            "kind": "barh", "title": f"p50 latency per variant at batch {example_batch}", "x": [r["variant"] for r in timed],
            "series": {"p50 ms": [r["p50_ms"] for r in timed]}, "xlabel": "variant", "ylabel": "latency (ms)", "logy": False, "always": True,
        })
    return details


__all__ = ["benchmark", "recommend", "batch_of", "parse_latency_limits", "Variant"]
