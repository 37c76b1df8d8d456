"""fp16/bf16: the verdict over the ways that ran, and the culprit with its hint.

The culprit of a way that is not acceptable comes from its per-layer table: the first module, in
execution order, whose output is Inf/NaN or whose fp32 range exceeds the dtype; else the first
whose values sit below the dtype's normal range; else the module that loses the most on its own.
Else a way that raised names the module and line; else the module closest to the dtype's largest value.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..compare import eps
from ..locate.code import library_name
from ..locate.culprit import Culprit
from ..registry import CheckOptions
from ..results import FAIL, PASS, WARN
from .error_table import LayerError, pick_local_culprit
from .raising import RaiseSite
from .ranges import ModuleRange
from .reduced import WayRun, dtype_name


@dataclass
class Blame:
    culprit: Culprit
    hint: str
    reason: str  # added to the summary when a layer table explains the failure


def raise_hint(site: RaiseSite, dtype: torch.dtype, device: torch.device) -> str:
    """What to change when a forward raises in `dtype`, from the exception's words."""
    name = dtype_name(dtype)
    low = site.exception.lower()
    where = f"`{site.culprit.name or '<root>'}` ({site.culprit.module_type})"
    code = f" (`{site.code}`)" if site.code else ""
    if "without overflow" in low:
        return (f"a constant in {where}{code} does not fit in {name}: use `torch.finfo(x.dtype).min` (or `.max`) "
                f"instead of a literal like -1e9, so the value follows the tensor's dtype")
    if not site.in_model_code and "transformer" in (site.culprit.file or "").lower():
        return (f"{where} raises in PyTorch's fast path for nn.TransformerEncoder/MultiheadAttention, which does not support "
                f"{name} this way: ship the whole-model cast (`model.to(torch.{str(dtype).replace('torch.', '')})`), or "
                f"disable the fast path with `torch.backends.mha.set_fastpath_enabled(False)`"
                + (f" (the encoder is called at {site.called_from.location})" if site.called_from else ""))
    dtype_clash = ("dtype" in low or "scalar type" in low or "should be the same" in low) and any(
        w in low for w in ("half", "bfloat16", "float", "double", "same"))
    library = library_name(site.culprit.file)
    if dtype_clash and library:
        return (f"{where}{code} mixes {name} with a tensor of another dtype in {library} library code ({site.culprit.location}): "
                f"do not edit {library}; ship autocast where it runs, or {keep_fp32(site.culprit.name, device)}")
    if dtype_clash:
        return (f"{where}{code} mixes {name} with a tensor of another dtype: a tensor made inside forward without "
                f"`dtype=` (torch.zeros/ones/arange/tensor), a buffer or parameter kept in fp32, or an explicit `.float()`. "
                f"Create it with `dtype=x.dtype, device=x.device`, or cast it with `.to(x.dtype)` where it meets the input")
    if "not implemented for" in low:
        return (f"an operator in {where}{code} has no {name} kernel on {device.type}: run this module in fp32 "
                f"(autocast: `with torch.autocast('{device.type}', enabled=False): y = module(x.float())`), or use the other dtype")
    if library:
        return (f"{where}{code} raises in {name} in {library} library code ({site.culprit.location}): do not edit {library}; "
                f"{keep_fp32(site.culprit.name, device)}")
    return (f"{where}{code} raises in {name}: make its forward dtype-agnostic (derive dtypes from the inputs, `x.dtype`, "
            f"instead of hard-coding float32 or fp32-only constants), or keep it in fp32")


def keep_fp32(name: str, device: torch.device) -> str:
    return (f"keep `{name}` in fp32 (autocast: call it inside `with torch.autocast('{device.type}', enabled=False):` on "
            f"`x.float()`; whole-model cast: `model.get_submodule('{name}').float()` and cast its input and output)")


def _overflow(rows: list[LayerError], dtype: torch.dtype, device: torch.device) -> Blame | None:
    info, name = torch.finfo(dtype), dtype_name(dtype)
    or_bf16 = dtype == torch.float16
    for r in rows:
        over = math.isfinite(r.fp32_absmax) and r.fp32_absmax > info.max
        if over:
            reason = f"{r.label} produces values up to {r.fp32_absmax:.3g} in fp32, beyond {name}'s largest finite value {info.max:.5g}"
            hint = (f"{reason}: {keep_fp32(r.name, device)}, scale its weights or inputs down so its activations stay well "
                    f"below {info.max:.5g}" + (", or use bf16 (the range of fp32)" if or_bf16 else ""))
            return Blame(r.culprit, hint, reason)
        if r.carried_nonfinite:
            reason = (f"{r.label} outputs Inf/NaN in {name} although its fp32 output (max |x| {r.fp32_absmax:.3g}) fits: an "
                      f"intermediate inside its forward (a square, exp, sum or product of large values) overflows")
            hint = (f"{reason}; compute that part in fp32 (`x.float()` ... `.to(x.dtype)`) or {keep_fp32(r.name, device)}"
                    + (", or use bf16" if or_bf16 else ""))
            return Blame(r.culprit, hint, reason)
    return None


