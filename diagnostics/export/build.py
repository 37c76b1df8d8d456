"""Building the sweep, once per run: which input dimensions eager moves, and the cases to run.

* **Dimension discovery**: every dimension of every input tensor is tried at a few smaller and
  larger sizes (>= 2: size-1 dimensions specialise in torch.export). A dimension eager accepts at
  another size is dynamic. Dimensions that must move together (a sequence length shared by `src`
  and its padding mask) are found by trying the same-sized dimensions of the other inputs along
  with it. The batch dimension and the user's declared dimensions (`Target.dynamic_dims`) are
  *required*: an artifact must keep them dynamic.
* **Cases**: the example itself, cases that change every dynamic group at once, cases at sizes
  that change the model's internal grids (half, double, ± total stride: `grid`), and value sets
  (other seeds, positive and negative values, other scales) at the example shape; one-dimension
  cases are kept aside for attribution. Eager's outputs for every case are computed here.

Probing uses real forwards (FakeTensor shape propagation was tried: it accepted a `src` whose
padding mask had another length, which eager rejects); each accepted probe's outputs become the
reference of that dimension's own case, so probing costs nothing extra.
"""
from __future__ import annotations

import time
from typing import Any, Sequence

import torch

from ..inputs import input_names
from ..locate.code import raise_site
from ..text import one_line
from .cases import VALUE_SETS, DimGroup, Sweep, SweepCase, case_label, fill_values, ident, named_leaves, resize
from .grid import probe_grids, total_strides

Ref = tuple[str, int]


