"""Model inputs: calling a model with them, synthesising them, and slicing them along the batch.

Example inputs come in three forms: a tensor, a tuple of positional inputs, or a dict of keyword
inputs. Everything here works on all three, and on nested containers inside them. The batch policy
(which axis is the batch, per input; a list of images is a batch) is in `batches`, re-exported here.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from .batches import (  # noqa: F401  (the batch policy; re-exported: callers use inp.select_batch etc.)
    BatchDims, as_dims, batch_size, batch_unit, concat_batch, find_batch_dims, rejection, resize_batch, run_batch_dims,
    sample_list, select_batch,
)
from .errors import UsageError
from .tree import flatten, map_leaves

DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float64": torch.float64, "fp64": torch.float64, "double": torch.float64,
    "int64": torch.int64, "long": torch.int64, "int32": torch.int32, "int": torch.int32,
    "uint8": torch.uint8, "bool": torch.bool,
}


def parse_dtype(name: str) -> torch.dtype:
    try:
        return DTYPES[name.lower().replace("torch.", "")]
    except KeyError:
        raise UsageError(f"unknown dtype {name!r}; use one of {', '.join(sorted(DTYPES))}") from None


def call_model(model: Callable[..., Any], inputs: Any) -> Any:
    """Call `model` with inputs in any of the three forms."""
    if isinstance(inputs, dict):
        return model(**inputs)
    if isinstance(inputs, tuple):
        return model(*inputs)
    return model(inputs)


class PositionalCall(torch.nn.Module):
    """Lets a module whose forward takes some inputs only by keyword be called with all of them by
    position: example inputs are a tensor, a tuple or a dict, never a mix of positional and keyword.

    The last `len(keyword_names)` positional arguments are passed as those keywords.
    """

    def __init__(self, module: torch.nn.Module, keyword_names: Sequence[str]) -> None:
        super().__init__()
        self.module = module
        self.keyword_names = tuple(keyword_names)

    def forward(self, *args: Any) -> Any:
        n = len(args) - len(self.keyword_names)
        return self.module(*args[:n], **dict(zip(self.keyword_names, args[n:])))


def as_args_kwargs(inputs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if isinstance(inputs, dict):
        return (), dict(inputs)
    if isinstance(inputs, tuple):
        return inputs, {}
    return (inputs,), {}


def input_names(inputs: Any, model: Any | None = None) -> list[str]:
    """Names for the top-level inputs: dict keys, forward's parameter names, or `x`, `input_1`..."""
    if isinstance(inputs, dict):
        return list(inputs)
    n = len(inputs) if isinstance(inputs, tuple) else 1
    names: list[str] = []
    if model is not None:
        import inspect

        try:
            params = [p for p in inspect.signature(model.forward).parameters.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
            names = [p.name for p in params[:n]]
        except (TypeError, ValueError, AttributeError):
            names = []
    if len(names) < n:
        names = ["x"] if n == 1 else [f"input_{i}" for i in range(n)]
    return names


def clone(inputs: Any) -> Any:
    return map_leaves(inputs, lambda t: t.clone() if isinstance(t, torch.Tensor) else t)


def to_device(obj: Any, device: torch.device | str) -> Any:
    return map_leaves(obj, lambda t: t.to(device) if isinstance(t, torch.Tensor) else t)


def cast_floats(obj: Any, dtype: torch.dtype) -> Any:
    """Cast floating tensors to `dtype`; integer inputs (token ids, masks) stay as they are."""
    return map_leaves(obj, lambda t: t.to(dtype) if isinstance(t, torch.Tensor) and t.is_floating_point() else t)


def detach(obj: Any) -> Any:
    return map_leaves(obj, lambda t: t.detach() if isinstance(t, torch.Tensor) else t)


def tensors(obj: Any) -> list[torch.Tensor]:
    return [leaf for leaf in flatten(obj).values() if isinstance(leaf, torch.Tensor)]


def synthesize(shape: Sequence[int], dtype: torch.dtype = torch.float32, *, seed: int = 0, device: str | torch.device = "cpu") -> torch.Tensor:
    """A reproducible random input: N(0,1) for floats, small non-negative ints for integer dtypes."""
    gen = torch.Generator().manual_seed(seed)
    if dtype.is_floating_point:
        t = torch.randn(*shape, generator=gen, dtype=torch.float32).to(dtype)
    elif dtype == torch.bool:
        t = torch.rand(*shape, generator=gen) > 0.5
    else:
        t = torch.randint(0, 100, tuple(shape), generator=gen, dtype=dtype)
    return t.to(device)


def fresh_like(inputs: Any, *, seed: int, scale: float = 1.0) -> Any:
    """New values with the same structure, shapes and dtypes (integer leaves kept: they are ids/masks)."""
    gen = torch.Generator().manual_seed(seed)

    def make(t: Any) -> Any:
        if isinstance(t, torch.Tensor) and t.is_floating_point():
            return (torch.randn(t.shape, generator=gen, dtype=torch.float32) * scale).to(t.dtype).to(t.device)
        return t

    return map_leaves(inputs, make)


def describe(inputs: Any) -> str:
    parts = []
    for name, leaf in flatten(inputs, root="x").items():
        if isinstance(leaf, torch.Tensor):
            parts.append(f"{name}: {tuple(leaf.shape)} {str(leaf.dtype).replace('torch.', '')}")
        else:
            parts.append(f"{name}: {type(leaf).__name__}")
    return ", ".join(parts)
