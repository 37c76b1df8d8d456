"""CUDA family: out-of-memory at the real batch size, memory growth, hidden syncs, CPU/GPU parity.

* `cuda_sync` — every operation in forward that makes the host wait for the GPU (`.item()`,
  `if t:`, `nonzero`, boolean masks, `unique`, `.tolist()`, `.numpy()`, `.cpu()`,
  `torch.cuda.synchronize`), each once with module path and file:line. Works on CPU too.
* `cuda_oom` — peak memory per batch size, fitted against the batch; with a budget, whether the
  deployment batch fits and the largest batch that does (confirmed by a real search on CUDA).
* `memory_growth` — memory kept alive across calls (lists of activations, caches, autograd graphs).
* `device_parity` (CUDA only) — CUDA outputs against CPU within an fp64-calibrated tolerance, and which
  setting (TF32, cuDNN algorithms, the SDPA backend) explains a difference.
* `cuda_timing` (CUDA only) — latency with and without synchronisation: the error a timer without
  `torch.cuda.synchronize()` makes.

Everything except the last two runs and is tested on machines without a GPU; on a GPU the same
checks use CUDA's own mechanisms (allocator statistics, `set_sync_debug_mode`, real OOMs).
"""
from __future__ import annotations

import contextlib
import copy
import gc
import inspect
import math
import os
import re
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch

from torch_diagnose import inputs as inp
from torch_diagnose.context import Context
from torch_diagnose.registry import CheckOptions, Option, register
from torch_diagnose.results import FAIL, PASS, WARN, CheckResult, SkipCheck

from ._hints import short_location

FAMILY = "cuda"
_CHECKS_DIR = os.path.dirname(os.path.abspath(__file__))


# =============================================================================================
# cuda_sync

#: How each spied op reads to a user.
_OP_TEXT = {
    "aten._local_scalar_dense": "`.item()` / `float(t)` / `int(t)`",
    "aten.item": "`.item()` / `float(t)` / `int(t)`",
    "aten.is_nonzero": "`if tensor:` / `bool(tensor)`",
    "aten.equal": "`torch.equal`",
    "aten.allclose": "`torch.allclose`",
    "aten.nonzero": "`nonzero`",
    "aten.argwhere": "`argwhere`",
    "aten.where": "`torch.where(condition)` (one argument: nonzero)",
    "aten.index": "boolean-mask indexing `x[mask]`",
    "aten.index_put": "boolean-mask assignment `x[mask] = v`",
    "aten.index_put_": "boolean-mask assignment `x[mask] = v`",
    "aten._index_put_impl_": "boolean-mask assignment `x[mask] = v`",
    "aten.masked_select": "`masked_select`",
    "aten._unique2": "`unique`",
    "aten._unique": "`unique`",
    "aten.unique_dim": "`unique(dim=...)`",
    "aten.unique_consecutive": "`unique_consecutive`",
    "aten.repeat_interleave": "`repeat_interleave` with tensor repeats",
    "aten.bincount": "`bincount`",
    "aten.nms": "`torchvision.ops.nms` (its CUDA kernel copies the mask to the host)",
    "aten._nested_tensor_from_mask": "nested-tensor fast path (`_nested_tensor_from_mask`)",
    "aten._nested_tensor_from_mask_left_aligned": "nested-tensor fast path (mask check)",
    "aten._to_copy": "device-to-host copy",
    "aten.to": "device-to-host copy",
    "aten.copy_": "device-to-host copy",
    "Tensor.tolist": "`.tolist()`",
    "Tensor.numpy": "`.numpy()`",
    "Tensor.cpu": "`.cpu()`",
    "Tensor.to": "`.to('cpu')`",
    "torch.cuda.synchronize": "`torch.cuda.synchronize()`",
    "torch.cuda.Stream.synchronize": "`stream.synchronize()`",
    "torch.cuda.Event.synchronize": "`event.synchronize()`",
    "cuda sync (set_sync_debug_mode)": "a synchronizing CUDA call (set_sync_debug_mode)",
}


def op_text(op: str) -> str:
    return _OP_TEXT.get(op, f"`{op}`")


def _sync_hint(point: Any) -> str:
    from torch_diagnose.sync import HINTS

    what = op_text(point.op)
    code = f" (`{point.event.code}`)" if point.event.code else ""
    where = f"`{point.event.module or '<root>'}.{point.event.function or 'forward'}`"
    if "nested_tensor" in point.op:
        return (f"{where}{code}: nn.TransformerEncoder's fast path turns the padding mask into a nested tensor, which reads "
                "the mask on the host: build it with `enable_nested_tensor=False` if the sync costs more than the padding")
    return f"{where} uses {what}{code}: it {HINTS[point.kind]}"


