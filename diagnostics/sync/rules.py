"""Which calls make the host wait for the GPU, what kind of wait each is, and how each reads to a user.

Three kinds (plus CUDA's own reports): scalar reads (`.item()`, `if t:`), data-dependent output sizes
(`nonzero`, boolean masks, `unique`) and copies to the host (`.cpu()`, `.tolist()`), and explicit
`torch.cuda.synchronize()`. `dispatch_syncs` decides from an aten op and its arguments; `SyncPoint`
is one distinct point found; `matches_allow` applies a check's allowlist.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

from ..locate.culprit import Culprit, module_label
from ..locate.spy import OpEvent

#: What kind of sync each operator is, by its base name.
SCALAR_OPS = frozenset({"_local_scalar_dense", "item", "is_nonzero", "equal", "allclose"})
SHAPE_OPS = frozenset({
    "nonzero", "argwhere", "_unique", "_unique2", "unique_dim", "unique_consecutive", "masked_select",
    "repeat_interleave", "bincount",
    "nms",  # torchvision.ops.nms: its CUDA kernel copies the suppression mask to the host
    # nn.TransformerEncoder's inference fast path reads the padding mask on the host
    "_nested_tensor_from_mask", "_nested_tensor_from_mask_left_aligned",
})
#: Ops that sync only for some arguments (boolean masks, single-argument where).
MASK_OPS = frozenset({"index", "index_put", "index_put_", "_index_put_impl_", "where"})
COPY_OPS = frozenset({"_to_copy", "to", "copy_"})

SCALAR, SHAPE, COPY, EXPLICIT = "scalar read", "data-dependent shape", "copy to host", "explicit synchronize"
OTHER = "synchronizing CUDA call"

HINTS = {
    SCALAR: ("reads a tensor value on the host (`.item()`, `float(t)`, `if t:`), so the CPU waits for every queued "
             "kernel: keep the value on the device (torch.where, clamp, masked_fill) or move the decision out of forward"),
    SHAPE: ("produces a result whose size depends on the data, so the host waits for the GPU to learn it: use a "
            "fixed-size form (torch.where(mask, x, 0), masked_fill, nonzero_static(size=...), repeat_interleave(..., "
            "output_size=...)) or allowlist it when the model needs it (detection post-processing)"),
    COPY: ("copies a tensor to the host (`.cpu()`, `.tolist()`, `.numpy()`), which waits for the GPU: keep data in "
           "tensors inside forward and convert once, after the model returns"),
    EXPLICIT: "calls torch.cuda.synchronize() inside forward: remove it (synchronize belongs in timing code only)",
    OTHER: ("makes a call that CUDA reports as synchronizing (torch.cuda.set_sync_debug_mode): find what it reads back "
            "from the GPU on that line and keep it on the device"),
}


def sync_kind(op: str) -> str:
    """The kind of sync an event's op name (`aten.nonzero`, `Tensor.tolist`, ...) stands for."""
    if op.startswith("cuda sync"):
        return OTHER
    base = op.split(".", 1)[1] if op.startswith(("aten.", "Tensor.", "torch.")) else op
    if "synchronize" in base:
        return EXPLICIT
    if base in SCALAR_OPS:
        return SCALAR
    if base in ("tolist", "numpy", "cpu", "to", "_to_copy", "copy_", "__array__"):
        return COPY
    return SHAPE


def _is_bool_index(t: Any) -> bool:
    return isinstance(t, torch.Tensor) and t.dtype in (torch.bool, torch.uint8)


def dispatch_syncs(name: str, args: tuple, kwargs: dict) -> bool:
    """True when aten op `name` with these arguments forces a sync on CUDA."""
    if name in SCALAR_OPS:
        return True
    if name in SHAPE_OPS:
        if name == "repeat_interleave":
            return kwargs.get("output_size") is None and any(isinstance(a, torch.Tensor) for a in args[:2])
        return True
    if name in MASK_OPS and name != "where":
        indices = args[1] if len(args) > 1 else kwargs.get("indices", ())
        return any(_is_bool_index(i) for i in (indices or ()))
    if name == "where":  # where(condition) alone is nonzero; where(cond, a, b) is not a sync
        return len(args) + len(kwargs) == 1
    if name in COPY_OPS:
        return _device_to_host(name, args, kwargs)
    return False


