"""Judging the int8 variants against fp32: SQNR, top-1 agreement on decided rows, accuracy against
`Target.labels`; their metrics, details, summary, and the variants published for the benchmark."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .. import inputs as inp
from ..compare import compare
from ..context import Context, Variant
from ..registry import CheckOptions
from ..results import FAIL, PASS, WARN
from ..text import format_bytes, one_line
from ..tree import flatten
from .calibration import Calibration
from .flows import flow_text
from .runtime import QuantMode, latency, rows, state_size

#: A row's fp32 prediction counts as decided when its top-2 margin is >= this fraction of its logit range.
TOP1_MARGIN = 0.05


def decided_top1(outputs: Any, ref: Any, margin: float) -> tuple[float, int] | None:
    """Top-1 agreement over the rows whose fp32 prediction is decided: the top-2 margin is at least
    `margin` x the row's logit range (random-weight and near-tie rows flip on any noise)."""
    got = flatten(outputs)
    agree = total = 0
    for name, exp in flatten(ref).items():
        act = got.get(name)
        if not (isinstance(exp, torch.Tensor) and exp.is_floating_point() and exp.dim() == 2 and exp.shape[-1] >= 2):
            continue
        if not isinstance(act, torch.Tensor) or act.shape != exp.shape:
            continue
        e, a = exp.detach().float().cpu(), act.detach().float().cpu()
        top2 = e.topk(2, dim=-1).values
        span = (e.max(-1).values - e.min(-1).values).clamp_min(1e-30)
        decided = (top2[:, 0] - top2[:, 1]) >= margin * span
        total += int(decided.sum())
        agree += int(((a.argmax(-1) == e.argmax(-1)) & decided).sum())
    return (agree / total, total) if total else None


def _raise_to(mode: QuantMode, status: str, reason: str) -> None:
    if status == FAIL or mode.status == PASS:
        mode.status = status
    mode.reasons.append(reason)


def _judge_sqnr(mode: QuantMode, opts: CheckOptions) -> None:
    assert mode.comparison is not None
    db, worst = mode.sqnr_db, mode.comparison.worst
    where = f" (`{worst.name}`)" if worst is not None and len(mode.comparison.leaves) > 1 else ""
    if db < opts.fail_sqnr_db:
        _raise_to(mode, FAIL, f"{mode.mode} int8 output is mostly noise: SQNR {db:.1f} dB{where} < {opts.fail_sqnr_db:g} dB")
    elif db < opts.warn_sqnr_db:
        _raise_to(mode, WARN, f"{mode.mode} int8 SQNR {db:.1f} dB{where} < {opts.warn_sqnr_db:g} dB")


def _judge_accuracy(mode: QuantMode, opts: CheckOptions, acc_fp32: float | None, labelled: int) -> None:
    if mode.accuracy is None or acc_fp32 is None or acc_fp32 - mode.accuracy <= opts.max_accuracy_drop:
        return
    lost = round((acc_fp32 - mode.accuracy) * labelled)
    text = (f"{mode.mode} int8 accuracy {mode.accuracy:.1%} vs fp32 {acc_fp32:.1%} on {labelled} labelled samples "
            f"(drop > {opts.max_accuracy_drop:.1%})")
    if lost >= 2:
        _raise_to(mode, FAIL, text)
    else:  # one sample may be a near-tie: with few labels the threshold is coarser than one sample
        _raise_to(mode, WARN, text + f"; only {lost} sample, so this warns: give more labelled samples")


def judge(mode: QuantMode, opts: CheckOptions, acc_fp32: float | None, ref: Any, labelled: int = 0) -> None:
    """SQNR below `fail_sqnr_db` fails, below `warn_sqnr_db` warns; top-1 below `min_top1` warns;
    an accuracy drop above `max_accuracy_drop` by 2+ samples fails (one sample warns)."""
    if mode.not_applicable:
        mode.status = PASS
        return
    if mode.error:
        mode.status = WARN
        mode.reasons.append(f"{mode.mode} int8 could not be built or run: {mode.error}")
        return
    _judge_sqnr(mode, opts)
    decided = decided_top1(mode.outputs, ref, TOP1_MARGIN)
    mode.decided_top1 = decided[0] if decided else None
    if decided is not None and decided[0] < opts.min_top1:
        _raise_to(mode, WARN, f"{mode.mode} int8 agrees with fp32's top-1 on {decided[0]:.0%} of the {decided[1]} decided rows "
                              f"(< {opts.min_top1:.0%})")
    _judge_accuracy(mode, opts, acc_fp32, labelled)
    mode.numeric = mode.status != PASS