@register(
    "cuda_sync",
    family=FAMILY,
    title="forward makes no hidden host-device synchronisation",
    order=80,
    options=(
        Option("fail", bool, False, "report sync points as a failure instead of a warning"),
        Option("allow", list, [], "accepted sync points: op names (nonzero, item, tolist), module paths or types "
               "(roi_heads, RoIHeads), or file:line"),
    ),
)
def cuda_sync(ctx: Context, opts: CheckOptions) -> CheckResult:
    """Every operation in forward that makes the host wait for the GPU, each once, first one as culprit.

    A `TorchDispatchMode` sees scalar reads (`.item()`, `float(t)`, `if t:`), data-dependent shapes
    (`nonzero`, boolean-mask indexing, `unique`, `masked_select`, `repeat_interleave`) and copies to
    the host; Python-level wrappers, installed only for the spied forward, catch `.tolist()`,
    `.numpy()`, `.cpu()`, `.to("cpu")` and `torch.cuda.synchronize()`. On CUDA,
    `torch.cuda.set_sync_debug_mode("warn")` runs too and confirms what it sees. Runs on CPU: the
    ops found are those that would sync on a GPU. Sync points are a warning (option `fail` makes
    them a failure); `allow` accepts known ones, e.g. `allow=nonzero` for detection models.
    """
    from torch_diagnose.sync import SyncSpy, matches_allow

    model = ctx.model
    inputs = ctx.fresh_inputs()
    with SyncSpy(model, skip_dirs=(_CHECKS_DIR,)) as spy:
        ctx.forward(inputs)
    points = spy.points()
    allow = [str(a) for a in opts.allow]
    for point in points:
        point.allowed_by = matches_allow(point, allow)
    active = [p for p in points if not p.allowed_by]
    allowed = [p for p in points if p.allowed_by]
    on_cuda = ctx.device is not None and ctx.device.type == "cuda"
    rows = [p.as_row(short_location) for p in points]
    metrics: dict[str, Any] = {
        "sync_points": len(active),
        "sync_calls": sum(p.count for p in active),
        "allowed_sync_points": len(allowed),
        "spied_on": "cuda" if on_cuda else "cpu",
    }
    if on_cuda:
        metrics["cuda_sync_debug_warnings"] = len(spy.cuda_warnings)
    details: dict[str, Any] = {"sync_points": rows}
    if spy.cuda_warnings:
        details["cuda_sync_debug_warnings"] = spy.cuda_warnings[:50]
    where = "" if on_cuda else " (spied on CPU: these are the calls that block the host on a GPU)"
    if not active:
        if allowed:
            shown = ", ".join(f"{op_text(p.op)} in {p.module_label}" for p in allowed[:3]) + (", ..." if len(allowed) > 3 else "")
            summary = f"no host-device sync in forward beyond the {len(allowed)} allowed ({shown}){where}"
        else:
            summary = f"no host-device sync in forward{where}"
        return CheckResult(status=PASS, summary=summary, metrics=metrics, details=details)
    first = active[0]
    listed = "; ".join(
        f"{op_text(p.op)} in {p.module_label} at {short_location(p.event.file, p.event.line) or '?'}" + (f" x{p.count}" if p.count > 1 else "")
        for p in active[:4]
    ) + (f"; ... {len(active) - 4} more" if len(active) > 4 else "")
    hint = _sync_hint(first)
    token = first.op.split(".", 1)[-1] if not first.op.startswith("cuda sync") else (first.event.module or first.event.module_type)
    more = f"{len(active) - 1} more sync point(s) are listed in details. " if len(active) > 1 else ""
    hint += (f". {more}If the model needs it, accept it with `-o cuda_sync.allow={token}` (an op, a module path or type, "
             "or file:line)")
    details["plot"] = {
        "kind": "barh", "title": "host-device sync points (calls per forward)",
        "x": [f"{p.op.split('.', 1)[-1]} @ {p.module_label}" for p in active[:20]],
        "series": {"calls": [p.count for p in active[:20]]}, "xlabel": "", "ylabel": "calls", "logy": False,
    }
    return CheckResult(
        status=FAIL if opts.fail else WARN,
        summary=f"{len(active)} host-device sync point(s) in forward{where}: {listed}",
        culprit=first.module_label,
        location=short_location(first.event.file, first.event.line) or None,
        hint=hint,
        metrics=metrics,
        details=details,
    )


# =============================================================================================
# cuda_oom


def _size_option(value: Any) -> int | None:
    from torch_diagnose.options import parse_size

    if value is None or value == "":
        return None
    return parse_size(value if isinstance(value, int) else str(value))


def _needs_batch(ctx: Context) -> int:
    size = inp.batch_size(ctx.inputs, ctx.batch_dim)
    if size is None or size < 1:
        raise SkipCheck(f"the example inputs have no common batch dimension {ctx.batch_dim} (got {inp.describe(ctx.inputs)}): "
                        "peak memory cannot be related to a batch size")
    return size


#: Real CPU runs are skipped when the fit predicts more than this (fake tensors or the fit are used instead).
_MAX_REAL_RUN_BYTES = 2 * 1024**3


def _measure_batches(ctx: Context, batches: list[int], on_cuda: bool) -> tuple[list[Any], list[str]]:
    """Peak per batch: CUDA statistics on a GPU; on CPU a real tracked run for small batches and fake
    tensors (falling back to a real run) above the example's batch."""
    from torch_diagnose.memory import fit_linear, measure_peak_cuda, measure_peak_dispatch, measure_peak_fake, resize_batch

    model = ctx.model
    example = _needs_batch(ctx)
    measured: list[Any] = []
    notes: list[str] = []
    fake_ok = True
    for batch in batches:
        x = resize_batch(ctx.inputs, batch, ctx.batch_dim)
        if on_cuda:
            try:
                measured.append(measure_peak_cuda(model, x, batch=batch))
            except Exception as exc:
                from torch_diagnose.memory import free_cuda_memory, is_oom

                if not is_oom(exc):
                    raise
                notes.append(f"batch {batch} ran out of memory on the device while measuring")
                free_cuda_memory()
            continue
        if batch > max(example, 4) and fake_ok:
            try:
                measured.append(measure_peak_fake(model, x, batch=batch))
                continue
            except Exception as exc:
                fake_ok = False
                notes.append(f"fake tensors cannot run this model ({type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}); "
                             "larger batches were run for real")
        if len(measured) >= 2 and batch > example:
            predicted = fit_linear([(m.batch, m.peak_bytes) for m in measured]).predict(batch)
            if predicted > _MAX_REAL_RUN_BYTES:
                notes.append(f"batch {batch} was not run on CPU (predicted {predicted / 1024**3:.1f} GiB): its peak is extrapolated")
                continue
        measured.append(measure_peak_dispatch(model, x, batch=batch, run=lambda m, xi: ctx.forward(xi, m)))
    return measured, notes


