"""Judging a sweep outcome: failures and warnings in plain words, and the culprit they name.

Shared by every export check: an artifact that differs from eager at the example, at fresh values
or at a dimension it accepts fails; a dimension it keeps static warns, unless it must stay dynamic.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..locate.code import Frame
from ..locate.culprit import INPUT, Culprit
from ..results import FAIL, PASS, WARN
from .cases import DimGroup, fmt
from .guards import Site, site_text
from .run import CaseResult, GroupVerdict, SweepOutcome


@dataclass
class Findings:
    failures: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    culprit: Culprit | None = None
    hints: list[str] = field(default_factory=list)

    def status(self) -> str:
        return FAIL if self.failures else WARN if self.warnings else PASS

    def blame(self, culprit: Culprit | None) -> None:
        """The first culprit named wins."""
        if self.culprit is None and culprit is not None:
            self.culprit = culprit

    def blame_group(self, group: DimGroup, site: Site | None, *, fallback_rejected: bool = False) -> None:
        """Blame an input dimension, at the line that pinned it (or where eager rejected it)."""
        frame = site.frame if site else (group.rejected_frame if fallback_rejected else None)
        self.blame(dimension_culprit(group, frame))


def sizes_word(outcome: SweepOutcome, name: str) -> str:
    """`H/W` style words for a group: the dims the same verdict covers (x dim 2 and 3 -> dims 2, 3)."""
    wrong = [gv.group for gv in outcome.groups if gv.verdict == "wrong" and not gv.group.required]
    refs = [ref for g in wrong for ref in g.refs] or [ref for gv in outcome.groups if gv.group.name == name for ref in gv.group.refs]
    by_leaf: dict[str, list[int]] = {}
    for leaf, d in refs:
        by_leaf.setdefault(leaf, []).append(d)
    return "; ".join(f"`{leaf}` dim{'s' if len(ds) > 1 else ''} {', '.join(map(str, sorted(set(ds))))}" for leaf, ds in by_leaf.items())


def optional_fix(group: DimGroup, dims: str = "") -> str:
    """What to do when an optional dimension (not declared dynamic) breaks: the user never asked for it."""
    leaf, d = group.refs[0]
    return (f"an optional dimension (not the batch, not declared dynamic): export with {dims or f'`{leaf}` dim {d}'} static "
            f"(the size you serve), or replace what freezes it (adaptive pooling to several bins, a position-embedding "
            f"grid, padding computed from sizes) with ops whose sizes follow the input; declare the dim in dynamic_dims "
            f"(--dynamic-dims {leaf}:{d}=NAME) to make this a failure")


def dimension_culprit(group: DimGroup, frame: Frame | None = None) -> Culprit:
    """`input `x` dim 1 (seq)`, located at `frame` when known."""
    return Culprit.named(group.label, INPUT, frame)


def _what(r: CaseResult, artifact: str, limit: int = 160) -> str:
    if r.status == "mismatch":
        return f"outputs differ by {fmt(r.max_abs)}"
    return f"the {artifact} raises ({r.message[:limit]})"


def _judge_cases(f: Findings, outcome: SweepOutcome, artifact: str) -> None:
    for r in outcome.results:
        if r.case.kind == "example" and r.status != "ok":
            what = f"outputs differ by {fmt(r.max_abs)}" if r.status == "mismatch" else f"it raises ({r.message[:200]})"
            f.failures.append(f"on the example input itself {what}")
    for r in outcome.results:
        if r.case.kind == "values" and r.status != "ok":
            f.failures.append(f"on {r.case.name} at the example shape {_what(r, artifact)}")


_BOUND = re.compile(r"\.(?:size\(\)|shape)\[\d+\] (<=|>=) (\d+)|to be (<=|>=) (\d+)")


def edge_hint(gv: GroupVerdict) -> str | None:
    """The exported range of a dim ends at the example's own size (a grid that reaches 1 at the example
    specialises there: r3d_18 at 8 frames gets [2, 8]): export at a larger (or smaller) example."""
    g = gv.group
    for r in gv.results:
        m = _BOUND.search(r.message) if r.status == "raised" else None
        if not m:
            continue
        op, bound = (m.group(1), int(m.group(2))) if m.group(1) else (m.group(3), int(m.group(4)))
        if bound == g.size:
            upper = op == "<="
            return (f"{g.label}: the exported range {'ends' if upper else 'starts'} at the example's own size {g.size} "
                    f"(an internal grid reaches 1 there and specialises), so it rejects {'larger' if upper else 'smaller'} "
                    f"sizes: export at a {'larger' if upper else 'smaller'} example (e.g. {2 * g.size if upper else max(2, g.size // 2)}) "
                    f"covering the sizes you serve")
    return None


def _judge_groups(f: Findings, outcome: SweepOutcome, sites: dict[str, Site]) -> None:
    for gv in outcome.groups:
        g, site = gv.group, sites.get(gv.group.name)
        edge = edge_hint(gv) if gv.verdict in ("static", "partial") else None
        if edge:
            f.hints.append(edge)
        if gv.verdict == "eager-static":
            f.failures.append(gv.text + " — it must stay dynamic")
            f.blame_group(g, None, fallback_rejected=True)
            where = f"{g.rejected_at}" if g.rejected_at else "the model"
            f.hints.append(f"eager itself cannot run other sizes of {g.label}: {where} bakes the size in "
                           f"(a literal in reshape/view, a fixed-size buffer); use x.reshape(x.shape[0], -1) or x.flatten(1)")
        elif gv.verdict == "wrong" and g.required:
            f.failures.append(gv.text + site_text(site))
            f.blame_group(g, site)
        elif gv.verdict == "wrong":  # optional: the user never asked for it to move (issue 13)
            f.warnings.append(gv.text + site_text(site) + " — " + optional_fix(g, sizes_word(outcome, g.name)))
        elif gv.verdict in ("static", "partial"):
            text = gv.text + site_text(site)
            if g.required:
                f.failures.append(text + f" — {g.role}, it must stay dynamic")
                f.blame_group(g, site)
            else:
                f.warnings.append(text + (" — kept static" if gv.verdict == "static" else " — rejects some sizes eager accepts"))


def _judge_combined(f: Findings, outcome: SweepOutcome, artifact: str) -> None:
    """Failures of several dims together that no single dim explains."""
    verdicts = {gv.group.name: gv.verdict for gv in outcome.groups}
    for r in outcome.results:
        if r.case.kind != "shape" or len(r.case.sizes) < 2 or r.status == "ok":
            continue
        if any(verdicts.get(name) in ("wrong", "static", "partial", "eager-static") for name in r.case.sizes):
            continue
        text = f"at {r.case.name} (each dimension alone is fine): {_what(r, artifact)}"
        required = any(g.required for g in outcome.groups_for(r.case.sizes))
        (f.failures if required else f.warnings).append(text)


def judge_outcome(outcome: SweepOutcome, artifact: str, sites: dict[str, Site] | None = None) -> Findings:
    """Turn a sweep outcome into failures and warnings, in the words of the issue."""
    f = Findings()
    sites = sites or {}
    _judge_cases(f, outcome, artifact)
    _judge_groups(f, outcome, sites)
    _judge_combined(f, outcome, artifact)
    if f.culprit is None and outcome.warned_groups:
        gv = outcome.warned_groups[0]
        f.blame_group(gv.group, sites.get(gv.group.name))
    return f
