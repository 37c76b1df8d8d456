"""Sizes that change the model's internal grids (issue 15).

Trying ±1 around the example stops at the first size eager accepts, but many shape bugs show only
when a downsampled grid changes: adaptive pooling frozen into fixed windows, position-embedding
grids, padding computed from sizes. So every dynamic dimension but the batch is also probed at
half and double the example, and at the example ± the model's total stride along it (read from
the smallest grid a convolution or pooling layer outputs on the example), within a time budget.
"""
from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn

from ..text import one_line
from .cases import DimGroup, Sweep, SweepCase, case_label, resize

Ref = tuple[str, int]
_GRID_LAYERS = (nn.modules.conv._ConvNd, nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd)


def total_strides(ctx: Any, tensors: dict[str, torch.Tensor]) -> dict[Ref, int]:
    """(leaf, dim) -> the model's total stride along that spatial dim, from one forward with hooks on
    its conv and pooling layers: example size / the smallest grid they output (1 when none shrink it)."""
    grids: dict[int, list[torch.Size]] = {}

    def hook(_module: nn.Module, _args: Any, out: Any) -> None:
        if isinstance(out, torch.Tensor):
            grids.setdefault(out.dim(), []).append(out.shape)

    layers = [m for m in ctx.model.modules() if isinstance(m, _GRID_LAYERS)]
    if not layers:
        return {}
    handles = [m.register_forward_hook(hook) for m in layers]
    try:
        ctx.forward(ctx.inputs)
    except Exception:
        return {}
    finally:
        for h in handles:
            h.remove()
    strides: dict[Ref, int] = {}
    for leaf, t in tensors.items():
        for d in range(2, t.dim()):
            smallest = min((s[d] for s in grids.get(t.dim(), []) if s[d] >= 1), default=t.shape[d])
            if 1 <= smallest < t.shape[d]:
                strides[(leaf, d)] = max(1, round(t.shape[d] / smallest))
    return strides


def grid_sizes(group: DimGroup, stride: int) -> list[int]:
    """Half, double and ± the total stride around the example: sizes ±1 may never reach."""
    size, tried = group.size, {group.size, *group.accepted, *group.rejected}
    pool = [size // 2, 2 * size] + ([size - stride, size + stride] if stride > 1 else [])
    return [s for s in dict.fromkeys(pool) if s >= 2 and s not in tried]


def probe_grids(ctx: Any, sweep: Sweep, strides: dict[Ref, int], *, budget_s: float) -> list[SweepCase]:
    """Run eager at each non-batch dynamic group's grid sizes (kept as that group's own cases, for
    attribution) and return cases that move all those groups together, one per kind of size."""
    start = time.perf_counter()
    groups = [g for g in sweep.dynamic_groups if g.why != "the batch dimension"]
    for g in groups:
        stride = max((strides.get(ref, 1) for ref in g.refs), default=1)
        for size in grid_sizes(g, stride):
            if time.perf_counter() - start > budget_s:
                sweep.notes.append(f"grid sizes not all probed: over the {budget_s:g} s budget")
                return []
            inputs = resize(sweep.example, sweep.names, {ref: size for ref in g.refs})
            try:
                out = ctx.forward(inputs)
            except Exception as exc:
                g.rejected[size] = one_line(exc)
                continue
            g.grid.append(size)
            sweep.group_cases.setdefault(g.name, []).append(SweepCase(f"{case_label(g)}={size} (grid)", "shape", inputs, out, {g.name: size}))
    return _together(sweep, [g for g in groups if g.grid])


def _together(sweep: Sweep, groups: list[DimGroup]) -> list[SweepCase]:
    """Every group's grid sizes at once, rotated by one per group so equal-sized dims (H and W) part
    ways (half with double ...); a group alone keeps its own cases."""
    if len(groups) == 1:
        return [c for c in sweep.group_cases[groups[0].name] if c.name.endswith("(grid)")]
    cases: list[SweepCase] = []
    for i in range(max((len(g.grid) for g in groups), default=0)):
        sizes = {g.name: g.grid[(i + j) % len(g.grid)] for j, g in enumerate(groups)}
        inputs = resize(sweep.example, sweep.names, {ref: sizes[g.name] for g in groups if g.name in sizes for ref in g.refs})
        text = ", ".join(f"{case_label(g)}={sizes[g.name]}" for g in groups if g.name in sizes)
        cases.append(SweepCase(f"grid: {text}", "shape", inputs, None, sizes))
    return cases