@register(
    "cuda_oom",
    family=FAMILY,
    title="the deployment batch fits in the memory budget",
    order=82,
    options=(
        Option("batch_size", int, None, "deployment batch (default: --batch-size, else the example's batch)"),
        Option("memory_budget", str, None, "device memory the deployment may use, e.g. 8GB (default: --memory-budget; "
               "on CUDA the device's total memory)"),
        Option("margin", float, None, "safety margin on the peak: 0.25 for a CPU estimate, 0.10 when measured on CUDA"),
        Option("reserve", str, "0", "memory set aside for the CUDA context, other models and processes, e.g. 500MiB"),
        Option("max_batch", int, 4096, "largest batch the real CUDA search tries"),
        Option("search", bool, True, "on CUDA with a budget, confirm the largest batch with a real out-of-memory search"),
    ),
)
def cuda_oom(ctx: Context, opts: CheckOptions) -> CheckResult:
    """Peak memory per batch size, fitted as a + b * batch, against the budget at the deployment batch.

    Measured on CUDA (`max_memory_allocated` after `reset_peak_memory_stats`); estimated elsewhere by
    counting the bytes of live tensors during forward (parameters + inputs + activations alive at the
    worst moment; fake tensors for large batches where the model allows). Batches 1, 2, 4, the
    example's and the deployment batch are measured. With `--memory-budget` it fails when the
    deployment batch (`--batch-size`) does not fit with the margin, and always reports the largest
    batch that does; on CUDA a real search (doubling, then bisection, catching
    `torch.OutOfMemoryError`) under the budget confirms it. A CPU figure is an estimate: it leaves out
    the CUDA context, cuDNN/cuBLAS workspaces and allocator fragmentation, so a margin is applied.
    """
    from torch_diagnose.memory import fit_linear, format_bytes

    on_cuda = ctx.device is not None and ctx.device.type == "cuda"
    example = _needs_batch(ctx)
    deploy = opts.batch_size or ctx.options.batch_size or example
    budget = _size_option(opts.memory_budget) or ctx.options.memory_budget
    budget_source = "given"
    if budget is None and on_cuda:
        budget = torch.cuda.get_device_properties(ctx.device).total_memory
        budget_source = "device total"
    reserve = _size_option(opts.reserve) or 0
    margin = opts.margin if opts.margin is not None else (0.10 if on_cuda else 0.25)
    if margin < 0:
        raise SkipCheck(f"margin must be >= 0, got {margin}")

    batches = sorted({1, 2, 4, example, deploy})
    measured, notes = _measure_batches(ctx, batches, on_cuda)
    if not measured:
        raise SkipCheck("no batch size could be measured: " + "; ".join(notes))
    fit = fit_linear([(m.batch, m.peak_bytes) for m in measured])
    by_batch = {m.batch: m for m in measured}
    deploy_m = by_batch.get(deploy)
    deploy_peak = deploy_m.peak_bytes if deploy_m else fit.predict(deploy)
    method = "measured on CUDA (max_memory_allocated)" if on_cuda else "estimated on CPU from live tensor bytes during forward"
    caveat = ("" if on_cuda else
              "a CPU estimate leaves out the CUDA context (typically 0.3-1 GiB per process), cuDNN/cuBLAS workspaces and "
              f"allocator fragmentation; a {margin:.0%} margin is applied")
    not_counted = caveat or ("max_memory_allocated does not count the CUDA context (typically 0.3-1 GiB per process): "
                             f"set `reserve` for it; a {margin:.0%} margin covers fragmentation")
    metrics: dict[str, Any] = {
        "deployment_batch": deploy,
        "deployment_peak_bytes": int(deploy_peak),
        "bytes_per_sample": int(round(fit.slope)),
        "fixed_bytes": int(round(fit.intercept)),
        "param_bytes": measured[0].param_bytes,
        "fit_max_rel_residual": round(fit.max_rel_residual, 4),
        "margin": margin,
        "method": "cuda" if on_cuda else ",".join(sorted({m.method for m in measured})),
        "estimate": not on_cuda,
    }
    details: dict[str, Any] = {
        "measurements": [m.as_row() for m in measured],
        "fit": {"intercept_bytes": fit.intercept, "slope_bytes_per_sample": fit.slope, "max_rel_residual": fit.max_rel_residual},
        "method": method,
        "not_included": not_counted,
        "notes": notes,
    }
    peak_where = _peak_module(ctx, measured, deploy_m)
    plot_x = [m.batch for m in measured]
    mib = 1024**2
    plot = {"kind": "line", "title": "peak memory vs batch size", "x": plot_x,
            "series": {"measured peak": [m.peak_bytes / mib for m in measured],
                       f"fit {format_bytes(fit.intercept)} + {format_bytes(fit.slope)}/sample": [fit.predict(b) / mib for b in plot_x]},
            "xlabel": "batch size", "ylabel": "MiB", "logy": False, "always": True}
    details["plot"] = plot
    per_sample = f"{format_bytes(deploy_peak)} at batch {deploy} ({format_bytes(fit.intercept)} fixed + {format_bytes(fit.slope)} per sample)"

    if budget is None:
        metrics["memory_budget_bytes"] = None
        return CheckResult(
            status=PASS,
            summary=f"peak memory {per_sample}, {method}; no --memory-budget given, so no verdict",
            hint="pass --memory-budget SIZE (and --batch-size N) to learn whether the deployment batch fits and the largest batch that does"
            + (f"; {caveat}" if caveat else ""),
            metrics=metrics, details=details,
        )

    usable = (budget - reserve) / (1.0 + margin)
    largest = fit.largest_fitting(usable, limit=1 << 30)
    plot["series"]["usable budget"] = [usable / mib for _ in plot_x]
    metrics.update({
        "memory_budget_bytes": budget,
        "reserve_bytes": reserve,
        "usable_bytes": int(usable),
        "largest_batch_estimate": largest if largest is not None else 0,
        "headroom_bytes": int(usable - deploy_peak),
    })
    details["budget_source"] = budget_source

    confirmed = None
    if on_cuda and opts.search and budget_source == "given":
        confirmed = _confirm_on_cuda(ctx, budget - reserve, deploy, largest, opts.max_batch)
        details["search"] = confirmed.as_rows()
        metrics["largest_batch_confirmed"] = confirmed.largest_ok or 0
        metrics["search_tries"] = len(confirmed.tries)

    largest_text = (f"the largest batch that fits with the margin is {largest}" if largest
                    else "not even batch 1 fits with the margin")
    if confirmed is not None:
        real = confirmed.largest_ok
        largest_text += (f"; a real search on CUDA under the budget ran up to batch {real}" if real
                         else "; on CUDA not even batch 1 ran under the budget") + f" ({len(confirmed.tries)} tries)"
    fits_with_margin = deploy_peak * (1 + margin) + reserve <= budget
    fits_bare = deploy_peak + reserve <= budget
    if confirmed is not None:  # a real out-of-memory search outranks the arithmetic
        fits_bare = confirmed.largest_ok is not None and confirmed.largest_ok >= deploy
        fits_with_margin = fits_with_margin and fits_bare
    advice = largest  # the batch to recommend: within the margin, and never above what really ran
    if confirmed is not None:
        advice = min(largest, confirmed.largest_ok) if largest and confirmed.largest_ok else None
    budget_line = f"budget {format_bytes(budget)}" + (f" - reserve {format_bytes(reserve)}" if reserve else "") + f" ({budget_source})"
    if fits_with_margin and fits_bare:
        return CheckResult(
            status=PASS,
            summary=f"batch {deploy} fits: peak {per_sample}, {budget_line}; {largest_text}; {method}",
            hint=caveat or None, metrics=metrics, details=details,
        )
    culprit = peak_where or None
    if fits_bare:
        return CheckResult(
            status=WARN,
            summary=f"batch {deploy} fits only without the {margin:.0%} margin: peak {per_sample}, {budget_line}; {largest_text}; {method}",
            culprit=culprit,
            hint=(f"run at batch <= {advice} to keep the margin" if advice else "even batch 1 does not keep the margin: shrink the model") + (f", or raise the budget; {caveat}" if caveat else ", or raise the budget"),
            metrics=metrics, details=details,
        )
    reduce = (f"serve at batch <= {advice}" if advice else "the model does not fit even at batch 1: shrink it (fp16/bf16, quantization) or use a larger device")
    where = f"; activations peak in {peak_where}" if peak_where else ""
    weights = measured[0].param_bytes
    if weights * (1 + margin) + reserve > budget:
        culprit = f"<root> ({type(ctx.model).__name__}) parameters"
        where = f"; the weights alone take {format_bytes(weights)}"
    if fit.max_rel_residual > 0.1:
        where += f"; peak memory is not linear in the batch (fit residual {fit.max_rel_residual:.0%}), so the largest batch is approximate"
    return CheckResult(
        status=FAIL,
        summary=f"batch {deploy} does not fit: peak {per_sample} x (1 + {margin:.0%} margin) > {budget_line}; {largest_text}; {method}",
        culprit=culprit,
        hint=f"{reduce}{where}; or lower activation memory (fp16/bf16 activations, smaller inputs, in-place activations, "
        "chunking the batch)" + (f". Note: {caveat}" if caveat else ""),
        metrics=metrics, details=details,
    )


