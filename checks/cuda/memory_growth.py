"""`memory_growth`: memory retained across repeated forward calls, and the attribute holding it."""
from __future__ import annotations

from typing import Any

from torch_diagnose.context import Context
from torch_diagnose.locate import Culprit
from torch_diagnose.memory.growth import GrowthRun, Holder, growth_run
from torch_diagnose.registry import CheckOptions, Option, register
from torch_diagnose.results import CheckResult
from torch_diagnose.text import format_bytes


@register(
    "memory_growth",
    family="cuda",
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
    CUDA `memory_allocated` too). Forward hooks are followed: a leftover Grad-CAM hook appending
    activations to a list is named with the hook's line and the module it is registered on. Growth under `torch.inference_mode` is a leak (fail): tensors kept
    in module attributes, caches, module-level lists. Growth that appears only with autograd on is an
    autograd graph kept alive through a stored tensor (warn: it leaks in a server without
    `torch.inference_mode()`). The module attribute or global holding the tensors is named, with the
    line that stores into it.
    """
    # measure
    calls = max(3, int(opts.calls))
    model = ctx.model_copy()  # the calls may fill the model's own lists and caches: keep the user's model as it was
    first = growth_run(ctx, model, calls, grad=False)
    per_call, steady, bounded = first.summary()
    runs = {"inference_mode": _run_row(first, per_call)}
    grad_run, grad_per_call, grad_steady = None, 0.0, False
    # Autograd graphs are kept alive only through tensors that survive the call, and those show up
    # under inference_mode too: without any, the grad-enabled run is skipped (it costs as many forwards).
    if opts.grad_mode and not steady and first.retained[-1] > 0 and any(p.requires_grad for p in model.parameters()):
        grad_run = growth_run(ctx, ctx.model_copy(), calls, grad=True)
        grad_per_call, grad_steady, _bounded = grad_run.summary()
        runs["grad_enabled"] = _run_row(grad_run, grad_per_call)
    metrics, details = _report(first, runs, calls, per_call, grad_per_call)
    # judge and explain
    retained = first.retained[-1]
    if steady:
        culprit, held = _name_holder(first.holders)
        return CheckResult.failed(
            f"memory grows by {format_bytes(per_call)} per call under inference_mode "
            f"({format_bytes(retained)} retained after {calls} calls)",
            culprit=culprit,
            hint=f"{held}: keep at most a bounded number (collections.deque(maxlen=...)), store `.detach().cpu()` copies "
            "only when needed, or clear it after each request",
            metrics=metrics, details=details,
        )
    if grad_steady and grad_run is not None:
        culprit, held = _name_holder(grad_run.holders, grad_run.retained[-1])
        return CheckResult.warned(
            f"with autograd enabled memory grows by {format_bytes(grad_per_call)} per call "
            f"(none under inference_mode): a stored tensor keeps each call's autograd graph alive",
            culprit=culprit,
            hint=f"{held}: serve under `torch.inference_mode()` (or no_grad), and store `.detach()`ed values "
            "(`.item()` for running totals) so no graph is kept",
            metrics=metrics, details=details,
        )
    if bounded:
        return CheckResult.passed(f"{format_bytes(retained)} stay alive after the calls but stop growing (a bounded cache)",
                                  hint=_name_holder(first.holders)[1] if first.holders else None, metrics=metrics, details=details)
    return CheckResult.passed(f"no memory retained across {calls} calls" + (" (also with autograd enabled)" if grad_run else ""),
                              metrics=metrics, details=details)


def _report(first: GrowthRun, runs: dict[str, Any], calls: int, per_call: float,
            grad_per_call: float) -> tuple[dict[str, Any], dict[str, Any]]:
    metrics: dict[str, Any] = {"calls": calls, "bytes_per_call": int(per_call), "retained_bytes": first.retained[-1],
                               "bytes_per_call_grad_enabled": int(grad_per_call)}
    device = first.device_allocated
    if len(device) > 1:
        metrics["cuda_memory_allocated_bytes_per_call"] = int((device[-1] - device[0]) / (len(device) - 1))
    details: dict[str, Any] = {"runs": runs, "plot": {
        "kind": "line", "title": "bytes retained after each call", "x": list(range(1, calls + 1)),
        "series": {name: run["retained_after_each_call"] for name, run in runs.items()},
        "xlabel": "call", "ylabel": "bytes", "logy": False}}
    return metrics, details


def _run_row(run: GrowthRun, per_call: float) -> dict[str, Any]:
    return {"retained_after_each_call": run.retained, "bytes_per_call": per_call, "holders": [h.as_row() for h in run.holders]}


def _name_holder(holders: list[Holder], total: int = 0) -> tuple[Culprit | None, str]:
    """The largest holder as the culprit, and a sentence on what it holds (`total`: all retained bytes,
    so what only the autograd graph keeps alive can be told apart)."""
    if not holders:
        return None, ("no module attribute or module-level container holds them: look for closures, "
                      "class attributes or caches outside the model")
    h = holders[0]
    through_graph = max(total - sum(x.bytes for x in holders), 0)
    graph = (f" whose autograd graph keeps {format_bytes(through_graph)} more alive (every saved activation of every call)"
             if h.holds_autograd_graph else "")
    made = f" made by {', '.join(h.produced_by[:2])}" if h.produced_by else ""
    hook = (f", filled by the {h.hook} (remove the hook when done with it: keep the handle `register_forward_hook` "
            "returns and call `handle.remove()`)") if h.hook else ""
    return h.culprit, f"`{h.path}` holds {h.tensors} tensor(s), {format_bytes(h.bytes)}{made}{graph}{hook}"
