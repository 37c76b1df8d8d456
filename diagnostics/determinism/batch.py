"""The batch dimension and its samples for the determinism family: finding it, picking and joining
samples (both through the one batch policy, `inputs.batches`), splitting a batched output into
samples (`OutputRows`), aligning a batched tensor's rows with a sample run alone, and sample 0 run
alone (shared by the family)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from .. import inputs as inp
from ..context import Context
from ..tree import flatten
from . import SAMPLE_KEY

Align = Callable[[dict, dict], tuple[dict, dict]]


def batch_dim(ctx: Context, given: Any) -> tuple[inp.BatchDims, str]:
    """The inputs' batch dims and their source: the option, the Target, a list of samples, or the first
    dim all inputs agree on (the one policy: `inputs.run_batch_dims`)."""
    return inp.run_batch_dims(ctx, given)


def batch_size(inputs: Any, dim: Any) -> int | None:
    return inp.batch_size(inputs, dim)


def select(inputs: Any, index: Sequence[int], dim: Any, n: int) -> Any:
    """The samples `index` (in that order) of every input with batch size `n`."""
    return inp.select_batch(inputs, list(index), dim, size=n)


def rolled(n: int) -> list[int]:
    """The batch order rolled by one: new content in every row, same shape."""
    return [(j + 1) % n for j in range(n)]


def concat(parts: list[Any], dim: Any, n: int) -> Any:
    return inp.concat_batch(parts, dim)


def leaf_batch_dim(batched: Any, single: Any, n: int) -> int | None:
    """The dim of an output leaf that is n in the batch and 1 for one sample (None: not per-sample)."""
    if not (isinstance(batched, torch.Tensor) and isinstance(single, torch.Tensor)) or batched.dim() != single.dim():
        return None
    dims = [d for d in range(batched.dim()) if batched.shape[d] != single.shape[d]]
    if len(dims) == 1 and batched.shape[dims[0]] == n and single.shape[dims[0]] == 1:
        return dims[0]
    return None


def spread(n: int, k: int) -> list[int]:
    """k sample indices spread over a batch of n (first and last included)."""
    if k <= 0 or k >= n:
        return list(range(n))
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)}) if k > 1 else [0]


def comparable(t: Any) -> bool:
    return isinstance(t, torch.Tensor) and not getattr(t, "is_nested", False) and t.layout == torch.strided


def _rows_like(batched: torch.Tensor, single: torch.Tensor, row: int, n: int) -> torch.Tensor | None:
    """Sample `row` of a batched tensor, shaped like its batch-of-1 counterpart (None: no batch dim)."""
    if batched.shape == single.shape:
        return batched  # not per-sample (e.g. a statistic over the batch): compared whole
    if batched.dim() != single.dim():
        return None
    dims = [d for d in range(batched.dim()) if batched.shape[d] != single.shape[d]]
    if len(dims) != 1:
        return None
    d = dims[0]
    b, s = batched.shape[d], single.shape[d]
    if b == n and s == 1:
        return batched.narrow(d, row, 1)
    if s > 0 and b == n * s:  # batch folded into another dim, batch-major
        return batched.narrow(d, row * s, s)
    return None


def align_rows(row: int, n: int) -> Align:
    """Maps a batched recording's tensors onto a sample-alone recording's: row `row` of each."""

    def align(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> tuple[dict, dict]:
        out_a, out_b = {}, {}
        for key, tb in b.items():
            ta = a.get(key)
            if ta is None or not (comparable(ta) and comparable(tb)):
                continue
            picked = _rows_like(ta, tb, row, n)
            if picked is not None:
                out_a[key], out_b[key] = picked, tb
        return out_a, out_b

    return align


def sample_zero(ctx: Context) -> tuple[int, int, Any, Any] | None:
    """(batch dim, batch size, sample 0's inputs, its output alone), built once per run; None for a batch of 1."""
    dim, _ = batch_dim(ctx, None)
    n = batch_size(ctx.inputs, dim)
    if not n or n < 2:
        return None
    inputs = select(ctx.inputs, [0], dim, n)
    try:
        return ctx.cached(SAMPLE_KEY, lambda: (dim, n, inputs, ctx.forward(inputs)))
    except Exception:  # a model that cannot run one sample: batch_invariance reports it; compare whole batches here
        return None


def _listed(out: Any, n: int) -> bool:
    return inp.sample_list(out) and len(out) == n


def _tensor_leaves(out: Any) -> dict[str, torch.Tensor]:
    return {name: t for name, t in flatten(out).items() if isinstance(t, torch.Tensor)}


@dataclass
class OutputRows:
    """How a batched output splits into samples: each tensor leaf along its own batch dim, or a list of
    per-sample outputs (torchvision detections: one dict per image) along the list."""

    leaf_dims: dict[str, int]
    listed: bool = False

    @classmethod
    def of(cls, batched: Any, single: Any, n: int) -> "OutputRows":
        if _listed(batched, n) and _listed(single, 1):
            return cls({}, True)
        ref, first = flatten(batched), flatten(single)
        return cls({name: d for name, t in ref.items() if (d := leaf_batch_dim(t, first.get(name), n)) is not None})

    def __bool__(self) -> bool:
        return self.listed or bool(self.leaf_dims)

    @property
    def dims(self) -> dict[str, Any]:
        return {"output": "the list (one output per sample)"} if self.listed else dict(self.leaf_dims)

    def alone(self, single: Any) -> dict[str, Any]:
        """A sample run alone, as compared."""
        flat = flatten(single)
        return _tensor_leaves(single) if self.listed else {name: flat.get(name) for name in self.leaf_dims}

    def row(self, batched: Any, i: int) -> dict[str, Any]:
        """Sample i's part of the batched output, named and shaped as `alone` names and shapes it."""
        if self.listed:
            return _tensor_leaves([batched[i]])
        flat = flatten(batched)
        return {name: flat[name].narrow(d, i, 1) for name, d in self.leaf_dims.items()}

    def whole(self, batched: Any) -> dict[str, Any]:
        flat = flatten(batched)
        return _tensor_leaves(batched) if self.listed else {name: flat[name] for name in self.leaf_dims}

    def in_order(self, permuted: Any, perm: list[int]) -> dict[str, Any]:
        """The output of the batch run in order `perm`, put back in the original order."""
        inverse = torch.argsort(torch.tensor(perm))
        if self.listed:
            return _tensor_leaves([permuted[int(j)] for j in inverse])
        flat = flatten(permuted)
        return {name: flat[name].index_select(d, inverse.to(flat[name].device)) for name, d in self.leaf_dims.items()
                if isinstance(flat.get(name), torch.Tensor) and flat[name].dim() > d}
