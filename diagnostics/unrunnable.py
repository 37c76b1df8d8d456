"""A model that cannot run on its own example inputs: one root cause, not one error per check.

The fp32 reference is computed once per run and a failure is cached (`Context.cached`), so every
check that needs it re-raises the same exception object. The first check that hits it ends as
`error` saying so, with the forward signature when the inputs do not fit it; every later check that
hits the same exception is its consequence (skip, `caused_by`), as a failed foundation's dependents are.
"""
from __future__ import annotations

import inspect
from typing import Any

from .locate import Culprit, raise_site
from .results import ERROR, SKIP, CheckResult
from .text import one_line

#: `details` key marking a result that ended because the model raised on its example inputs.
KEY = "reference_error"


def reference_failure(ctx: Any, exc: BaseException) -> BaseException | None:
    """The failure computing the run's fp32 reference, when `exc` is it (the same exception, or the
    same type and message raised by a check's own forward on the example inputs); else None.
    Only called after a check raised, so a clean run never pays for it."""
    if not hasattr(ctx, "cached") or not hasattr(ctx, "_cache"):
        return None
    try:
        ctx.reference  # noqa: B018 - computed once per run, a failure cached
    except Exception as ref:  # noqa: BLE001 - any failure is the model's
        same = ref is exc or (type(ref) is type(exc) and str(ref) == str(exc))
        return ref if same else None
    return None


def _signature(model: Any) -> str:
    """`forward(image1, image2, num_flow_updates=12)`: names and defaults, without annotations."""
    try:
        params = inspect.signature(model.forward).parameters.values()
    except (TypeError, ValueError, AttributeError):
        return "forward(...)"
    stars = {inspect.Parameter.VAR_POSITIONAL: "*", inspect.Parameter.VAR_KEYWORD: "**"}
    parts = [stars.get(p.kind, "") + p.name + ("" if p.default is inspect.Parameter.empty else f"={p.default!r}")
             for p in params]
    return f"forward({', '.join(parts)})"


def cannot_run(ctx: Any, exc: BaseException, traceback_text: str) -> CheckResult:
    """The root result: the model raised on its example inputs (where, and what to give instead)."""
    frame = raise_site(exc)
    where = f" at {frame.location}" if frame is not None else ""
    model = getattr(getattr(ctx, "target", None), "model", None)
    fits = isinstance(exc, TypeError) and ("argument" in str(exc) or "positional" in str(exc))
    hint = (f"the example inputs do not fit `{_signature(model)}`: give a factory that returns (model, inputs) with one "
            f"tensor per argument (a tuple, or a dict of keyword arguments)" if fits else
            "the model must run on its own example inputs before anything can be judged: fix the line above, or give "
            "inputs it accepts (a factory returning (model, inputs), or --input-shape)")
    return CheckResult(status=ERROR, summary=f"the model raises on its example inputs: {one_line(exc, 400)}{where}",
                       culprit=Culprit.at(frame) if frame is not None else None, hint=hint,
                       details={KEY: one_line(exc, 400), "traceback": traceback_text})


def as_consequence(result: CheckResult, earlier: dict[str, CheckResult]) -> CheckResult:
    """A later check that hit the same failure: a consequence of the first one that reported it."""
    if result.status != ERROR or KEY not in result.details:
        return result
    root = next((r for r in earlier.values() if KEY in r.details and not r.caused_by and r.check != result.check), None)
    if root is None:
        return result
    return CheckResult(status=SKIP, caused_by=root.check,
                       summary=f"not judged: the model raises on its example inputs (see {root.check})",
                       hint=f"fix {root.check} first: this check runs the model", details={KEY: result.details[KEY]})