def _smaller(size: int) -> list[int]:
    return [s for s in dict.fromkeys([size - 1, size - 2, size // 2]) if 2 <= s < size]


def _larger(size: int) -> list[int]:
    return [s for s in dict.fromkeys([size + 1, size + 3, 2 * size]) if s > size]


class _Prober:
    """Runs eager at other sizes of a group (within a forward budget); keeps each accepted run as
    that group's own case."""

    def __init__(self, ctx: Any, example: Any, names: list[str], tensors: dict[str, torch.Tensor], budget: int) -> None:
        self.ctx, self.example, self.names, self.tensors = ctx, example, names, tensors
        self.budget = budget
        self.individual: dict[str, list[SweepCase]] = {}
        self.assigned: set[Ref] = set()

    def _eager(self, inputs: Any) -> tuple[Any, BaseException | None]:
        if self.budget <= 0:
            return None, RuntimeError("probe budget spent")
        self.budget -= 1
        try:
            return self.ctx.forward(inputs), None
        except Exception as exc:  # eager rejects this shape
            return None, exc

    def probe(self, group: DimGroup) -> None:
        for side in (_smaller(group.size), _larger(group.size)):
            for size in side:
                inputs = resize(self.example, self.names, {ref: size for ref in group.refs})
                out, exc = self._eager(inputs)
                if exc is None:
                    group.accepted.append(size)
                    self.individual.setdefault(group.name, []).append(
                        SweepCase(f"{case_label(group)}={size}", "shape", inputs, out, {group.name: size}))
                    break
                group.rejected[size] = one_line(exc)
                group.rejected_frame = group.rejected_frame or raise_site(exc)

    def probe_or_link(self, group: DimGroup) -> None:
        """Probe alone; when eager rejects that, try it with same-sized dims of the other inputs."""
        self.probe(group)
        if group.dynamic:
            return
        own = {leaf for leaf, _ in group.refs}
        extra = [(leaf, d) for leaf, t in self.tensors.items() if leaf not in own for d in range(t.dim())
                 if t.shape[d] == group.size and (leaf, d) not in self.assigned and (leaf, d) not in group.refs]
        if not extra:
            return
        saved, rejected, rejected_frame = list(group.refs), dict(group.rejected), group.rejected_frame
        group.refs = saved + extra
        self.probe(group)
        if not group.dynamic:
            group.refs, group.rejected, group.rejected_frame = saved, rejected, rejected_frame


def _batch_group(ctx: Any, tensors: dict[str, torch.Tensor]) -> list[DimGroup]:
    """Every input whose batch dimension has the common batch size."""
    bdim = ctx.batch_dim
    bsizes = [t.shape[bdim] for t in tensors.values() if t.dim() > bdim]
    if not bsizes:
        return []
    bsize = max(set(bsizes), key=bsizes.count)
    refs = [(k, bdim) for k, t in tensors.items() if t.dim() > bdim and t.shape[bdim] == bsize]
    return [DimGroup("batch", refs, bsize, True, "the batch dimension")]


def _declared_groups(ctx: Any, tensors: dict[str, torch.Tensor], groups: list[DimGroup], notes: list[str]) -> list[DimGroup]:
    """Declared dimensions: the same name makes one group; one already grouped (batch) takes the name."""
    declared = ctx.target.dynamic_dims or getattr(ctx.options, "dynamic_dims", None) or {}
    by_name: dict[str, list[Ref]] = {}
    for input_name, dims in declared.items():
        matched = [k for k in tensors if k == input_name or k.startswith(f"{input_name}[") or k.startswith(f"{input_name}.")]
        if not matched:
            notes.append(f"declared dynamic input {input_name!r} is not among the inputs ({', '.join(tensors)})")
        for leaf in matched:
            rank = tensors[leaf].dim()
            for dim, dim_name in dims.items():
                if not -rank <= int(dim) < rank:
                    notes.append(f"declared dynamic dim {dim} of {leaf!r} does not exist (shape {tuple(tensors[leaf].shape)})")
                    continue
                d = int(dim) % rank
                existing = next((g for g in groups if (leaf, d) in g.refs), None)
                if existing is not None:  # e.g. the batch dimension, declared by name
                    existing.name = dim_name if existing.name == "batch" and dim_name else existing.name
                    continue
                by_name.setdefault(dim_name or f"{leaf}_dim{d}", []).append((leaf, d))
    out: list[DimGroup] = []
    for dim_name, refs in by_name.items():
        sizes = {tensors[leaf].shape[d] for leaf, d in refs}
        if len(sizes) > 1:
            notes.append(f"declared dim {dim_name!r} has different example sizes {sorted(sizes)}; sweeping each separately")
            out.extend(DimGroup(f"{dim_name}_{leaf}_{d}", [(leaf, d)], tensors[leaf].shape[d], True, "declared dynamic")
                       for leaf, d in refs)
        else:
            out.append(DimGroup(dim_name, refs, sizes.pop(), True, "declared dynamic"))
    return out


def _discover(ctx: Any, prober: _Prober, notes: list[str]) -> list[DimGroup]:
    """Batch, declared, then every other dimension: dynamic when eager accepts other sizes."""
    groups = _batch_group(ctx, prober.tensors)
    groups += _declared_groups(ctx, prober.tensors, groups, notes)
    for group in groups:
        prober.assigned.update(group.refs)
    for group in groups:
        prober.probe_or_link(group)
    for leaf, t in prober.tensors.items():
        for d in range(t.dim()):
            if (leaf, d) in prober.assigned or t.shape[d] == 0:
                continue
            group = DimGroup(f"{ident(leaf)}_dim{d}", [(leaf, d)], t.shape[d], False, "eager accepts other sizes")
            prober.probe_or_link(group)
            prober.assigned.update(group.refs)
            groups.append(group)
    return groups


def _export_case(ctx: Any, sweep: Sweep) -> list[SweepCase]:
    """Size-1 dynamic dimensions specialise in torch.export: export at size 2 (and run that too)."""
    ones = [g for g in sweep.groups if g.dynamic and g.size == 1]
    if not ones:
        sweep.export_expected = ctx.reference
        return []
    sweep.export_inputs = resize(sweep.example, sweep.names, {ref: 2 for g in ones for ref in g.refs})
    sweep.notes.append("size-1 dynamic dimensions (" + ", ".join(g.label for g in ones)
                       + ") are exported at size 2: exporters specialise size-1 dimensions")
    case = SweepCase("export example", "shape", sweep.export_inputs, None, {g.name: 2 for g in ones})
    if not case.ensure_expected(ctx):
        return []
    sweep.export_expected = case.expected
    return [case]


def _assignments(dyn: list[DimGroup]) -> list[dict[str, int]]:
    """Sizes for the combined cases: every dynamic group changed at once, larger and smaller
    alternating between neighbours and swapped in the second case, so every group goes both ways
    and equal-sized dimensions (H and W) part ways."""
    smaller = {g.name: min(g.accepted) for g in dyn if min(g.accepted) < g.size}
    larger = {g.name: max(g.accepted) for g in dyn if max(g.accepted) > g.size}
    assignments: list[dict[str, int]] = []
    for phase in (0, 1):
        assignment = {}
        for i, g in enumerate(dyn):
            first, second = (larger, smaller) if (i + phase) % 2 == 0 else (smaller, larger)
            size = first.get(g.name) or second.get(g.name)
            if size:
                assignment[g.name] = size
        if assignment and assignment not in assignments:
            assignments.append(assignment)
    return assignments


def _shape_cases(ctx: Any, sweep: Sweep, cases: list[SweepCase]) -> None:
    """Add the combined shape cases; a group no combined case moved both ways, or one eager rejects
    in combination, falls back to its own cases."""
    dyn = sweep.dynamic_groups
    by_group = {g.name: g for g in dyn}
    individual = sweep.group_cases
    for assignment in _assignments(dyn):
        if len(assignment) == 1:  # one group: its own case
            name, size = next(iter(assignment.items()))
            case = next(c for c in individual[name] if c.sizes[name] == size)
            if case not in cases:
                cases.append(case)
            continue
        inputs = resize(sweep.example, sweep.names, {ref: size for name, size in assignment.items() for ref in by_group[name].refs})
        text = ", ".join(f"{case_label(by_group[n])}={v}" for n, v in assignment.items())
        cases.append(SweepCase(f"together: {text}", "shape", inputs, None, dict(assignment)))
    for g in dyn:
        reached = {c.sizes.get(g.name) for c in cases if c.kind == "shape"}
        cases.extend(c for c in individual.get(g.name, []) if c.sizes[g.name] not in reached)
    for case in list(cases):
        if case.expected is None and case.kind == "shape" and not case.ensure_expected(ctx):
            sweep.notes.append(f"eager rejects {case.name}: {case.eager_error}; its dimensions are swept one at a time")
            cases.remove(case)
            for name in case.sizes:
                for alone in individual.get(name, []):
                    if alone not in cases:
                        cases.append(alone)


def _value_cases(ctx: Any, sweep: Sweep, value_sets: Sequence[tuple[str, int, str, float]]) -> list[SweepCase]:
    """Fresh values at the example shape; integer inputs keep their meaning, so they are not varied."""
    if not any(isinstance(t, torch.Tensor) and t.is_floating_point() for t in sweep.leaves.values()):
        sweep.notes.append("no floating-point inputs: values are not varied (integer inputs keep their meaning)")
        return []
    seed = int(getattr(ctx.options, "seed", 0) or 0)
    cases = []
    for label, offset, kind, scale in value_sets:
        case = SweepCase(label, "values", fill_values(sweep.example, kind=kind, scale=scale, seed=seed + offset))
        if case.ensure_expected(ctx):
            cases.append(case)
        else:
            sweep.notes.append(f"eager rejects {label}: {case.eager_error}")
    return cases


def _grid_cases(ctx: Any, sweep: Sweep, tensors: dict[str, torch.Tensor], cases: list[SweepCase], budget_s: float) -> None:
    """Cases at sizes that change the model's internal grids (half, double, ± total stride); one eager
    rejects together falls back to each group's own."""
    if budget_s <= 0:
        return
    for case in probe_grids(ctx, sweep, total_strides(ctx, tensors), budget_s=budget_s):
        if case.ensure_expected(ctx):
            cases.append(case)
            continue
        for name, size in case.sizes.items():
            cases.extend(c for c in sweep.group_cases.get(name, []) if c.sizes.get(name) == size and c not in cases)


def build_sweep(ctx: Any, *, value_sets: Sequence[tuple[str, int, str, float]] = VALUE_SETS,
                max_probe_forwards: int = 80, grid_budget_s: float = 15.0) -> Sweep:
    """Discover the dynamic dimensions of the inputs and build the sweep cases.

    `ctx` is the run's Context: eager runs go through `ctx.forward` (counted), the batch
    dimension is `ctx.batch_dim`, declared dimensions come from `ctx.target.dynamic_dims`.
    Cases run for every artifact: the example; two cases that change every dynamic group at once;
    and the value sets at the example shape. Per-group cases (one dimension changed) are kept for
    attribution: `evaluate` runs them only where a combined case fails.
    """
    start, calls0 = time.perf_counter(), ctx.stats.calls
    example, reference = ctx.inputs, ctx.reference
    names = input_names(example, ctx.model)
    leaves = named_leaves(example, names)
    tensors = {k: v for k, v in leaves.items() if isinstance(v, torch.Tensor) and v.dim() > 0}
    sweep = Sweep(names=names, example=example, leaves=leaves, groups=[], cases=[], export_inputs=example,
                  export_expected=None)
    prober = _Prober(ctx, example, names, tensors, max_probe_forwards)
    sweep.groups = _discover(ctx, prober, sweep.notes)
    sweep.group_cases = prober.individual
    cases = [SweepCase("example", "example", example, reference), *_export_case(ctx, sweep)]
    _shape_cases(ctx, sweep, cases)
    _grid_cases(ctx, sweep, tensors, cases, grid_budget_s)
    sweep.cases = cases + _value_cases(ctx, sweep, value_sets)
    sweep.eager_forwards = ctx.stats.calls - calls0
    sweep.seconds = time.perf_counter() - start
    return sweep
