"""The shape sweep and value sweep shared by the export checks.

An exported artifact (a TorchScript trace, a torch.export program, an ONNX file, a compiled
function) usually matches eager on the example input. The faults that matter in deployment show
up elsewhere: at another batch size, another sequence length, on inputs of the other sign. This
module finds out, once per run, where eager itself can go, and keeps eager's outputs there:

* **Dimension discovery** (`build_sweep`): every dimension of every input tensor is tried at a
  few smaller and larger sizes (>= 2: size-1 dimensions specialise in torch.export). A dimension
  eager accepts at another size is dynamic. Dimensions that must move together (a sequence
  length shared by `src` and its padding mask) are found by trying the same-sized dimensions of
  the other inputs along with it. The batch dimension and the user's declared dimensions
  (`Target.dynamic_dims`) are *required*: an artifact must keep them dynamic.
* **Cases**: the example itself, one case per accepted size per dimension group, one with every
  dynamic group changed at once, and value sets (other seeds, positive and negative values,
  other scales) at the example shape. Eager's outputs for every case are computed once here.
* **Evaluation** (`evaluate`): an artifact's `run(inputs)` at every case against eager, with
  the run's calibrated tolerances scaled to each case's output magnitude and, before calling a
  difference a mismatch, re-checked against the case's own fp64 reference (so a value set at 10x
  scale is not failed for fp32 rounding). Verdicts per dimension group: dynamic, static (rejects
  other sizes), or wrong (accepts them and returns different numbers).
"""
from __future__ import annotations

import math
import os
import re
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from .compare import Comparison, Tolerance, calibrated_tolerances, compare
from .inputs import input_names
from .probe import is_library_file
from .tree import flatten, iter_leaves, map_leaves

#: (name, seed offset, kind, scale) of the value sets tried at the example shape: with the
#: example's own (mixed-sign) values that makes three seeds, both signs, three scales.
VALUE_SETS: tuple[tuple[str, int, str, float], ...] = (
    ("positive values x10 (seed +1)", 1, "positive", 10.0),
    ("negative values x0.1 (seed +2)", 2, "negative", 0.1),
)



# ---------------------------------------------------------------------------------------------
# Named input leaves


def named_leaves(inputs: Any, names: Sequence[str]) -> dict[str, Any]:
    """Leaves of the inputs named by access path: `x`, `src`, `state[0]`, `batch.ids`."""
    out: dict[str, Any] = {}
    for name, value in _top_level(inputs, names):
        out.update(dict(iter_leaves(value, prefix=name)))
    return out


def map_named(inputs: Any, names: Sequence[str], fn: Callable[[str, Any], Any]) -> Any:
    """Rebuild the inputs with `fn(leaf_name, leaf)` applied to every leaf."""

    def one(name: str, value: Any) -> Any:
        leaf_names = iter(name for name, _ in iter_leaves(value, prefix=name))
        return map_leaves(value, lambda leaf: fn(next(leaf_names), leaf))

    if isinstance(inputs, dict):
        return {key: one(key, value) for key, value in inputs.items()}
    if isinstance(inputs, tuple):
        return tuple(one(name, value) for name, value in zip(names, inputs))
    return one(names[0], inputs)


def _top_level(inputs: Any, names: Sequence[str]) -> list[tuple[str, Any]]:
    if isinstance(inputs, dict):
        return [(str(k), v) for k, v in inputs.items()]
    if isinstance(inputs, tuple):
        return list(zip(names, inputs))
    return [(names[0], inputs)]


