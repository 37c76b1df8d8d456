"""THE batch policy: which axis of each input is the batch, and slicing, joining and resizing a batch.

Every check that changes the batch (batch_invariance, cuda_oom, benchmark, the memory fit, the
quantization runtime) goes through here, so they agree on what "batch 4" means.

* Each top-level input (a positional argument or a keyword) has its own batch dim: `BatchDims`
  (`Target.batch_dims`, else `Target.batch_dim` for all). `None` means "no batch dim": such an
  input is left as it is when the batch is sliced or resized.
* A list of same-rank tensors passed as one input (torchvision detection/segmentation models take
  `[img1, img2]` of `[C,H,W]`) is a batch along the list, never along dim 0 of each image; a list
  of dicts with the same keys (per-image targets, per-image detections) likewise. Tuples are not
  (an LSTM's `(h0, c0)` is one state), unless their tensors differ in shape (they cannot be one).
* Within an input, a tensor is batched when its size along the dim is the batch size; other
  tensors (a shared `[T, T]` mask) are left unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch

from .tree import flatten, map_leaves


@dataclass(frozen=True)
class BatchDims:
    """The batch dim of each top-level input (key: dict key or positional index); `default` for the rest."""

    default: int | None = 0
    per_input: Mapping[Any, int | None] = field(default_factory=dict)
    listed: bool = field(default=False, compare=False)  # found from a list of samples (said in messages)

    def of(self, key: Any) -> int | None:
        if key in self.per_input:
            return self.per_input[key]
        if isinstance(key, int) and str(key) in self.per_input:
            return self.per_input[str(key)]
        return self.default

    @property
    def value(self) -> int | str | None:
        """For metrics and messages: the dim when every input shares it, else a description."""
        return self.default if not self.per_input and not self.listed else str(self)

    def __str__(self) -> str:
        if self.listed:
            return "the list of samples" + ("".join(f", {k}: {v}" for k, v in self.per_input.items()))
        if not self.per_input:
            return str(self.default)
        return ", ".join(f"{k}: {v}" for k, v in self.per_input.items()) + (f", others: {self.default}" if self.default != 0 else "")


def as_dims(dims: Any) -> BatchDims:
    """An int (every input), a {input: dim} mapping, or BatchDims."""
    if isinstance(dims, BatchDims):
        return dims
    if dims is None:
        return BatchDims()
    if isinstance(dims, Mapping):
        return BatchDims(0, dict(dims))
    return BatchDims(int(dims))


def sample_list(value: Any) -> bool:
    """A list of per-sample items passed as one input (or returned as one output): tensors of one rank,
    or dicts with the same keys (never a tuple: `(h0, c0)` is one state, not two samples)."""
    if not isinstance(value, list) or not value:
        return False
    if all(isinstance(v, torch.Tensor) for v in value):
        return len({v.dim() for v in value}) == 1 and value[0].dim() >= 1
    return all(isinstance(v, Mapping) for v in value) and len({tuple(v) for v in value}) == 1


def _parts(inputs: Any) -> list[tuple[Any, Any]]:
    """(key, value) of each top-level input: dict keys, positional indices, or None for a bare input."""
    if isinstance(inputs, Mapping):
        return list(inputs.items())
    if isinstance(inputs, tuple) and not hasattr(inputs, "_fields"):
        return list(enumerate(inputs))
    return [(None, inputs)]


def _rebuild(inputs: Any, values: list[Any]) -> Any:
    if isinstance(inputs, Mapping):
        items = dict(zip(inputs.keys(), values))
        try:
            return type(inputs)(items)
        except Exception:
            return items
    if isinstance(inputs, tuple) and not hasattr(inputs, "_fields"):
        return tuple(values)
    return values[0]


def _sizes(inputs: Any, dims: BatchDims) -> list[int]:
    sizes: list[int] = []
    for key, value in _parts(inputs):
        d = dims.of(key)
        if d is None:
            continue
        if sample_list(value):
            sizes.append(len(value))
            continue
        sizes += [t.shape[d] for t in flatten(value).values() if isinstance(t, torch.Tensor) and t.dim() > d]
    return sizes


def batch_size(inputs: Any, batch_dim: Any = 0) -> int | None:
    """The batch size: the size most inputs agree on along their batch dim; None when no input has a batch
    dim or the inputs are split evenly between sizes (ambiguous: give `Target.batch_dims`)."""
    sizes = _sizes(inputs, as_dims(batch_dim))
    counts = {s: sizes.count(s) for s in sizes}
    best = max(counts.values(), default=0)
    winners = [s for s, c in counts.items() if c == best]
    return winners[0] if len(winners) == 1 else None


def batch_unit(inputs: Any, batch_dim: Any = 0) -> str:
    """What one sample of the batch is, for messages: `image` for a list of images, else `sample`."""
    dims = as_dims(batch_dim)
    for key, value in _parts(inputs):
        if dims.of(key) is not None and sample_list(value) and isinstance(value[0], torch.Tensor) and value[0].dim() == 3:
            return "image"
    return "sample"


def select_batch(inputs: Any, index: int | Sequence[int] | torch.Tensor, batch_dim: Any = 0, *,
                 size: int | None = None) -> Any:
    """Samples `index`, in that order, of every batched input (a single int keeps the dim, as a batch of 1).
    `size`: the batch size when known (else `batch_size`)."""
    dims = as_dims(batch_dim)
    n = batch_size(inputs, dims) if size is None else size
    idx = [int(i) for i in (torch.as_tensor(index).reshape(-1).tolist() if not isinstance(index, int) else [index])]
    rows = torch.as_tensor(idx, dtype=torch.long)

    def one(key: Any, value: Any) -> Any:
        d = dims.of(key)
        if d is None or n is None:
            return value
        if sample_list(value):
            return type(value)(value[i] for i in idx) if len(value) == n else value
        return map_leaves(value, lambda t: t.index_select(d, rows.to(t.device))
                          if isinstance(t, torch.Tensor) and t.dim() > d and t.shape[d] == n else t)

    return _rebuild(inputs, [one(k, v) for k, v in _parts(inputs)])


def concat_batch(parts: Sequence[Any], batch_dim: Any = 0) -> Any:
    """Join several batches (inputs or outputs) into one, input by input: lists of samples are joined,
    tensors batched in every part are concatenated along their dim, the rest kept from the first part."""
    dims = as_dims(batch_dim)
    sizes = [batch_size(p, dims) for p in parts]
    split = [_parts(p) for p in parts]
    values = []
    for j, (key, value) in enumerate(split[0]):
        d = dims.of(key)
        own = [s[j][1] for s in split]
        if d is None:
            values.append(value)
        elif sample_list(value):
            values.append(type(value)(item for v in own for item in v))
        else:
            values.append(_concat_leaves(own, d, sizes))
    return _rebuild(parts[0], values)


def _concat_leaves(values: list[Any], d: int, sizes: list[int | None]) -> Any:
    flats = [list(flatten(v).values()) for v in values]
    position = iter(range(len(flats[0])))

    def join(t: Any) -> Any:
        i = next(position)
        leaves = [f[i] for f in flats]
        if all(isinstance(x, torch.Tensor) and x.dim() > d and x.shape[d] == n for x, n in zip(leaves, sizes)):
            return torch.cat(leaves, dim=d)
        return t

    return map_leaves(values[0], join)


def resize_batch(inputs: Any, batch: int, batch_dim: Any = 0) -> Any:
    """The inputs with `batch` samples, repeating the example's samples cyclically; inputs without a
    batch dim unchanged."""
    size = batch_size(inputs, batch_dim)
    if not size:
        raise ValueError("the inputs have no batch dimension to resize")
    if batch == size:
        return inputs
    return select_batch(inputs, [i % size for i in range(batch)], batch_dim, size=size)


def find_batch_dims(inputs: Any, default: int = 0, per_input: Mapping[Any, int | None] | None = None,
                    given: Any = None, names: Sequence[str] = ()) -> tuple[BatchDims, str]:
    """The batch dims and where they come from: `given` (an option), the Target's per-input dims or
    non-default batch_dim, a list of samples (its length is the batch), or the first dim all inputs agree on.
    `names`: the positional inputs' names, so per-input dims may name them."""
    if given is not None:
        return as_dims(given), "given by the batch_dim option"
    if per_input:
        index = {name: i for i, name in enumerate(names)}
        return BatchDims(default, {index.get(k, k): v for k, v in per_input.items()}), "Target.batch_dims"
    if default != 0:
        return BatchDims(default), "Target.batch_dim"
    listed = [v for _, v in _parts(inputs) if sample_list(v)]
    if listed:
        n = len(listed[0])
        return _dims_around_list(inputs, n), f"found from the example inputs (a list of {n} {batch_unit(inputs)}s is the batch)"
    tensors = [t for t in flatten(inputs).values() if isinstance(t, torch.Tensor) and t.dim() > 0]
    for d in range(max((t.dim() for t in tensors), default=0)):
        sizes = {t.shape[d] for t in tensors if t.dim() > d}
        if len(sizes) == 1:
            return BatchDims(d), f"found from the example inputs (every input has size {sizes.pop()} in dim {d})"
    return BatchDims(0), "default (the inputs agree on no dimension)"