def _peak_module(ctx: Context, measured: list[Any], deploy_m: Any | None) -> str:
    """The module running when activation memory peaks (CUDA statistics do not say: track one small batch)."""
    found = (deploy_m.peak_module if deploy_m else "") or next((m.peak_module for m in measured if m.peak_module), "")
    if found:
        return found
    from torch_diagnose.memory import free_cuda_memory, is_oom, measure_peak_dispatch

    try:
        return measure_peak_dispatch(ctx.model, ctx.inputs, batch=0, run=lambda m, xi: ctx.forward(xi, m)).peak_module
    except Exception as exc:  # even the example batch does not fit: the verdict says so, the name is a courtesy
        if not is_oom(exc):
            raise
        free_cuda_memory()
        return ""


def _confirm_on_cuda(ctx: Context, budget: int, deploy: int, estimate: int | None, max_batch: int) -> Any:
    """The real search on CUDA under a per-process memory fraction equal to the budget."""
    from torch_diagnose.memory import cuda_try, memory_fraction, resize_batch, search_max_batch

    def make(batch: int) -> Any:
        return resize_batch(ctx.inputs, batch, ctx.batch_dim)

    from torch_diagnose.memory import free_cuda_memory, model_bytes

    start = max(1, min(deploy, estimate or deploy))
    # Other things this run keeps on the device (the fp64 copy, reference outputs) are not the deployment's:
    # give the allocator the budget on top of them.
    free_cuda_memory()
    others = max(torch.cuda.memory_reserved(ctx.device) - model_bytes(ctx.model), 0)
    with memory_fraction(budget + others, ctx.device):
        return search_max_batch(cuda_try(ctx.model, make), start=start, limit=max(max_batch, deploy))


# =============================================================================================
# memory_growth


_SKIP_ATTRS = frozenset({"_parameters", "_modules", "_forward_hooks", "_forward_pre_hooks", "_backward_hooks",
                         "_backward_pre_hooks", "_state_dict_hooks", "_load_state_dict_pre_hooks",
                         "_load_state_dict_post_hooks", "_state_dict_pre_hooks", "_forward_hooks_with_kwargs",
                         "_forward_pre_hooks_with_kwargs", "_forward_hooks_always_called", "_non_persistent_buffers_set"})


def _walk_tensors(value: Any, depth: int = 0, seen: set[int] | None = None) -> Iterator[torch.Tensor]:
    """Tensors reachable from `value` through containers and plain objects (not modules), a few levels deep."""
    seen = set() if seen is None else seen
    if id(value) in seen or depth > 4:
        return
    seen.add(id(value))
    if isinstance(value, torch.Tensor):
        yield value
        return
    if isinstance(value, torch.nn.Module) or inspect.ismodule(value) or inspect.isclass(value) or callable(value) and not hasattr(value, "__dict__"):
        return
    if isinstance(value, dict):
        items: Any = list(value.values())
    elif isinstance(value, (list, tuple, set, frozenset)) or type(value).__name__ == "deque":
        items = list(value)
    elif hasattr(value, "__dict__") and not inspect.isroutine(value) and depth < 3:
        items = list(vars(value).values())
    else:
        return
    for item in items[:100_000]:
        yield from _walk_tensors(item, depth + 1, seen)