def _device_to_host(name: str, args: tuple, kwargs: dict) -> bool:
    """A copy from an accelerator tensor into host memory."""
    src = args[0] if args else None
    if name == "copy_":  # copy_(dst, src)
        dst, src = (args + (None, None))[:2]
        return isinstance(src, torch.Tensor) and isinstance(dst, torch.Tensor) and src.device.type != "cpu" and dst.device.type == "cpu"
    if not isinstance(src, torch.Tensor) or src.device.type == "cpu":
        return False
    device = kwargs.get("device")
    if device is None:
        device = next((a for a in args[1:] if isinstance(a, (str, torch.device))), None)
    return device is not None and torch.device(device).type == "cpu"


@dataclass
class SyncPoint:
    """One distinct sync point: op kind at one source line in one module, with how often it ran."""

    event: OpEvent
    kind: str
    count: int = 1
    confirmed_on_cuda: bool = False
    allowed_by: str | None = None

    @property
    def op(self) -> str:
        return self.event.op

    @property
    def location(self) -> str | None:
        return self.event.location

    @property
    def module_label(self) -> str:
        return module_label(self.event.module, self.event.module_type)

    @property
    def culprit(self) -> Culprit:
        """The module that makes the call, with the line that makes it."""
        return self.event.culprit

    def as_row(self) -> dict[str, Any]:
        return {
            "op": self.op, "kind": self.kind, "module": self.module_label, "location": self.event.location or "",
            "code": self.event.code or "", "count": self.count, "confirmed_on_cuda": self.confirmed_on_cuda,
            "allowed_by": self.allowed_by or "",
        }


#: How each spied op reads to a user.
OP_TEXT = {
    "aten._local_scalar_dense": "`.item()` / `float(t)` / `int(t)`",
    "aten.item": "`.item()` / `float(t)` / `int(t)`",
    "aten.is_nonzero": "`if tensor:` / `bool(tensor)`",
    "aten.equal": "`torch.equal`",
    "aten.allclose": "`torch.allclose`",
    "aten.nonzero": "`nonzero`",
    "aten.argwhere": "`argwhere`",
    "aten.where": "`torch.where(condition)` (one argument: nonzero)",
    "aten.index": "boolean-mask indexing `x[mask]`",
    "aten.index_put": "boolean-mask assignment `x[mask] = v`",
    "aten.index_put_": "boolean-mask assignment `x[mask] = v`",
    "aten._index_put_impl_": "boolean-mask assignment `x[mask] = v`",
    "aten.masked_select": "`masked_select`",
    "aten._unique2": "`unique`",
    "aten._unique": "`unique`",
    "aten.unique_dim": "`unique(dim=...)`",
    "aten.unique_consecutive": "`unique_consecutive`",
    "aten.repeat_interleave": "`repeat_interleave` with tensor repeats",
    "aten.bincount": "`bincount`",
    "aten.nms": "`torchvision.ops.nms` (its CUDA kernel copies the mask to the host)",
    "aten._nested_tensor_from_mask": "nested-tensor fast path (`_nested_tensor_from_mask`)",
    "aten._nested_tensor_from_mask_left_aligned": "nested-tensor fast path (mask check)",
    "aten._to_copy": "device-to-host copy",
    "aten.to": "device-to-host copy",
    "aten.copy_": "device-to-host copy",
    "Tensor.tolist": "`.tolist()`",
    "Tensor.numpy": "`.numpy()`",
    "Tensor.cpu": "`.cpu()`",
    "Tensor.to": "`.to('cpu')`",
    "torch.cuda.synchronize": "`torch.cuda.synchronize()`",
    "torch.cuda.Stream.synchronize": "`stream.synchronize()`",
    "torch.cuda.Event.synchronize": "`event.synchronize()`",
    "cuda sync (set_sync_debug_mode)": "a synchronizing CUDA call (set_sync_debug_mode)",
}


def op_text(op: str) -> str:
    return OP_TEXT.get(op, f"`{op}`")




def matches_allow(point: SyncPoint, allow: list[str]) -> str | None:
    """The allowlist entry that accepts this point: an op name (`nonzero`, `tolist`), a module
    path or type (`roi_heads`, `RoIHeads`; a path also covers its children), or `file:line`."""
    event = point.event
    op_base = point.op.split(".", 1)[-1]
    for entry in allow:
        e = entry.strip()
        if not e:
            continue
        if e in (point.op, op_base) or (e == "item" and op_base in SCALAR_OPS) or e == point.kind:
            return entry
        if e == event.module_type or (event.module and (event.module == e or event.module.startswith(e + "."))):
            return entry
        if event.location and ":" in e and (event.location.endswith(e) or os.path.basename(event.file or "") + f":{event.line}" == e):
            return entry
    return None
