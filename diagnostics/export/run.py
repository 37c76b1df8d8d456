"""Running an artifact over the sweep and judging it against eager, case by case and per dimension.

An artifact's `run(inputs)` is compared with eager at every case, with the run's calibrated
tolerances scaled to each case's output magnitude and, before calling a difference a mismatch,
re-checked against the case's own fp64 reference (so a value set at 10x scale is not failed for
fp32 rounding). Verdicts per dimension group: dynamic, static (rejects other sizes), partial, or
wrong (accepts them and returns different numbers).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from ..compare import Comparison, Tolerance, calibrated_tolerances, compare
from ..text import one_line
from ..tree import flatten
from .cases import DimGroup, Sweep, SweepCase, fmt


@dataclass
class CaseResult:
    case: SweepCase
    status: str  # "ok" | "mismatch" | "raised"
    max_abs: float | None = None
    message: str = ""
    comparison: Comparison | None = None
    actual: Any = None
    exception: BaseException | None = None

    def row(self) -> dict[str, Any]:
        return {"case": self.case.name, "kind": self.case.kind, "status": self.status,
                "max_abs": self.max_abs, "message": self.message[:300]}


@dataclass
class GroupVerdict:
    group: DimGroup
    verdict: str  # "dynamic" | "static" | "partial" | "wrong" | "eager-static" | "untested"
    text: str
    results: list[CaseResult] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        """Eager itself pins it, or a required (batch, declared) dim is wrong or static. An optional dim
        the user never asked to move only warns (issue 13)."""
        return self.verdict == "eager-static" or (self.group.required and self.verdict in ("wrong", "static", "partial"))

    @property
    def warned(self) -> bool:
        return not self.failed and self.verdict in ("wrong", "static", "partial")


@dataclass
class SweepOutcome:
    results: list[CaseResult]
    groups: list[GroupVerdict]
    seconds: float = 0.0

    @property
    def mismatches(self) -> list[CaseResult]:
        return [r for r in self.results if r.status == "mismatch"]

    @property
    def raised(self) -> list[CaseResult]:
        return [r for r in self.results if r.status == "raised"]

    @property
    def value_failures(self) -> list[CaseResult]:
        return [r for r in self.results if r.case.kind in ("values", "example") and r.status != "ok"]

    def groups_for(self, names: Any) -> list[DimGroup]:
        return [gv.group for gv in self.groups if gv.group.name in names]

    @property
    def failed_groups(self) -> list[GroupVerdict]:
        return [g for g in self.groups if g.failed]

    @property
    def warned_groups(self) -> list[GroupVerdict]:
        return [g for g in self.groups if g.warned]

    @property
    def failed(self) -> bool:
        return bool(self.value_failures or self.failed_groups or any(r.status == "mismatch" for r in self.results))

    @property
    def max_abs(self) -> float:
        vals = [r.max_abs for r in self.results if r.max_abs is not None]
        return max(vals) if vals else 0.0

    def rows(self) -> list[dict[str, Any]]:
        return [r.row() for r in self.results]

    def metrics(self) -> dict[str, Any]:
        return {
            "cases": len(self.results),
            "cases_ok": sum(r.status == "ok" for r in self.results),
            "cases_mismatch": len(self.mismatches),
            "cases_raised": len(self.raised),
            "max_abs": self.max_abs,
            "dynamic_ok": ",".join(g.group.name for g in self.groups if g.verdict == "dynamic") or "none",
            "kept_static": ",".join(g.group.name for g in self.groups if g.verdict in ("static", "partial")) or "none",
        }

    def plot(self, title: str) -> dict[str, Any]:
        """Every case, as it ended: raised ones carry None and their message, exact matches 0 (the
        report draws them as marked points, never as bars at an invented floor)."""
        values = [None if r.status == "raised" or r.max_abs is None or not math.isfinite(r.max_abs) else r.max_abs
                  for r in self.results]
        return {"kind": "barh", "title": title, "x": [r.case.name for r in self.results],
                "series": {"max |artifact - eager|": values},
                "status": [r.status for r in self.results], "messages": [r.message[:200] for r in self.results],
                "xlabel": "sweep case", "ylabel": "max abs difference", "logy": True}


def case_tolerances(ctx: Any, case: SweepCase) -> dict[str, Tolerance]:
    """The run's calibrated tolerances, with atol scaled by this case's output magnitude."""
    base = ctx.tolerances()
    ref = flatten(ctx.reference)
    out = flatten(case.expected)
    scaled: dict[str, Tolerance] = {}
    for name, tol in base.items():
        a, e = out.get(name), ref.get(name)
        factor = 1.0
        if isinstance(a, torch.Tensor) and isinstance(e, torch.Tensor) and a.is_floating_point() and a.numel() and e.numel():
            ra = float(a.detach().double().pow(2).mean().sqrt())
            re = float(e.detach().double().pow(2).mean().sqrt())
            if re > 0 and math.isfinite(ra):
                factor = max(1.0, ra / re)
        scaled[name] = Tolerance(tol.rtol, tol.atol * factor)
    return scaled


def judge(ctx: Any, case: SweepCase, actual: Any) -> Comparison:
    """Compare an artifact's outputs with eager's for one case.

    With a user-set --atol/--rtol, those decide. Otherwise, cheapest first: the dtype's default
    tolerance (assert_close's); then the run's calibrated tolerances (fp32-vs-fp64 error on the
    example, computed once per run) with atol scaled to this case's output magnitude; only a
    difference beyond both pays for this case's own fp64 reference, so a value set at 10x scale
    is never failed for fp32 rounding noise. Calibrated tolerances are never tighter than the
    default, so each step can only turn a failure into a pass, not the reverse.
    """
    if getattr(ctx.options, "atol", None) is not None or getattr(ctx.options, "rtol", None) is not None:
        return compare(actual, case.expected, leaf_tolerances=ctx.tolerances())
    cmp = compare(actual, case.expected)
    if cmp.passed or any(leaf.kind != "tensor" for leaf in cmp.leaves if not leaf.passed):
        return cmp  # equal, or shapes, types or values differ: no tolerance helps
    scaled = compare(actual, case.expected, leaf_tolerances=case_tolerances(ctx, case))
    if scaled.passed or case.kind == "example":
        return scaled
    if not case.fp64_done:
        case.fp64_done = True
        try:
            case.fp64 = ctx.fp64_outputs(case.inputs)
        except Exception:
            case.fp64 = None
    if case.fp64 is None:
        return scaled
    own = calibrated_tolerances(case.expected, case.fp64)
    return compare(actual, case.expected, leaf_tolerances=own)


def _run_case(ctx: Any, case: SweepCase, run: Callable[[Any], Any]) -> CaseResult:
    try:
        with torch.inference_mode():
            actual = run(case.inputs)
    except Exception as exc:
        return CaseResult(case, "raised", None, one_line(exc), exception=exc)
    try:
        cmp = judge(ctx, case, actual)
    except Exception as exc:  # outputs that cannot be compared at all
        return CaseResult(case, "mismatch", math.inf, f"outputs cannot be compared: {one_line(exc)}", actual=actual)
    if cmp.passed:
        return CaseResult(case, "ok", cmp.max_abs, "", cmp, actual)
    return CaseResult(case, "mismatch", max_abs_of(cmp), cmp.describe(), cmp, actual)


def evaluate(ctx: Any, sweep: Sweep, run: Callable[[Any], Any], *, artifact: str = "artifact",
             cases: Sequence[SweepCase] | None = None) -> SweepOutcome:
    """Run `run(inputs)` at every sweep case and judge it against eager, case and dimension group.

    Where a case that changed several dimensions fails, each of its dimensions is then run alone
    (eager's outputs computed on demand) so the verdict names the dimension that breaks.
    """
    start = time.perf_counter()
    results: list[CaseResult] = []
    todo = list(cases if cases is not None else sweep.cases)
    progress = getattr(ctx, "progress", None) or (lambda text: None)
    for i, case in enumerate(todo, 1):
        progress(f"{artifact}: sweep case {i}/{len(todo)}: {case.name}")
        if case.ensure_expected(ctx):
            results.append(_run_case(ctx, case, run))
    done = {id(r.case) for r in results}
    suspects = {name for r in results if r.status != "ok" and r.case.kind == "shape" and len(r.case.sizes) > 1 for name in r.case.sizes}
    for name in [g.name for g in sweep.groups if g.name in suspects]:
        for case in sweep.group_cases.get(name, []):
            if id(case) in done:
                continue
            progress(f"{artifact}: dimension {name} alone: {case.name}")
            if case.ensure_expected(ctx):
                results.append(_run_case(ctx, case, run))
                done.add(id(case))
    groups = [_group_verdict(g, results, artifact) for g in sweep.groups if g.dynamic or g.required]
    return SweepOutcome(results, groups, time.perf_counter() - start)


def max_abs_of(cmp: Comparison) -> float:
    if any(leaf.kind != "tensor" and not leaf.passed for leaf in cmp.leaves):
        return math.inf
    return cmp.max_abs


_VERB = {"trace": "traced", "program": "exported", "ONNX model": "exported", "compiled model": "compiled first"}


def _group_verdict(group: DimGroup, results: list[CaseResult], artifact: str) -> GroupVerdict:
    if not group.dynamic:
        where = f" at {group.rejected_at}" if group.rejected_at else ""
        errors = "; ".join(f"at {s}: {e}" for s, e in list(group.rejected.items())[:2])
        return GroupVerdict(group, "eager-static",
                            f"{group.label} is {group.role} but eager itself rejects other sizes{where} ({errors})")
    alone = [r for r in results if r.case.kind == "shape" and group.name in r.case.sizes and len(r.case.sizes) == 1]
    together = [r for r in results if r.case.kind == "shape" and group.name in r.case.sizes and len(r.case.sizes) > 1]
    mine = alone or together
    if not mine:
        return GroupVerdict(group, "untested", f"{group.label}: no case changed it")
    verb = _VERB.get(artifact, "exported")
    parts = [f"{group.label}: {verb} at {group.size}"]
    for r in mine:
        size = r.case.sizes[group.name]
        if r.status == "mismatch":
            parts.append(f"at {size} outputs differ by {fmt(r.max_abs)}")
        elif r.status == "raised":
            parts.append(f"at {size} the {artifact} raises ({r.message[:160]})")
        else:
            parts.append(f"at {size} it matches")
    if not alone:
        parts[-1] += " (other dimensions changed too)"
    statuses = {r.status for r in mine}
    if not alone and statuses != {"ok"}:
        return GroupVerdict(group, "untested", "; ".join(parts), mine)  # a combined failure not pinned on this group
    if "mismatch" in statuses:
        verdict = "wrong"
    elif statuses == {"raised"}:
        verdict = "static"
    elif "raised" in statuses:
        verdict = "partial"
    else:
        verdict = "dynamic"
    return GroupVerdict(group, verdict, "; ".join(parts), mine)