def _holders(model: torch.nn.Module, live: dict[int, int], sites: dict[int, str] | None = None) -> list[dict[str, Any]]:
    """Module attributes (and module-level globals of the model's source files) holding tracked live tensors,
    with the modules whose forward produced them (`sites`: storage id -> module label)."""
    sites = sites or {}
    found: list[dict[str, Any]] = []

    def account(path: str, value: Any, owner: str, owner_obj: Any, attr: str) -> None:
        storages: dict[int, int] = {}
        grad_graph = False
        count = 0
        for t in _walk_tensors(value):
            try:
                sid = id(t.untyped_storage())
            except Exception:
                continue
            if sid in live:
                storages[sid] = live[sid]
                count += 1
                grad_graph = grad_graph or t.grad_fn is not None
        if storages:
            made_by = sorted({sites[sid] for sid in storages if sid in sites})
            found.append({"path": path, "bytes": sum(storages.values()), "tensors": count, "container": type(value).__name__,
                          "owner": owner, "holds_autograd_graph": grad_graph, "location": _store_site(owner_obj, attr),
                          "produced_by": made_by[:5]})

    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        for attr, value in vars(module).items():
            if attr in _SKIP_ATTRS:
                continue
            if attr == "_buffers":
                for bname, buf in value.items():
                    account(f"{prefix}{bname}", buf, type(module).__name__, module, bname)
                continue
            account(f"{prefix}{attr}", value, type(module).__name__, module, attr)
    for mod_name in sorted({type(m).__module__ for m in model.modules()}):
        pymod = sys.modules.get(mod_name)
        if pymod is None or mod_name.startswith(("torch.", "torchvision.")):
            continue
        for attr, value in vars(pymod).items():
            if isinstance(value, (list, dict, set, tuple)) or type(value).__name__ in ("deque", "OrderedDict") or isinstance(value, torch.Tensor):
                account(f"{mod_name}.{attr}", value, f"module {mod_name}", pymod, attr)
    found.sort(key=lambda h: -h["bytes"])
    return found


def _store_site(owner: Any, attr: str) -> str | None:
    """file:line of the first statement outside `__init__` (or outside top-level code, for a global) that
    stores into `self.ATTR` / the global ATTR: an append, an item assignment or a rebinding."""
    is_global = inspect.ismodule(owner)
    name = re.escape(attr) if is_global else rf"self\.{re.escape(attr)}"
    store = re.compile(rf"(?<![\w.]){name}\s*(\.(append|extend|insert|add|update|setdefault|appendleft)\(|\[[^\]]*\]\s*=[^=]|\+=|=[^=])")
    try:
        if is_global:
            lines, _zero = inspect.getsourcelines(owner)  # a module's lines start at 0
            sources = [(inspect.getsourcefile(owner), lines, 1)]
        else:
            sources = []
            for cls in type(owner).__mro__:
                if cls.__module__.startswith("torch.") or cls is object:
                    continue
                for fname, fn in vars(cls).items():
                    if inspect.isfunction(fn) and fname != "__init__":
                        sources.append((inspect.getsourcefile(fn), *inspect.getsourcelines(fn)))
    except (OSError, TypeError):
        return None
    hits = []
    for file, lines, start in sources:
        for offset, line in enumerate(lines):
            code = line.split("#", 1)[0]
            if is_global and not line[:1].isspace():
                continue  # the module-level definition, not a store at run time
            if store.search(code):
                hits.append((file, start + offset))
                break
    if not hits:
        return None
    file, line = min(hits, key=lambda h: (h[0] or "", h[1]))
    return short_location(file, line)


@dataclass
class _GrowthRun:
    retained: list[int]  # tracked bytes still alive after each call
    holders: list[dict[str, Any]]  # where the survivors are held, largest first
    device_allocated: list[int]  # torch.cuda.memory_allocated() after each call (CUDA only)


def _growth_run(ctx: Context, model: torch.nn.Module, calls: int, grad: bool) -> _GrowthRun:
    """Retained bytes after each call (outputs dropped), with fresh inputs each call."""
    from torch_diagnose.memory import LiveBytesTracker

    tracker = LiveBytesTracker(model, record_sites=True)
    run = _GrowthRun([], [], [])
    on_cuda = ctx.device is not None and ctx.device.type == "cuda"
    with tracker:
        for i in range(calls):
            x = inp.fresh_like(ctx.inputs, seed=ctx.options.seed + 1000 + i)
            out = _grad_forward(ctx, model, x) if grad else ctx.forward(x, model)
            del out, x
            # Young generations only (a full collection costs ~0.2 s with torch loaded); one full pass at the end.
            gc.collect(1) if i < calls - 1 else gc.collect()
            run.retained.append(tracker.retained())
            if on_cuda:
                run.device_allocated.append(torch.cuda.memory_allocated(ctx.device))
        run.holders = _holders(model, tracker.live_storages(), tracker.sites)
    return run


def _grad_forward(ctx: Context, model: torch.nn.Module, x: Any) -> Any:
    """A forward with autograd on and outputs kept attached, as a server without no_grad runs it."""
    ctx.stats.calls += 1
    with torch.enable_grad():
        return inp.call_model(model, x)