def _underflow(rows: list[LayerError], dtype: torch.dtype, device: torch.device) -> Blame | None:
    info, name = torch.finfo(dtype), dtype_name(dtype)
    for r in rows:
        if 0 < r.fp32_absmax < info.tiny:
            reason = (f"{r.label} outputs values of at most {r.fp32_absmax:.3g} in fp32, below {name}'s smallest normal number "
                      f"{info.tiny:.3g}, so they lose precision or flush to zero")
            hint = (f"{reason}: rescale (normalise) the activations or weights feeding it, {keep_fp32(r.name, device)}"
                    + (", or use bf16 (the range of fp32)" if dtype == torch.float16 else ""))
            return Blame(r.culprit, hint, reason)
    return None


def _local_loss(rows: list[LayerError], dtype: torch.dtype, device: torch.device) -> Blame | None:
    best = pick_local_culprit(rows)
    if best is None or best.local_rms_rel is None:
        return None
    name = dtype_name(dtype)
    units = best.local_rms_rel / eps(dtype)
    if best.local_nonfinite or best.local_rms_rel >= 0.5:
        reason = (f"{best.label} gives a wrong output in {name} even from exact fp32 inputs (relative RMS error "
                  f"{best.local_rms_rel:.3g}): an intermediate inside its forward loses its significant bits (an overflowing "
                  f"square or exp, an underflow, or a large offset that cancels)")
        hint = (f"{reason}; compute that part in fp32 (e.g. `x.float().pow(2).mean()` for a variance), or "
                f"{keep_fp32(best.name, device)}")
    elif units < 8:
        reason = (f"no module loses much precision on its own (largest: {best.label}, {units:.1f} x eps({name})); the error "
                  f"accumulates over the depth of the model")
        hint = f"{reason}: keep the longest accumulating path (residual stream, recurrent state) in fp32, or use autocast instead of a whole-model cast"
    else:
        reason = f"{best.label} loses the most precision on its own: {best.local_rms_rel:.3g} relative RMS error from fp32 inputs ({units:.0f} x eps({name}))"
        hint = (f"{reason}; {keep_fp32(best.name, device)}, or compute its precision-sensitive part in fp32 (large integers "
                f"such as positions, sums of squares, exponentials)")
    return Blame(best.culprit, hint, reason)


def layer_culprit(rows: list[LayerError], dtype: torch.dtype, device: torch.device) -> Blame | None:
    """Overflow first (execution order), then values below the normal range, then the largest local error."""
    return _overflow(rows, dtype, device) or _underflow(rows, dtype, device) or _local_loss(rows, dtype, device)


def headroom(ranges: list[ModuleRange], dtype: torch.dtype) -> tuple[float, ModuleRange | None]:
    """`dtype max / largest finite fp32 activation`, and the module that reaches it."""
    finite = [r for r in ranges if math.isfinite(r.absmax)]
    if not finite:
        return math.inf, None
    top = max(finite, key=lambda r: r.absmax)
    return (torch.finfo(dtype).max / top.absmax if top.absmax > 0 else math.inf), top


def verdict(best: WayRun, runs: list[WayRun], room: float, top: ModuleRange | None, opts: CheckOptions,
            dtype: torch.dtype, reference: str) -> tuple[str, list[str], WayRun | None]:
    """Status, reasons, and the way the layer table should explain. The best way out of budget, too
    noisy or outside a user tolerance fails; another way that raised or is not acceptable, low
    headroom or differing non-floating outputs warn."""
    name, info = dtype_name(dtype), torch.finfo(dtype)
    status, reasons, explain = PASS, [], None
    if not best.acceptable:
        status, explain = FAIL, best
        reasons.append(f"{name} ({best.way}) fails: " + "; ".join(best.problems(reference, opts)))
    warnings = [f"{r.way} raised in {r.raised.label}: {r.raised.exception}" for r in runs if r.raised]
    for r in runs:
        if r.ran and r is not best and not r.acceptable:
            warnings.append(f"{r.way} is not acceptable: {'; '.join(r.problems(reference, opts))}; {best.way} is, so deploy "
                            f"with {best.way}" if best.acceptable else f"{r.way} fails too")
            explain = explain or r
    if room < opts.min_headroom and top is not None and status != FAIL:
        warnings.append(f"{top.label} reaches {top.absmax:.3g} in fp32, " + (
            f"within {room:.3g}x of {name}'s largest value {info.max:.5g}" if room >= 1 else
            f"beyond {name}'s largest value {info.max:.5g} (the {best.way} run survived it: the op ran in fp32 there)"))
    if best.mismatched:
        warnings.append(f"non-floating outputs differ in {name}: " + "; ".join(best.mismatched[:3]))
    if warnings and status == PASS:
        status = WARN
    return status, reasons + warnings, explain


def culprit(status: str, rows: list[LayerError], explain: WayRun | None, runs: list[WayRun], room: float,
            top: ModuleRange | None, opts: CheckOptions, dtype: torch.dtype, device: torch.device) -> Blame | None:
    """A way that is not acceptable is explained by its layer table; else a way that raised; else the headroom."""
    if status == PASS:
        return None
    if explain is not None and rows:
        found = layer_culprit(rows, dtype, device)
        if found is not None:
            return found
    site = next((r.raised for r in runs if r.raised), None)
    if site is not None and (status == WARN or not any(r.ran for r in runs)):
        return Blame(site.culprit, raise_hint(site, dtype, device), "")
    if status == WARN and room < opts.min_headroom and top is not None:
        return Blame(top.culprit,
                     f"{top.label} comes within {room:.3g}x of {dtype_name(dtype)}'s largest value: inputs a little larger "
                     f"than the example overflow; {keep_fp32(top.name, device)} or scale its activations down", "")
    return None
