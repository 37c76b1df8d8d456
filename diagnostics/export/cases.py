"""What the export sweep is made of: named input leaves, resizing and refilling them, the
dimension groups eager moves, the cases every artifact runs on, and export specs built from them."""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..locate.code import Frame
from ..text import one_line
from ..tree import iter_leaves, map_leaves

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
    rejected_frame: Frame | None = None  # where eager raised, when it did (user code, else a library)
    grid: list[int] = field(default_factory=list)  # sizes that change internal grids (half, double, ±stride) eager ran at

    @property
    def rejected_at(self) -> str | None:
        """`model.py:12`: the line where eager rejected another size."""
        return self.rejected_frame.location if self.rejected_frame else None

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
            "why": self.why, "eager_accepts": self.accepted, "grid_sizes": self.grid, "eager_rejects": sorted(self.rejected),
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
                self.eager_error = one_line(exc)
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



def restrict(sweep: Sweep, names: Sequence[str]) -> Sweep:
    """The sweep with groups `names` held at the example's size: for an artifact exported with them
    static. Combined cases that moved them give way to the other groups' own cases."""
    if not names:
        return sweep
    held = set(names)
    groups = [replace(g, accepted=[], grid=[], why="not explored") if g.name in held else g for g in sweep.groups]
    cases: list[SweepCase] = []
    for case in sweep.cases:
        if not held & set(case.sizes):
            cases.append(case)
            continue
        for name in case.sizes:
            cases.extend(c for c in sweep.group_cases.get(name, []) if name not in held and c not in cases)
    group_cases = {k: v for k, v in sweep.group_cases.items() if k not in held}
    return replace(sweep, groups=groups, cases=cases, group_cases=group_cases)


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


def to_numpy(value: Any) -> np.ndarray | None:
    """A tensor (bfloat16 as float32) or a Python number as a NumPy array; None for anything else."""
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu()
        return (t.float() if t.dtype == torch.bfloat16 else t).numpy()
    if isinstance(value, (int, float, bool)):
        return np.asarray(value)
    return None


def fmt(x: float | None) -> str:
    """A difference as reports show it; inf means shapes, types or NaN/Inf differ."""
    if x is None:
        return "?"
    if not math.isfinite(x):
        return "inf (shapes, types or NaN/Inf differ)"
    return f"{x:.3g}"


def ident(leaf: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in leaf).strip("_") or "input"


def case_label(group: DimGroup) -> str:
    leaf, dim = group.refs[0]
    return f"{leaf} dim {dim}" + (f" ({group.name})" if group.name != f"{ident(leaf)}_dim{dim}" else "")