def _growth_summary(retained: list[int]) -> tuple[float, bool, bool]:
    """(bytes per call, steady growth, bounded growth) from retained bytes after each call."""
    if len(retained) < 3:
        return 0.0, False, False
    deltas = [b - a for a, b in zip(retained[1:], retained[2:])]  # call 1 is warm-up (lazy caches)
    per_call = (retained[-1] - retained[1]) / max(len(retained) - 2, 1)
    steady = bool(deltas) and all(d > 0 for d in deltas[len(deltas) // 2:])
    bounded = not steady and retained[-1] > retained[0]
    return per_call, steady, bounded


@register(
    "memory_growth",
    family=FAMILY,
    title="repeated calls do not accumulate memory",
    order=84,
    options=(
        Option("calls", int, 5, "forward calls to make (the first is a warm-up)"),
        Option("grad_mode", bool, True, "when tensors survive the calls, also call with autograd enabled, as a server that "
               "forgets torch.inference_mode() would"),
    ),
)
def memory_growth(ctx: Context, opts: CheckOptions) -> CheckResult:
    """Memory retained across repeated forward calls, in bytes per call, and the attribute holding it.

    Calls the model `calls` times with fresh inputs, dropping the outputs each time, and counts
    the bytes of tensors created during the calls that are still alive (a live-tensor tracker; on
    CUDA `memory_allocated` too). Growth under `torch.inference_mode` is a leak (fail): tensors kept
    in module attributes, caches, module-level lists. Growth that appears only with autograd on is an
    autograd graph kept alive through a stored tensor (warn: it leaks in a server without
    `torch.inference_mode()`). The module attribute or global holding the tensors is named, with the
    line that stores into it.
    """
    from torch_diagnose.memory import format_bytes

    calls = max(3, int(opts.calls))
    on_cuda = ctx.device is not None and ctx.device.type == "cuda"
    model = ctx.model_copy()  # the calls may fill the model's own lists and caches: keep the user's model as it was
    first = _growth_run(ctx, model, calls, grad=False)
    retained, holders, device = first.retained, first.holders, first.device_allocated
    cuda_growth = (device[-1] - device[0]) / (len(device) - 1) if on_cuda and len(device) > 1 else None
    per_call, steady, bounded = _growth_summary(retained)
    runs = {"inference_mode": {"retained_after_each_call": retained, "bytes_per_call": per_call, "holders": holders}}
    grad_per_call, grad_steady, grad_holders = 0.0, False, []
    # Autograd graphs are kept alive only through tensors that survive the call, and those show up
    # under inference_mode too: without any, the grad-enabled run is skipped (it costs as many forwards).
    if opts.grad_mode and not steady and retained[-1] > 0 and any(p.requires_grad for p in model.parameters()):
        grad_run = _growth_run(ctx, ctx.model_copy(), calls, grad=True)
        g_retained, grad_holders = grad_run.retained, grad_run.holders
        grad_per_call, grad_steady, _g_bounded = _growth_summary(g_retained)
        runs["grad_enabled"] = {"retained_after_each_call": g_retained, "bytes_per_call": grad_per_call, "holders": grad_holders}
    metrics: dict[str, Any] = {
        "calls": calls,
        "bytes_per_call": int(per_call),
        "retained_bytes": retained[-1],
        "bytes_per_call_grad_enabled": int(grad_per_call),
    }
    if cuda_growth is not None:
        metrics["cuda_memory_allocated_bytes_per_call"] = int(cuda_growth)
    details: dict[str, Any] = {"runs": runs, "plot": {
        "kind": "line", "title": "bytes retained after each call", "x": list(range(1, calls + 1)),
        "series": {name: run["retained_after_each_call"] for name, run in runs.items()},
        "xlabel": "call", "ylabel": "bytes", "logy": False}}

    def name_holder(hs: list[dict[str, Any]], total: int = 0) -> tuple[str | None, str | None, str]:
        if not hs:
            return None, None, ("no module attribute or module-level container holds them: look for closures, "
                                "class attributes or caches outside the model")
        h = hs[0]
        through_graph = max(total - sum(x["bytes"] for x in hs), 0)
        graph = (f" whose autograd graph keeps {format_bytes(through_graph)} more alive (every saved activation of every call)"
                 if h["holds_autograd_graph"] else "")
        made = f" made by {', '.join(h['produced_by'][:2])}" if h["produced_by"] else ""
        return (f"{h['path']} ({h['container']} in {h['owner']})", h["location"],
                f"`{h['path']}` holds {h['tensors']} tensor(s), {format_bytes(h['bytes'])}{made}{graph}")

    if steady:
        culprit, location, held = name_holder(holders)
        return CheckResult(
            status=FAIL,
            summary=f"memory grows by {format_bytes(per_call)} per call under inference_mode "
            f"({format_bytes(retained[-1])} retained after {calls} calls)",
            culprit=culprit, location=location,
            hint=f"{held}: keep at most a bounded number (collections.deque(maxlen=...)), store `.detach().cpu()` copies "
            "only when needed, or clear it after each request",
            metrics=metrics, details=details,
        )
    if grad_steady:
        culprit, location, held = name_holder(grad_holders, runs["grad_enabled"]["retained_after_each_call"][-1])
        return CheckResult(
            status=WARN,
            summary=f"with autograd enabled memory grows by {format_bytes(grad_per_call)} per call "
            f"(none under inference_mode): a stored tensor keeps each call's autograd graph alive",
            culprit=culprit, location=location,
            hint=f"{held}: serve under `torch.inference_mode()` (or no_grad), and store `.detach()`ed values "
            "(`.item()` for running totals) so no graph is kept",
            metrics=metrics, details=details,
        )
    if bounded:
        _c, _l, held = name_holder(holders)
        return CheckResult(
            status=PASS,
            summary=f"{format_bytes(retained[-1])} stay alive after the calls but stop growing (a bounded cache)",
            hint=held if holders else None, metrics=metrics, details=details,
        )
    return CheckResult(status=PASS, summary=f"no memory retained across {calls} calls"
                       + (" (also with autograd enabled)" if "grad_enabled" in runs else ""),
                       metrics=metrics, details=details)


# =============================================================================================
# device_parity (CUDA only)


@contextlib.contextmanager
def _tf32_off() -> Iterator[None]:
    """IEEE fp32 for cuBLAS matmuls and cuDNN convolutions/RNNs (new API when present, else the legacy flags)."""
    matmul = torch.backends.cuda.matmul
    if hasattr(matmul, "fp32_precision") and hasattr(torch.backends.cudnn, "conv"):
        targets = [(matmul, "fp32_precision"), (torch.backends.cudnn.conv, "fp32_precision"),
                   (torch.backends.cudnn.rnn, "fp32_precision")]
        saved = [(obj, name, getattr(obj, name)) for obj, name in targets]
        try:
            for obj, name in targets:
                setattr(obj, name, "ieee")
            yield
        finally:
            for obj, name, value in saved:
                setattr(obj, name, value)
        return
    saved_legacy = (matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.get_float32_matmul_precision())
    try:
        matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.set_float32_matmul_precision("highest")
        yield
    finally:
        matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved_legacy[:2]
        torch.set_float32_matmul_precision(saved_legacy[2])


@contextlib.contextmanager
def _cudnn_deterministic() -> Iterator[None]:
    saved = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    try:
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        yield
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved


def _sdpa(backend_name: str) -> Callable[[], Any]:
    def make() -> Any:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        return sdpa_kernel(getattr(SDPBackend, backend_name))

    return make


@contextlib.contextmanager
def _all_strict() -> Iterator[None]:
    with _tf32_off(), _cudnn_deterministic(), _sdpa("MATH")():
        yield


def parity_settings(uses_sdpa: bool) -> list[tuple[str, str, Callable[[], Any]]]:
    """(name, what it changes, context factory) for each setting tried, one at a time, then all together."""
    settings = [
        ("baseline", "the same settings once more (does the difference reproduce?)", contextlib.nullcontext),
        ("tf32_off", "TF32 off (torch.backends.cuda.matmul / cudnn.conv fp32_precision = 'ieee')", _tf32_off),
        ("cudnn_deterministic", "cuDNN deterministic algorithms, benchmark off", _cudnn_deterministic),
    ]
    if uses_sdpa:
        for backend in ("MATH", "EFFICIENT_ATTENTION", "FLASH_ATTENTION", "CUDNN_ATTENTION"):
            settings.append((f"sdpa_{backend.lower()}", f"scaled_dot_product_attention on the {backend} backend", _sdpa(backend)))
    settings.append(("all_strict", "TF32 off + cuDNN deterministic + SDPA math backend", _all_strict))
    return settings


def explain_difference(
    run_with: Callable[[Callable[[], Any]], Any],
    settings: list[tuple[str, str, Callable[[], Any]]],
    judge: Callable[[Any], tuple[bool, float]],
) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """Re-run under each setting; the first single setting that brings the outputs within tolerance
    explains the difference (else the combination). A `baseline` setting (the current settings again)
    that already agrees means the difference does not reproduce: it is returned as the explanation.

    `run_with(context_factory)` returns outputs; `judge(outputs)` returns (within tolerance, error).
    A setting whose kernels cannot run (e.g. flash attention on fp32) is listed as unavailable.
    """
    rows: list[dict[str, Any]] = []
    for name, what, factory in settings:
        try:
            out = run_with(factory)
        except Exception as exc:
            rows.append({"setting": name, "what": what, "available": False, "error": f"{type(exc).__name__}: {str(exc)[:160]}"})
            continue
        ok, err = judge(out)
        rows.append({"setting": name, "what": what, "available": True, "within_tolerance": ok, "max_abs": err})
        if name == "baseline" and ok:
            return rows[-1], rows
    usable = [r for r in rows if r.get("available") and r["setting"] != "baseline"]
    singles = [r for r in usable if r["setting"] != "all_strict" and r["within_tolerance"]]
    if singles:
        return singles[0], rows
    combined = next((r for r in usable if r["setting"] == "all_strict" and r["within_tolerance"]), None)
    if combined:
        return combined, rows
    return None, rows


def _to_cpu(obj: Any) -> Any:
    return inp.to_device(obj, "cpu")


def _uses_sdpa(model: torch.nn.Module, inputs: Any, forward: Callable[[Any], Any]) -> bool:
    from torch_diagnose.probe import OpSpy

    with OpSpy(model, lambda name: "scaled_dot_product" in name or "_efficient_attention" in name or "flash_attention" in name) as spy:
        forward(inputs)
    return bool(spy.events)


@register(
    "device_parity",
    family=FAMILY,
    title="CUDA outputs match CPU within an fp64-calibrated tolerance",
    order=86,
    needs_cuda=True,
    options=(Option("explain", bool, True, "when outputs differ, re-run under stricter settings to find which explains it"),),
)
def device_parity(ctx: Context, opts: CheckOptions) -> CheckResult:
    """CUDA outputs against CPU outputs, within a tolerance calibrated from the fp64 reference.

    The tolerance per output comes from the CPU fp32 error against fp64 (two correct fp32 runs differ
    by about that much). When CUDA differs beyond it, the model is re-run with TF32 off, with cuDNN
    deterministic and benchmark off, and on each SDPA backend, one at a time: the setting that brings
    the outputs back within tolerance is reported, and the first module that diverges is named.
    """
    from torch_diagnose.compare import calibrated_tolerances, compare, ratio_rule
    from torch_diagnose.probe import ModuleRecorder, first_divergence

    cuda_out = _to_cpu(ctx.reference)
    cpu_model = copy.deepcopy(ctx.model).to("cpu")
    cpu_inputs = _to_cpu(ctx.inputs)
    cpu_out = ctx.forward(cpu_inputs, cpu_model)
    fp64 = ctx.fp64
    if fp64.outputs is not None:
        fp64_out = _to_cpu(fp64.outputs)
        tolerances = calibrated_tolerances(cpu_out, fp64_out)
        tol_note = "calibrated from the CPU fp32 error against fp64"
    else:
        fp64_out = None
        tolerances = {}
        tol_note = f"fp32 defaults (no fp64 reference: {fp64.error})"
    comp = compare(cuda_out, cpu_out, leaf_tolerances=tolerances)
    metrics: dict[str, Any] = comp.metrics("cuda_vs_cpu_")
    if fp64_out is not None:
        verdicts = ratio_rule(cuda_out, cpu_out, fp64_out)
        if verdicts:
            metrics["cuda_rmse_vs_fp64_over_cpu"] = max(v.ratio for v in verdicts)
    details: dict[str, Any] = {"tolerance": tol_note, "comparison": comp.describe(),
                               "tolerances": {k: str(v) for k, v in tolerances.items()}}
    if comp.passed:
        return CheckResult(status=PASS, summary=f"CUDA outputs match CPU within tolerance ({tol_note}): {comp.describe()}",
                           metrics=metrics, details=details)

    def judge(out: Any) -> tuple[bool, float]:
        c = compare(_to_cpu(out), cpu_out, leaf_tolerances=tolerances)
        return c.passed, c.max_abs

    explained, rows = None, []
    if opts.explain:
        def run_with(factory: Callable[[], Any]) -> Any:
            with factory():
                return ctx.forward()

        explained, rows = explain_difference(run_with, parity_settings(_uses_sdpa(ctx.model, ctx.inputs, ctx.forward)), judge)
        details["settings"] = rows

    # The first module whose CUDA output leaves the CPU one although its inputs agree.
    worst = comp.worst
    tol = tolerances.get(worst.name) if worst else None
    with ModuleRecorder(cpu_model) as rec_cpu:
        ctx.forward(cpu_inputs, cpu_model)
    with ModuleRecorder(ctx.model, transform=lambda t: t.cpu()) as rec_cuda:
        ctx.forward()
    div = first_divergence(rec_cuda, rec_cpu, rtol=1e-4, atol=(tol.atol if tol else 1e-5))
    culprit = div.label if div else None
    if div:
        details["first_divergent_module"] = div.label
    if explained and explained["setting"] == "baseline":
        return CheckResult(
            status=FAIL,
            summary=f"CUDA differs from CPU beyond tolerance ({comp.describe()}), but a second CUDA run agrees with CPU: "
            "the result changes from run to run",
            culprit=culprit,
            hint="the difference does not reproduce: look for non-deterministic CUDA kernels (atomics in scatter_add/index_add, "
            "cuDNN benchmark picking different algorithms: run the determinism check on CUDA) or state kept between calls"
            + (f", starting in `{div.name}`" if div else ""),
            metrics=metrics, details=details,
        )
    if explained:
        trade = explained["setting"].startswith(("tf32", "sdpa"))
        return CheckResult(
            status=WARN if trade else FAIL,
            summary=f"CUDA differs from CPU beyond tolerance ({comp.describe()}); {explained['what']} brings it back within tolerance",
            culprit=culprit or explained["what"],
            hint=(f"the difference comes from {explained['setting']}: {explained['what']} restores CPU parity. "
                  + ("TF32/SDPA kernels trade precision for speed: keep them if the accuracy is acceptable (see the precision checks), "
                     "otherwise set `torch.backends.cuda.matmul.fp32_precision = 'ieee'` / `torch.backends.cudnn.conv.fp32_precision = 'ieee'`"
                     if trade else "set it in deployment, or accept the difference")),
            metrics=metrics, details=details,
        )
    return CheckResult(
        status=FAIL,
        summary=f"CUDA differs from CPU beyond tolerance ({comp.describe()}) and no setting explains it",
        culprit=culprit,
        hint=("none of TF32 off, cuDNN deterministic or another SDPA backend restores parity: look for device-dependent "
              "code (`if x.is_cuda`), custom CUDA kernels, uninitialised memory or non-deterministic atomics"
              + (f" starting in `{div.name}`" if div else "")),
        metrics=metrics, details=details,
    )


# =============================================================================================
# cuda_timing (CUDA only)


@register(
    "cuda_timing",
    family=FAMILY,
    title="latency measured with and without synchronisation",
    order=88,
    needs_cuda=True,
    options=(Option("iterations", int, 20, "timed forward calls per method"),),
)
def cuda_timing(ctx: Context, opts: CheckOptions) -> CheckResult:
    """Forward latency timed three ways on CUDA: a wall clock without `synchronize()`, with it, and CUDA events.

    Kernel launches return before the GPU finishes, so a timer without synchronisation measures the
    launch overhead, not the latency: this shows how large that error is for this model.
    """
    n = max(1, int(opts.iterations))
    device = ctx.device
    for _ in range(3):
        ctx.forward()
    torch.cuda.synchronize(device)
    # 1: single calls timed without synchronisation (the classic mistake); the queue is drained
    # before each, but the clock is read before the GPU finishes
    singles = []
    for _ in range(n):
        torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        ctx.forward()
        singles.append(time.perf_counter() - t0)
    torch.cuda.synchronize(device)
    single_unsynced = sorted(singles)[len(singles) // 2]
    # 2: a loop without synchronisation (launch-bound until the queue fills)
    t0 = time.perf_counter()
    for _ in range(n):
        ctx.forward()
    loop_unsynced = (time.perf_counter() - t0) / n
    torch.cuda.synchronize(device)
    # 3: each call synchronised (diagnostics.timing: warm-up, adaptive repetitions)
    from torch_diagnose.timing import cuda_sync_for, measure

    stats = measure(lambda: ctx.forward(), sync=cuda_sync_for(device), min_samples=n)
    # 4: CUDA events
    events = []
    for _ in range(n):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        ctx.forward()
        end.record()
        end.synchronize()
        events.append(start.elapsed_time(end) / 1000.0)
    events.sort()
    true_s = stats.p50
    event_s = events[len(events) // 2]
    ratio = true_s / single_unsynced if single_unsynced > 0 else math.inf
    metrics = {
        "latency_synced_ms": true_s * 1e3,
        "latency_synced_p90_ms": stats.p90 * 1e3,
        "timing_noise": stats.noise,
        "latency_cuda_events_ms": event_s * 1e3,
        "latency_unsynced_single_ms": single_unsynced * 1e3,
        "latency_unsynced_loop_ms": loop_unsynced * 1e3,
        "unsynced_underestimate_x": ratio,
    }
    summary = (f"median latency {true_s * 1e3:.3g} ms with synchronize() ({event_s * 1e3:.3g} ms by CUDA events); "
               f"timed without synchronize() one call reads {single_unsynced * 1e3:.3g} ms"
               + (f" ({ratio:.1f}x too low)" if ratio > 1.2 else ""))
    return CheckResult(
        status=PASS, summary=summary, metrics=metrics,
        hint="time GPU work with torch.cuda.synchronize() before reading the clock, or with torch.cuda.Event(enable_timing=True)",
        details={"plot": {"kind": "bar", "title": "latency by timing method", "x": ["no sync (1 call)", "no sync (loop)", "synchronize", "CUDA events"],
                          "series": {"ms": [single_unsynced * 1e3, loop_unsynced * 1e3, true_s * 1e3, event_s * 1e3]},
                          "xlabel": "method", "ylabel": "ms", "logy": False}},
    )