def _labelled(ctx: Context, x: Any, cal: Calibration) -> tuple[Any, torch.Tensor] | None:
    """(inputs, labels) when Target.labels matches the samples, the calibration inputs or the example."""
    t = ctx.target
    if t.labels is None:
        return None
    try:
        y = torch.as_tensor(list(t.labels)).reshape(-1).long()
    except (TypeError, ValueError):
        return None
    n = y.numel()
    if t.samples is not None and t.preprocess is not None and hasattr(t.samples, "__len__") and len(t.samples) == n:
        try:
            return torch.stack([torch.as_tensor(t.preprocess(s)) for s in t.samples]).cpu(), y
        except Exception:
            pass
    if cal.source == "target" and cal.samples == n:
        return inp.concat_batch(cal.batches, ctx.batch_dim), y
    if rows(x, ctx.batch_dim) == n:
        return x, y
    return None


def _accuracy(outputs: Any, labels: torch.Tensor) -> float | None:
    for leaf in flatten(outputs).values():
        if isinstance(leaf, torch.Tensor) and leaf.is_floating_point() and leaf.dim() == 2 and leaf.shape[0] == labels.numel():
            return float((leaf.argmax(-1).cpu() == labels).float().mean())
    return None


def _accuracies(ctx: Context, results: list[QuantMode], float_model: nn.Module, x: Any, cal: Calibration,
                notes: list[str]) -> tuple[float | None, int]:
    """Every variant's accuracy against Target.labels; (fp32 accuracy, labelled samples)."""
    labelled = _labelled(ctx, x, cal)
    if labelled is None:
        return None, 0
    lx, ly = labelled
    with torch.inference_mode():
        acc_fp32 = _accuracy(inp.call_model(float_model, lx), ly)
    for mode in results:
        if mode.ran:
            try:
                mode.accuracy = _accuracy(mode.call_rows(lx, rows(x, ctx.batch_dim), ctx.batch_dim), ly)
            except Exception as exc:
                notes.append(f"{mode.mode}: accuracy against Target.labels could not be computed: {one_line(exc, 240)}")
    return acc_fp32, int(ly.numel())


def measure(ctx: Context, opts: CheckOptions, results: list[QuantMode], float_model: nn.Module, x: Any, ref: Any,
            cal: Calibration, notes: list[str]) -> tuple[float | None, float | None]:
    """Compare, size, accuracy, judge and time every variant that ran; (fp32 accuracy, fp32 latency)."""
    for mode in results:
        if mode.outputs is not None:
            mode.comparison = compare(mode.outputs, ref)
            mode.size_bytes = state_size(mode.model, graph_constants=mode.flow == "pt2e")
            if mode.fastpath_off:
                notes.append(f"{mode.mode}: the MultiheadAttention fast path cannot run quantized linears; it ran with "
                             f"torch.backends.mha.set_fastpath_enabled(False)")
    acc_fp32, labelled = _accuracies(ctx, results, float_model, x, cal, notes)
    for mode in results:
        judge(mode, opts, acc_fp32, ref, labelled)
        if mode.mode == "static" and mode.ran and cal.source == "synthesised" and mode.status == PASS:
            mode.status = WARN
            mode.reasons.append("static int8 was calibrated on synthesised inputs")
    latency_fp32 = None
    ran = [m for m in results if m.ran]
    if opts.latency and ran:
        latency_fp32 = latency(lambda: inp.call_model(float_model, x))
        for mode in ran:
            mode.latency_s = latency(lambda m=mode: m.call(x))
    return acc_fp32, latency_fp32


def plain_hint(results: list[QuantMode], cal: Calibration) -> str:
    """The hint when nothing numeric is wrong: a build failure or synthesised calibration."""
    failed = [m for m in results if m.error]
    if failed:
        return ("; ".join(f"{m.mode} int8 could not be built ({m.error})" for m in failed)
                + ": static flows need a model torch.export or FX symbolic tracing can capture (no data-dependent Python "
                  "control flow in forward); dynamic quantization needs none")
    return cal.findings[0] if cal.findings else "see details['modes']"