def resize_dim(t: torch.Tensor, dim: int, size: int) -> torch.Tensor:
    """`t` with dimension `dim` cut or tiled to `size` (tiling keeps token ids and masks valid)."""
    current = t.shape[dim]
    if size <= current:
        return t.narrow(dim, 0, size).clone()
    reps = -(-size // current)
    return torch.cat([t] * reps, dim=dim).narrow(dim, 0, size).clone()


def resize(inputs: Any, names: Sequence[str], sizes: dict[tuple[str, int], int]) -> Any:
    """The inputs with the given (leaf, dim) -> size changes applied."""
    if not sizes:
        return inputs

    def fn(name: str, leaf: Any) -> Any:
        if not isinstance(leaf, torch.Tensor):
            return leaf
        for (leaf_name, dim), size in sizes.items():
            if leaf_name == name and leaf.shape[dim] != size:
                leaf = resize_dim(leaf, dim, size)
        return leaf

    return map_named(inputs, names, fn)


def fill_values(inputs: Any, *, kind: str, scale: float, seed: int) -> Any:
    """New values for floating leaves (`randn`, `positive` = |randn|, `negative` = -|randn|), times `scale`.

    Integer and boolean leaves (token ids, masks) keep their values: they carry meaning.
    """
    gen = torch.Generator().manual_seed(seed)

    def make(t: Any) -> Any:
        if not (isinstance(t, torch.Tensor) and t.is_floating_point()):
            return t
        v = torch.randn(t.shape, generator=gen, dtype=torch.float32)
        if kind == "positive":
            v = v.abs()
        elif kind == "negative":
            v = -v.abs()
        return (v * scale).to(dtype=t.dtype, device=t.device)

    return map_leaves(inputs, make)


# ---------------------------------------------------------------------------------------------
# What the sweep knows


@dataclass
class DimGroup:
    """Input dimensions that change size together (one symbolic size in an export)."""

    name: str  # "batch", a declared name such as "seq", or "x_dim2"
    refs: list[tuple[str, int]]  # (input leaf, dimension)
    size: int  # the example's size
    required: bool  # the batch dimension or a declared one: must stay dynamic
    why: str  # "the batch dimension" | "declared dynamic" | "eager accepts other sizes"
    accepted: list[int] = field(default_factory=list)  # other sizes eager ran at
    rejected: dict[int, str] = field(default_factory=dict)  # size -> eager's error
    rejected_at: str | None = None  # file:line where eager raised, when it did

    @property
    def dynamic(self) -> bool:
        """Eager runs at other sizes of this group."""
        return bool(self.accepted)

    @property
    def role(self) -> str:
        """Why it must stay dynamic, as a noun phrase."""
        return {"declared dynamic": "a dimension declared dynamic"}.get(self.why, self.why)

    @property
    def label(self) -> str:
        """input `x` dim 1 (seq); several refs are joined with `+`."""
        parts = " + ".join(f"`{leaf}` dim {dim}" for leaf, dim in self.refs)
        auto = self.name == f"{self.refs[0][0]}_dim{self.refs[0][1]}"
        return f"input {parts}" + ("" if auto else f" ({self.name})")

    def describe(self) -> dict[str, Any]:
        return {
            "group": self.name, "dims": self.label, "example_size": self.size, "required": self.required,
            "why": self.why, "eager_accepts": self.accepted, "eager_rejects": sorted(self.rejected),
        }


@dataclass
class SweepCase:
    """One input the artifacts are run on, with eager's outputs for it (computed on first need)."""

    name: str
    kind: str  # "example" | "shape" | "values"
    inputs: Any
    expected: Any = None
    sizes: dict[str, int] = field(default_factory=dict)  # group name -> size, for changed groups
    fp64: Any = None  # fp64 outputs, computed on demand
    fp64_done: bool = False
    eager_error: str | None = None  # eager itself raised on this input

    def ensure_expected(self, ctx: Any) -> bool:
        """Compute eager's outputs if not yet known; False when eager itself raises here."""
        if self.expected is None and self.eager_error is None:
            try:
                self.expected = ctx.forward(self.inputs)
            except Exception as exc:
                self.eager_error = first_line(exc)
        return self.eager_error is None


@dataclass
class Sweep:
    names: list[str]
    example: Any
    leaves: dict[str, Any]
    groups: list[DimGroup]
    cases: list[SweepCase]  # run for every artifact: example, combined shapes, value sets
    export_inputs: Any  # the example with every dynamic size-1 dimension grown to 2
    export_expected: Any
    group_cases: dict[str, list[SweepCase]] = field(default_factory=dict)  # one dim changed: for attribution
    notes: list[str] = field(default_factory=list)
    eager_forwards: int = 0
    seconds: float = 0.0

    @property
    def dynamic_groups(self) -> list[DimGroup]:
        return [g for g in self.groups if g.dynamic]

    def group(self, name: str) -> DimGroup:
        for g in self.groups:
            if g.name == name:
                return g
        raise KeyError(name)

    def group_of(self, leaf: str, dim: int) -> DimGroup | None:
        for g in self.groups:
            if (leaf, dim) in g.refs:
                return g
        return None

    def summary(self) -> str:
        dyn = [g.label for g in self.dynamic_groups]
        return (f"{len(self.cases)} cases ({sum(c.kind == 'shape' for c in self.cases)} shapes, "
                f"{sum(c.kind == 'values' for c in self.cases)} value sets); dynamic: {', '.join(dyn) or 'none'}")


# ---------------------------------------------------------------------------------------------
# Building the sweep


def _smaller(size: int) -> list[int]:
    return [s for s in dict.fromkeys([size - 1, size - 2, size // 2]) if 2 <= s < size]


def _larger(size: int) -> list[int]:
    return [s for s in dict.fromkeys([size + 1, size + 3, 2 * size]) if s > size]


def user_location(exc: BaseException) -> str | None:
    """file:line of the innermost frame of `exc`'s traceback that is the user's code."""
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        if not _is_library(frame.filename):
            return f"{_short(frame.filename)}:{frame.lineno}"
    return None


def _is_library(filename: str) -> bool:
    return is_library_file(filename)


def _short(path: str) -> str:
    try:
        rel = os.path.relpath(path)
    except ValueError:
        return path
    return rel if not rel.startswith("..") else path


def first_line(exc: BaseException, limit: int = 300) -> str:
    """`Type: message` cut to the line that says what went wrong.

    TorchScript interpreter errors put the cause on their last line; ONNX Runtime errors carry
    source paths of the runtime itself; a line ending in ':' or 'indices' needs the next one.
    """
    text = str(exc).strip()
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)
    text = re.sub(r"/onnxruntime_src/\S+\s+(void|bool|int|Status)?\s*(onnxruntime::\S+\([^)]*\)(\s*const)?)?\s*", "", text)
    text = re.sub(r"\[ONNXRuntimeError\] : \d+ : [A-Z_]+ : ", "", text)
    lines = [t.strip() for t in text.splitlines() if t.strip()]
    if not lines:
        return type(exc).__name__
    line = lines[0]
    if "failed in the TorchScript interpreter" in line:
        causes = [t for t in lines if re.match(r"^\w*(Error|Exception):", t)]
        line = causes[-1] if causes else lines[-1]
    elif (line.endswith(":") or line.endswith("indices")) and len(lines) > 1:
        line = f"{line} {lines[1]}"
    line = re.sub(r"Status Message: .*? was false\. ", "Status Message: ", line)
    if re.match(rf"^{re.escape(type(exc).__name__)}\b", line):
        return line[:limit]
    return f"{type(exc).__name__}: {line[:limit]}"


def build_sweep(
    ctx: Any,
    *,
    value_sets: Sequence[tuple[str, int, str, float]] = VALUE_SETS,
    max_probe_forwards: int = 80,
) -> Sweep:
    """Discover the dynamic dimensions of the inputs and build the sweep cases.

    `ctx` is the run's Context: eager runs go through `ctx.forward` (counted), the batch
    dimension is `ctx.batch_dim`, declared dimensions come from `ctx.target.dynamic_dims`.
    Probing uses real forwards (FakeTensor shape propagation was tried: it accepted a `src`
    whose padding mask had another length, which eager rejects); each accepted probe's outputs
    become the reference of that dimension's own case, so probing costs nothing extra.

    Cases run for every artifact: the example; two cases that change every dynamic group at once
    (larger and smaller alternating between neighbours, swapped in the second, so each group goes
    both ways and equal-sized dims such as H and W part ways); and the value sets at the example
    shape. Per-group cases (one dimension changed) are kept for attribution: `evaluate` runs them
    only where a combined case fails.
    """
    start = time.perf_counter()
    calls0 = ctx.stats.calls
    example = ctx.inputs
    reference = ctx.reference
    names = input_names(example, ctx.model)
    leaves = named_leaves(example, names)
    tensors = {k: v for k, v in leaves.items() if isinstance(v, torch.Tensor) and v.dim() > 0}
    notes: list[str] = []
    sweep = Sweep(names=names, example=example, leaves=leaves, groups=[], cases=[], export_inputs=example,
                  export_expected=None, notes=notes)
    budget = [max_probe_forwards]

    def run_eager(inputs: Any) -> tuple[Any, BaseException | None]:
        if budget[0] <= 0:
            return None, RuntimeError("probe budget spent")
        budget[0] -= 1
        try:
            return ctx.forward(inputs), None
        except Exception as exc:  # eager rejects this shape
            return None, exc

    individual: dict[str, list[SweepCase]] = {}

    def probe_group(group: DimGroup) -> None:
        for side in (_smaller(group.size), _larger(group.size)):
            for size in side:
                sizes = {ref: size for ref in group.refs}
                inputs = resize(example, names, sizes)
                out, exc = run_eager(inputs)
                if exc is None:
                    group.accepted.append(size)
                    individual.setdefault(group.name, []).append(
                        SweepCase(f"{_case_label(group)}={size}", "shape", inputs, out, {group.name: size}))
                    break
                group.rejected[size] = first_line(exc)
                group.rejected_at = group.rejected_at or user_location(exc)

    assigned: set[tuple[str, int]] = set()
    groups: list[DimGroup] = []

    # 1. the batch dimension: every input whose batch dimension has the common batch size
    bdim = ctx.batch_dim
    bsizes = [t.shape[bdim] for t in tensors.values() if t.dim() > bdim]
    if bsizes:
        bsize = max(set(bsizes), key=bsizes.count)
        refs = [(k, bdim) for k, t in tensors.items() if t.dim() > bdim and t.shape[bdim] == bsize]
        groups.append(DimGroup("batch", refs, bsize, True, "the batch dimension"))
        assigned.update(refs)

    # 2. declared dimensions: same name -> one group
    declared = ctx.target.dynamic_dims or getattr(ctx.options, "dynamic_dims", None) or {}
    by_name: dict[str, list[tuple[str, int]]] = {}
    for input_name, dims in declared.items():
        matched = [k for k in tensors if k == input_name or k.startswith(f"{input_name}[") or k.startswith(f"{input_name}.")]
        if not matched:
            notes.append(f"declared dynamic input {input_name!r} is not among the inputs ({', '.join(tensors)})")
        for leaf in matched:
            for dim, dim_name in dims.items():
                d = int(dim) % tensors[leaf].dim() if -tensors[leaf].dim() <= int(dim) < tensors[leaf].dim() else None
                if d is None:
                    notes.append(f"declared dynamic dim {dim} of {leaf!r} does not exist (shape {tuple(tensors[leaf].shape)})")
                    continue
                existing = next((g for g in groups if (leaf, d) in g.refs), None)
                if existing is not None:  # e.g. the batch dimension, declared by name
                    existing.name = dim_name if existing.name == "batch" and dim_name else existing.name
                    continue
                by_name.setdefault(dim_name or f"{leaf}_dim{d}", []).append((leaf, d))
    for dim_name, refs in by_name.items():
        sizes = {tensors[leaf].shape[d] for leaf, d in refs}
        if len(sizes) > 1:
            notes.append(f"declared dim {dim_name!r} has different example sizes {sorted(sizes)}; sweeping each separately")
            for ref in refs:
                groups.append(DimGroup(f"{dim_name}_{ref[0]}_{ref[1]}", [ref], tensors[ref[0]].shape[ref[1]], True, "declared dynamic"))
        else:
            groups.append(DimGroup(dim_name, refs, sizes.pop(), True, "declared dynamic"))
        assigned.update(refs)

    for group in groups:
        probe_group(group)
        if not group.dynamic:
            _try_linked(group, tensors, assigned, probe_group)

    # 3. every other dimension: dynamic when eager accepts other sizes
    for leaf, t in tensors.items():
        for d in range(t.dim()):
            if (leaf, d) in assigned or t.shape[d] == 0:
                continue
            group = DimGroup(f"{_ident(leaf)}_dim{d}", [(leaf, d)], t.shape[d], False, "eager accepts other sizes")
            probe_group(group)
            if not group.dynamic:
                _try_linked(group, tensors, assigned, probe_group)
            assigned.update(group.refs)
            groups.append(group)
    sweep.groups = groups
    sweep.group_cases = individual

    # export inputs: size-1 dynamic dimensions specialise in torch.export; export at 2
    grow = {ref: 2 for g in groups if g.dynamic and g.size == 1 for ref in g.refs}
    cases = [SweepCase("example", "example", example, reference)]
    if grow:
        sweep.export_inputs = resize(example, names, grow)
        notes.append("size-1 dynamic dimensions (" + ", ".join(g.label for g in groups if g.dynamic and g.size == 1)
                     + ") are exported at size 2: exporters specialise size-1 dimensions")
        export_case = SweepCase("export example", "shape", sweep.export_inputs, None,
                                {g.name: 2 for g in groups if g.dynamic and g.size == 1})
        if export_case.ensure_expected(ctx):
            cases.append(export_case)
            sweep.export_expected = export_case.expected
    else:
        sweep.export_expected = reference

    # combined shape cases: every dynamic group changed at once, alternating larger/smaller
    # between neighbours and swapped in the second case, so every group goes both ways and
    # equal-sized dimensions (H and W) part ways
    dyn = [g for g in groups if g.dynamic]
    has_float = any(isinstance(t, torch.Tensor) and t.is_floating_point() for t in leaves.values())
    seed = int(getattr(ctx.options, "seed", 0) or 0)
    smaller = {g.name: min(g.accepted) for g in dyn if min(g.accepted) < g.size}
    larger = {g.name: max(g.accepted) for g in dyn if max(g.accepted) > g.size}
    assignments: list[dict[str, int]] = []
    for phase in (0, 1):
        assignment = {}
        for i, g in enumerate(dyn):
            first, second = (larger, smaller) if (i + phase) % 2 == 0 else (smaller, larger)
            pick = first.get(g.name) or second.get(g.name)
            if pick:
                assignment[g.name] = pick
        if assignment and assignment not in assignments:
            assignments.append(assignment)
    by_group = {g.name: g for g in dyn}
    for assignment in assignments:
        if len(assignment) == 1:  # one group: its own case
            name, size = next(iter(assignment.items()))
            case = next(c for c in individual[name] if c.sizes[name] == size)
            if case not in cases:
                cases.append(case)
            continue
        inputs = resize(example, names, {ref: size for name, size in assignment.items() for ref in by_group[name].refs})
        text = ", ".join(f"{_case_label(by_group[n])}={v}" for n, v in assignment.items())
        cases.append(SweepCase(f"together: {text}", "shape", inputs, None, dict(assignment)))
    # a group whose other side no combined case reached gets its own case
    for g in dyn:
        reached = {c.sizes.get(g.name) for c in cases if c.kind == "shape"}
        for c in individual.get(g.name, []):
            if c.sizes[g.name] not in reached:
                cases.append(c)
    for case in list(cases):
        if case.expected is None and case.kind == "shape" and not case.ensure_expected(ctx):
            notes.append(f"eager rejects {case.name}: {case.eager_error}; its dimensions are swept one at a time")
            cases.remove(case)
            for name in case.sizes:
                for c in individual.get(name, []):
                    if c not in cases:
                        cases.append(c)
    if has_float:
        for label, offset, kind, scale in value_sets:
            case = SweepCase(label, "values", fill_values(example, kind=kind, scale=scale, seed=seed + offset))
            if case.ensure_expected(ctx):
                cases.append(case)
            else:
                notes.append(f"eager rejects {label}: {case.eager_error}")
    else:
        notes.append("no floating-point inputs: values are not varied (integer inputs keep their meaning)")
    sweep.cases = cases
    sweep.eager_forwards = ctx.stats.calls - calls0
    sweep.seconds = time.perf_counter() - start
    return sweep


def _ident(leaf: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in leaf).strip("_") or "input"


def _case_label(group: DimGroup) -> str:
    leaf, dim = group.refs[0]
    return f"{leaf} dim {dim}" + (f" ({group.name})" if group.name != f"{_ident(leaf)}_dim{dim}" else "")


def _try_linked(group: DimGroup, tensors: dict[str, torch.Tensor], assigned: set[tuple[str, int]], probe: Callable[[DimGroup], None]) -> None:
    """Eager rejected the group alone: try it together with same-sized dims of the other inputs."""
    own = {leaf for leaf, _ in group.refs}
    extra = [(leaf, d) for leaf, t in tensors.items() if leaf not in own for d in range(t.dim())
             if t.shape[d] == group.size and (leaf, d) not in assigned and (leaf, d) not in group.refs]
    if not extra:
        return
    saved = list(group.refs)
    group.refs = saved + extra
    rejected, rejected_at = dict(group.rejected), group.rejected_at
    probe(group)
    if not group.dynamic:
        group.refs = saved
        group.rejected, group.rejected_at = rejected, rejected_at


# ---------------------------------------------------------------------------------------------
# Evaluating an artifact


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
        return self.verdict in ("wrong", "eager-static") or (self.group.required and self.verdict in ("static", "partial"))

    @property
    def warned(self) -> bool:
        return not self.failed and self.verdict in ("static", "partial")


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
        ran = [r for r in self.results if r.max_abs is not None and math.isfinite(r.max_abs)]
        return {"kind": "barh", "title": title, "x": [r.case.name for r in ran],
                "series": {"max |artifact - eager|": [max(r.max_abs, 1e-12) for r in ran]},
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
        return CaseResult(case, "raised", None, first_line(exc), exception=exc)
    try:
        cmp = judge(ctx, case, actual)
    except Exception as exc:  # outputs that cannot be compared at all
        return CaseResult(case, "mismatch", math.inf, f"outputs cannot be compared: {first_line(exc)}", actual=actual)
    if cmp.passed:
        return CaseResult(case, "ok", cmp.max_abs, "", cmp, actual)
    return CaseResult(case, "mismatch", _max_abs(cmp), cmp.describe(), cmp, actual)


def evaluate(ctx: Any, sweep: Sweep, run: Callable[[Any], Any], *, artifact: str = "artifact",
             cases: Sequence[SweepCase] | None = None) -> SweepOutcome:
    """Run `run(inputs)` at every sweep case and judge it against eager, case and dimension group.

    Where a case that changed several dimensions fails, each of its dimensions is then run alone
    (eager's outputs computed on demand) so the verdict names the dimension that breaks.
    """
    start = time.perf_counter()
    results: list[CaseResult] = []
    for case in cases if cases is not None else sweep.cases:
        if case.ensure_expected(ctx):
            results.append(_run_case(ctx, case, run))
    done = {id(r.case) for r in results}
    suspects = {name for r in results if r.status != "ok" and r.case.kind == "shape" and len(r.case.sizes) > 1 for name in r.case.sizes}
    for name in [g.name for g in sweep.groups if g.name in suspects]:
        for case in sweep.group_cases.get(name, []):
            if id(case) not in done and case.ensure_expected(ctx):
                results.append(_run_case(ctx, case, run))
                done.add(id(case))
    groups = [_group_verdict(g, results, artifact) for g in sweep.groups if g.dynamic or g.required]
    return SweepOutcome(results, groups, time.perf_counter() - start)


def _max_abs(cmp: Comparison) -> float:
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
            parts.append(f"at {size} outputs differ by {_fmt(r.max_abs)}")
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


def _fmt(x: float | None) -> str:
    if x is None:
        return "?"
    if not math.isfinite(x):
        return "inf (shapes, types or NaN/Inf differ)"
    return f"{x:.3g}"


# ---------------------------------------------------------------------------------------------
# Export specs


def dynamic_shapes_spec(sweep: Sweep, inputs: Any, dim_for: Callable[[DimGroup], Any]) -> Any:
    """A `dynamic_shapes` argument for torch.export / torch.onnx.export matching `inputs`' structure.

    `dim_for(group)` gives the marker for each dynamic group (Dim.DYNAMIC, Dim.AUTO, a name), or
    None to keep it static. Positional inputs give a tuple, keyword inputs a dict.
    """

    def fn(name: str, leaf: Any) -> Any:
        if not isinstance(leaf, torch.Tensor):
            return None
        spec = {}
        for d in range(leaf.dim()):
            g = sweep.group_of(name, d)
            if g is not None and g.dynamic:
                marker = dim_for(g)
                if marker is not None:
                    spec[d] = marker
        return spec or None

    mapped = map_named(inputs, sweep.names, fn)
    if isinstance(inputs, dict):
        return mapped
    if isinstance(inputs, tuple):
        return tuple(mapped)
    return (mapped,)


def describe_inputs(inputs: Any, names: Sequence[str]) -> str:
    parts = []
    for name, leaf in named_leaves(inputs, names).items():
        if isinstance(leaf, torch.Tensor):
            parts.append(f"{name}: {tuple(leaf.shape)}")
    return ", ".join(parts)