def _dims_around_list(inputs: Any, n: int) -> BatchDims:
    """Next to a list of samples, each other input's batch dim is its first dim of size n (None: none)."""
    per: dict[Any, int | None] = {}
    for key, value in _parts(inputs):
        if sample_list(value) or key is None:
            continue
        ts = [t for t in flatten(value).values() if isinstance(t, torch.Tensor)]
        per[key] = next((d for d in range(max((t.dim() for t in ts), default=0))
                         if all(t.dim() > d and t.shape[d] == n for t in ts)), None)
    return BatchDims(0, per, listed=True)


def run_batch_dims(ctx: Any, given: Any = None) -> tuple[BatchDims, str]:
    """The run's batch dims (see `find_batch_dims`), from the Target (`batch_dims`, `batch_dim`) and an option."""
    from .inputs import input_names

    target = ctx.target
    per_input = getattr(target, "batch_dims", None)
    names = input_names(ctx.inputs, target.model) if per_input else ()
    return find_batch_dims(ctx.inputs, target.batch_dim, per_input, given, names)


def rejection(exc: BaseException) -> str:
    """Why a model refuses a batch size, in one line: `<error> at <file:line>` (the user's or a library's line)."""
    from .locate.code import raise_site
    from .text import one_line

    site = raise_site(exc)
    return one_line(exc, 160) + (f" at {site.location}" + (f" (`{site.code}`)" if site.code else "") if site else "")
