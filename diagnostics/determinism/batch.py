"""The batch dimension and its samples: finding it, picking and joining samples, aligning a
batched tensor's rows with a sample run alone, and sample 0 run alone (shared by the family)."""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from .. import inputs as inp
from ..context import Context
from ..tree import flatten, map_leaves
from . import SAMPLE_KEY

Align = Callable[[dict, dict], tuple[dict, dict]]


def batch_dim(ctx: Context, given: int | None) -> tuple[int, str]:
    """The inputs' batch dimension: the option, Target.batch_dim, or the first dim all inputs agree on."""
    if given is not None:
        return int(given), "given by the batch_dim option"
    if ctx.target.batch_dim != 0:
        return ctx.target.batch_dim, "Target.batch_dim"
    tensors = [t for t in inp.tensors(ctx.inputs) if t.dim() > 0]
    for d in range(max((t.dim() for t in tensors), default=0)):
        sizes = {t.shape[d] for t in tensors if t.dim() > d}
        if len(sizes) == 1:
            return d, f"found from the example inputs (every input has size {sizes.pop()} in dim {d})"
    return 0, "default (the inputs agree on no dimension)"


def batch_size(inputs: Any, dim: int) -> int | None:
    sizes = [t.shape[dim] for t in inp.tensors(inputs) if t.dim() > dim]
    return max(set(sizes), key=sizes.count) if sizes else None


def select(inputs: Any, index: Sequence[int], dim: int, n: int) -> Any:
    """The samples `index` (in that order) of every input with batch size `n` along `dim`."""
    idx = torch.as_tensor(list(index), dtype=torch.long)

    def pick(t: Any) -> Any:
        if isinstance(t, torch.Tensor) and t.dim() > dim and t.shape[dim] == n:
            return t.index_select(dim, idx.to(t.device))
        return t

    return map_leaves(inputs, pick)


def rolled(n: int) -> list[int]:
    """The batch order rolled by one: new content in every row, same shape."""
    return [(j + 1) % n for j in range(n)]


def concat(parts: list[Any], dim: int, n: int) -> Any:
    flats = [list(flatten(p).values()) for p in parts]
    position = iter(range(len(flats[0])))

    def join(t: Any) -> Any:
        i = next(position)
        if isinstance(t, torch.Tensor) and t.dim() > dim and t.shape[dim] == n:
            return torch.cat([f[i] for f in flats], dim=dim)
        return t

    return map_leaves(parts[0], join)


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