def mode_metrics(mode: QuantMode) -> dict[str, Any]:
    p = f"{mode.mode}."
    if mode.not_applicable:
        return {f"{p}applicable": False}
    out: dict[str, Any] = {f"{p}status": mode.status}
    if mode.comparison is not None:
        out[f"{p}sqnr_db"] = mode.sqnr_db
        if mode.top1 is not None:
            out[f"{p}top1_agreement"] = mode.top1
        out[f"{p}min_cosine"] = mode.comparison.min_cosine
        out[f"{p}max_abs"] = mode.comparison.max_abs
    if mode.mode == "static":
        out[f"{p}flow"] = mode.flow or "none"
    else:
        out[f"{p}layers"] = len(mode.layers)
    for key, value in (("size_bytes", mode.size_bytes), ("latency_ms", mode.latency_s * 1e3 if mode.latency_s is not None else None),
                       ("accuracy", mode.accuracy)):
        if value is not None:
            out[p + key] = value
    return out


def details(results: list[QuantMode], cal: Calibration, blame: str | None, opts: CheckOptions, notes: list[str]) -> dict[str, Any]:
    return {
        "modes": {m.mode: {"flow": flow_text(m) if not m.not_applicable else None, "status": m.status, "reasons": m.reasons,
                           "error": m.error, "not_applicable": m.not_applicable, "flow_errors": m.flow_errors,
                           "layers": m.layers if m.mode == "dynamic" else None, "decided_top1": m.decided_top1,
                           "comparison": m.comparison.metrics() if m.comparison is not None else None} for m in results},
        "calibration": {"source": cal.source, "batches": len(cal.batches), "samples": cal.samples, "findings": cal.findings,
                        "blame": blame},
        "thresholds": {"fail_sqnr_db": opts.fail_sqnr_db, "warn_sqnr_db": opts.warn_sqnr_db, "min_top1": opts.min_top1,
                       "max_accuracy_drop": opts.max_accuracy_drop},
        "notes": notes,
    }


def _mode_summary(m: QuantMode, cal: Calibration, size_fp32: int, latency_fp32: float | None, acc_fp32: float | None) -> str:
    if m.not_applicable:
        return f"{m.mode}: not applicable ({m.not_applicable})"
    if not m.ran:
        return f"{m.mode}: could not run ({m.error})"
    bits = [f"SQNR {m.sqnr_db:.1f} dB"]
    if m.top1 is not None:
        bits.append(f"top-1 agreement {m.top1:.0%}")
    if m.accuracy is not None and acc_fp32 is not None:
        bits.append(f"accuracy {acc_fp32:.1%} -> {m.accuracy:.1%}")
    bits.append(f"size {format_bytes(size_fp32)} -> {format_bytes(m.size_bytes)}")
    if m.latency_s is not None and latency_fp32 is not None:
        bits.append(f"latency {latency_fp32 * 1e3:.3g} -> {m.latency_s * 1e3:.3g} ms")
    how = f"{flow_text(m)}, {cal.describe()}" if m.mode == "static" else f"{len(m.layers)} layer(s)"
    return f"{m.mode} ({how}): " + ", ".join(bits)


def summary(results: list[QuantMode], cal: Calibration, size_fp32: int, latency_fp32: float | None, acc_fp32: float | None,
            status: str, calibration_blame: str | None, on_cuda: bool) -> str:
    parts = [_mode_summary(m, cal, size_fp32, latency_fp32, acc_fp32) for m in results]
    reasons = [r for m in results for r in m.reasons if m.status != PASS]
    head = "; ".join(reasons) if reasons and status != PASS else "int8 keeps the outputs"
    text = f"{head} [{'; '.join(parts)}]"
    if calibration_blame:
        text += f"; {calibration_blame}"
    if on_cuda:
        text += " (quantized models ran on CPU)"
    return text


def publish(ctx: Context, results: list[QuantMode], x: Any) -> None:
    """The int8 variants for the benchmark; a PT2E graph runs other batch sizes in example-sized chunks."""
    size = rows(x, ctx.batch_dim)
    for mode in results:
        if not mode.ran:
            continue
        ctx.add_variant(Variant(
            name=f"int8-{mode.mode}", run=lambda inputs, m=mode: m.call_rows(inputs, size, ctx.batch_dim),
            source_check="quantization", verdict=mode.status,
            max_error=mode.comparison.max_abs if mode.comparison is not None else None, size_bytes=mode.size_bytes,
            note=f"{flow_text(mode)}; runs on CPU" + ("; PT2E reference (quantize/dequantize) graph exported for the example "
                                                     "shapes, not lowered to int8 kernels" if mode.flow == "pt2e" else ""),
        ))
