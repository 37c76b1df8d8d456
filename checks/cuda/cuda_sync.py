"""`cuda_sync`: every operation in forward that makes the host wait for the GPU, each once, first one as culprit."""
from __future__ import annotations

from typing import Any

from torch_diagnose.context import Context
from torch_diagnose.locate.code import LIBRARY, library_name, owner
from torch_diagnose.registry import CheckOptions, Option, register
from torch_diagnose.results import CheckResult
from torch_diagnose.sync import HINTS, SyncPoint, SyncSpy, matches_allow, op_text


@register(
    "cuda_sync",
    family="cuda",
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
    # measure
    with SyncSpy(ctx.model) as spy:
        ctx.forward(ctx.fresh_inputs())
    points = spy.points()
    allow = [str(a) for a in opts.allow]
    for point in points:
        point.allowed_by = matches_allow(point, allow)
    # judge
    active = [p for p in points if not p.allowed_by]
    allowed = [p for p in points if p.allowed_by]
    on_cuda = ctx.device is not None and ctx.device.type == "cuda"
    metrics: dict[str, Any] = {
        "sync_points": len(active),
        "sync_calls": sum(p.count for p in active),
        "allowed_sync_points": len(allowed),
        "spied_on": "cuda" if on_cuda else "cpu",
    }
    if on_cuda:
        metrics["cuda_sync_debug_warnings"] = len(spy.cuda_warnings)
    details: dict[str, Any] = {"sync_points": [p.as_row() for p in points]}
    if spy.cuda_warnings:
        details["cuda_sync_debug_warnings"] = spy.cuda_warnings[:50]
    where = "" if on_cuda else " (spied on CPU: these are the calls that block the host on a GPU)"
    # explain
    if not active:
        return CheckResult.passed(_clean_summary(allowed, where), metrics=metrics, details=details)
    details["plot"] = {
        "kind": "barh", "title": "host-device sync points (calls per forward)",
        "x": [f"{p.op.split('.', 1)[-1]} @ {p.module_label}" for p in active[:20]],
        "series": {"calls": [p.count for p in active[:20]]}, "xlabel": "", "ylabel": "calls", "logy": False,
    }
    listed = "; ".join(
        f"{op_text(p.op)} in {p.module_label} at {p.event.location or '?'}" + (f" x{p.count}" if p.count > 1 else "")
        for p in active[:4]
    ) + (f"; ... {len(active) - 4} more" if len(active) > 4 else "")
    result = CheckResult.failed if opts.fail else CheckResult.warned
    return result(f"{len(active)} host-device sync point(s) in forward{where}: {listed}", culprit=active[0].culprit,
                  hint=_hint(active), metrics=metrics, details=details)


def _clean_summary(allowed: list[SyncPoint], where: str) -> str:
    if not allowed:
        return f"no host-device sync in forward{where}"
    shown = ", ".join(f"{op_text(p.op)} in {p.module_label}" for p in allowed[:3]) + (", ..." if len(allowed) > 3 else "")
    return f"no host-device sync in forward beyond the {len(allowed)} allowed ({shown}){where}"


def _hint(active: list[SyncPoint]) -> str:
    """What the first sync point does and how to avoid it, then how to accept it."""
    first = active[0]
    code = f" (`{first.event.code}`)" if first.event.code else ""
    where = f"`{first.event.module or '<root>'}.{first.event.function or 'forward'}`"
    if "nested_tensor" in first.op:
        hint = (f"{where}{code}: nn.TransformerEncoder's fast path turns the padding mask into a nested tensor, which reads "
                "the mask on the host: build it with `enable_nested_tensor=False` if the sync costs more than the padding")
    elif first.event.file and owner(first.event.file) == LIBRARY:
        lib = library_name(first.event.file)
        hint = (f"{where} uses {op_text(first.op)}{code} in {lib} library code ({first.location}), not in your code: do not "
                f"edit {lib}; the call comes with how the model is used (an input or option of {lib}, e.g. for transformers "
                "attention masks: no attention_mask when nothing is padded, or another attn_implementation)")
    else:
        hint = f"{where} uses {op_text(first.op)}{code}: it {HINTS[first.kind]}"
    token = first.op.split(".", 1)[-1] if not first.op.startswith("cuda sync") else (first.event.module or first.event.module_type)
    more = f"{len(active) - 1} more sync point(s) are listed in details. " if len(active) > 1 else ""
    return hint + (f". {more}If the model needs it, accept it with `-o cuda_sync.allow={token}` (an op, a module path or type, "
                   "or file:line)")
