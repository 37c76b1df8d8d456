"""Host-device synchronisation spy: every point in a forward pass that would make the host wait for the GPU.

A CUDA kernel launch returns at once; the host only waits when it needs a value from the device.
That happens in three ways, and `SyncSpy` catches all three on any device (so a CPU-only machine
finds the syncs a GPU deployment would suffer):

* scalar reads — `.item()`, `float(t)`, `int(t)`, `if t:`, `torch.equal`, `torch.allclose`: they show
  up in dispatch as `aten._local_scalar_dense` (or `aten.item` / `aten.is_nonzero` under
  `torch.inference_mode`), `aten.equal`, `aten.allclose`;
* data-dependent output sizes — `nonzero`, `torch.where(cond)`, boolean-mask indexing and
  assignment, `masked_select`, `unique`, `repeat_interleave` with a tensor of repeats, `bincount`: the
  host must learn the size before it can allocate the result;
* copies to the host — `.cpu()`, `.to("cpu")`, `.tolist()`, `.numpy()`, and explicit
  `torch.cuda.synchronize()`. On CPU tensors these never reach dispatch, so they are caught by
  Python-level wrappers installed only while the spy is active (and always restored).

On CUDA `torch.cuda.set_sync_debug_mode("warn")` runs alongside: its warnings confirm spied points and
add any the spy does not know about. Each event carries the innermost module and the user's
file:line (from `diagnostics.probe.OpSpy`).
"""
from __future__ import annotations

import contextlib
import os
import sys
import threading
import warnings
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from torch.utils._pytree import tree_leaves

from .probe import _OWN_DIR, _TORCH_DIR, OpEvent, OpSpy, op_base_name

#: torch's own plumbing between a library call and the kernel: never the line to show.
_TORCH_PLUMBING = tuple(os.path.join(_TORCH_DIR, p) for p in (
    "_ops.py", "overrides.py", "_tensor.py", "_compile.py", "_dynamo", "utils", "nn/modules/module.py", "_jit_internal.py",
))

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
        return f"{self.event.module or '<root>'} ({self.event.module_type})"

    def as_row(self, short: Callable[[str | None, int | None], str] | None = None) -> dict[str, Any]:
        loc = short(self.event.file, self.event.line) if short else self.event.location
        return {
            "op": self.op, "kind": self.kind, "module": self.module_label, "location": loc or "",
            "code": self.event.code or "", "count": self.count, "confirmed_on_cuda": self.confirmed_on_cuda,
            "allowed_by": self.allowed_by or "",
        }


#: Tensor methods wrapped while spying: calls that never reach dispatch for CPU tensors.
_TENSOR_METHODS = ("tolist", "numpy", "cpu", "to")


class SyncSpy(OpSpy):
    """Records every host-device sync point of the code run inside `with SyncSpy(model) as spy:`.

    `spy.points()` gives the distinct points in first-seen order (the first is the culprit).
    `cuda_debug=True` also turns on `torch.cuda.set_sync_debug_mode("warn")` when CUDA is available.
    """

    def __init__(self, model: torch.nn.Module | None, *, cuda_debug: bool = True, skip_dirs: tuple[str, ...] = ()) -> None:
        super().__init__(model, lambda name: False)
        #: folders whose frames are tool code, not the user's (e.g. the check that runs the forward)
        self.skip_dirs = tuple(os.path.abspath(d) for d in skip_dirs)
        self.cuda_debug = cuda_debug and torch.cuda.is_available()
        self.cuda_warnings: list[str] = []
        self._thread = threading.get_ident()
        self._wrapper_depth = 0
        self._saved: list[tuple[Any, str, Any, bool]] = []
        self._exit_stack: contextlib.ExitStack | None = None
        self._sync_kinds: list[str] = []
        #: ids of CPU tensors known to be host-side helpers (see __torch_dispatch__), with weak refs
        self._host: dict[int, weakref.ref] = {}
        self._accelerated = model is not None and any(p.device.type not in ("cpu", "meta") for p in model.parameters())

    # -- dispatch level -----------------------------------------------------------------------
    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        name = op_base_name(func)
        inputs = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        if not self._accelerated and any(t.device.type not in ("cpu", "meta") for t in inputs):
            self._accelerated = True  # a real GPU run (a model without parameters on the device)
        host_only = bool(inputs) and all(self._is_host(t) for t in inputs)
        if self._wrapper_depth == 0 and not host_only and dispatch_syncs(name, args, kwargs):
            self._record(f"aten.{name}")
        out = func(*args, **kwargs)
        # Provenance: a tensor made from Python data (torch.tensor, as_tensor) stays on the host in a
        # CUDA deployment too, and so does anything computed from host tensors only.
        if name == "lift_fresh" or host_only:
            for t in tree_leaves(out):
                if isinstance(t, torch.Tensor):
                    self._mark_host(t)
        return out

    def _is_host(self, t: torch.Tensor) -> bool:
        """Would this tensor live in host memory in a GPU deployment (so reading it costs no sync)?"""
        if t.device.type != "cpu":
            return False
        if self._accelerated:  # a real GPU run: CPU tensors are host tensors
            return True
        return id(t) in self._host

    def _mark_host(self, t: torch.Tensor) -> None:
        key = id(t)
        if key not in self._host:
            self._host[key] = weakref.ref(t, lambda _r, k=key: self._host.pop(k, None))

    def _record(self, op: str, kind: str | None = None) -> None:
        self.record(op)
        self._sync_kinds.append(kind or sync_kind(op))

    def record(self, op: str) -> None:
        """OpSpy.record (module attribution), located by `locate_sync`: the line inside the model's
        forward, not the tool's or test's line that called the model."""
        super().record(op)
        event = self.events[-1]
        frame = locate_sync(self.skip_dirs)
        event.file, event.line = (frame.filename, frame.lineno) if frame else (None, None)
        event.function, event.code = (frame.name, frame.line) if frame else (None, None)

    # -- Python level -------------------------------------------------------------------------
    def _wrap_method(self, owner: Any, name: str, label: str, should_record: Callable[..., bool],
                     replacement: Callable[..., Any] | None = None) -> None:
        had_own = name in owner.__dict__
        original = owner.__dict__[name] if had_own else getattr(owner, name)
        spy = self

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if threading.get_ident() != spy._thread:  # other threads: untouched behaviour, nothing recorded
                return original(*args, **kwargs)
            if spy._wrapper_depth == 0 and should_record(*args, **kwargs):
                spy._record(label)
            spy._wrapper_depth += 1
            try:
                if replacement is not None:
                    return replacement(*args, **kwargs)
                return original(*args, **kwargs)
            finally:
                spy._wrapper_depth -= 1

        wrapper.__name__ = getattr(original, "__name__", name)
        wrapper.__doc__ = getattr(original, "__doc__", None)
        wrapper.__wrapped__ = original  # type: ignore[attr-defined]
        self._saved.append((owner, name, original, had_own))
        setattr(owner, name, wrapper)

    def _install_wrappers(self) -> None:
        def called_by_user_or_on_device(t: Any, *args: Any, **kwargs: Any) -> bool:
            if isinstance(t, torch.Tensor) and self._is_host(t):
                return False
            return _on_accelerator(t) or not _called_from_torch()

        def to_host(t: Any, *args: Any, **kwargs: Any) -> bool:
            device = kwargs.get("device", args[0] if args else None)
            if isinstance(t, torch.Tensor) and self._is_host(t):
                return False
            if isinstance(device, torch.device):
                return device.type == "cpu" and _on_accelerator(t)
            if isinstance(device, str) and device.split(":")[0] == "cpu":
                return _on_accelerator(t) or not _called_from_torch()
            return False

        for name in _TENSOR_METHODS:
            check = to_host if name == "to" else called_by_user_or_on_device
            self._wrap_method(torch.Tensor, name, f"Tensor.{name}", check)

        def no_op_without_driver(*args: Any, **kwargs: Any) -> None:
            return None

        # Without a GPU, torch.cuda.synchronize() would raise: record it and make it a no-op.
        sync_replacement = None if torch.cuda.is_available() else no_op_without_driver
        self._wrap_method(torch.cuda, "synchronize", "torch.cuda.synchronize", lambda *a, **k: True, sync_replacement)
        for cls_name in ("Stream", "Event"):
            cls = getattr(torch.cuda, cls_name, None)
            if cls is not None and hasattr(cls, "synchronize"):
                self._wrap_method(cls, "synchronize", f"torch.cuda.{cls_name}.synchronize", lambda *a, **k: True, sync_replacement)

    def _restore_wrappers(self) -> None:
        while self._saved:
            owner, name, original, had_own = self._saved.pop()
            if had_own:
                setattr(owner, name, original)
            else:
                try:
                    delattr(owner, name)
                except AttributeError:
                    setattr(owner, name, original)

    # -- CUDA's own detector ------------------------------------------------------------------
    @contextlib.contextmanager
    def _cuda_sync_debug(self) -> Iterator[None]:
        if not self.cuda_debug:
            yield
            return
        spy = self
        previous_mode = torch.cuda.get_sync_debug_mode()
        with warnings.catch_warnings():
            warnings.filterwarnings("always", message=r".*[Ss]ynchroniz")  # every occurrence, not once per line
            original_show = warnings.showwarning

            def show(message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
                text = str(message)
                if "synchroniz" in text.lower():
                    spy.cuda_warnings.append(f"{filename}:{lineno}: {text}")
                    spy._confirm_or_record(text)
                else:
                    original_show(message, category, filename, lineno, file, line)

            warnings.showwarning = show
            torch.cuda.set_sync_debug_mode("warn")
            try:
                yield
            finally:
                torch.cuda.set_sync_debug_mode(previous_mode)

    def _confirm_or_record(self, text: str) -> None:
        """A warning from set_sync_debug_mode: mark the spied point at this line, or add one."""
        before = len(self.events)
        self.record("cuda sync (set_sync_debug_mode)")
        new = self.events[before]
        for event, kind in zip(self.events[:before], self._sync_kinds):
            if (event.location, event.module) == (new.location, new.module):
                self.events.pop()
                event.stack.append("confirmed by torch.cuda.set_sync_debug_mode")
                return
        self._sync_kinds.append(OTHER)

    # -- context ------------------------------------------------------------------------------
    def __enter__(self) -> "SyncSpy":
        self._exit_stack = contextlib.ExitStack()
        try:
            self._install_wrappers()
            self._exit_stack.callback(self._restore_wrappers)
            self._exit_stack.enter_context(self._cuda_sync_debug())
            super().__enter__()
        except BaseException:
            self._exit_stack.close()
            raise
        return self

    def __exit__(self, *exc: Any) -> Any:
        try:
            return super().__exit__(*exc)
        finally:
            if self._exit_stack is not None:
                self._exit_stack.close()
                self._exit_stack = None

    # -- results ------------------------------------------------------------------------------
    def points(self) -> list[SyncPoint]:
        """Distinct sync points (op, module, file:line), in the order they were first hit."""
        found: dict[tuple[str, str, str | None], SyncPoint] = {}
        for event, kind in zip(self.events, self._sync_kinds):
            key = (event.op, event.module, event.location)
            if key in found:
                found[key].count += 1
                continue
            confirmed = "confirmed by torch.cuda.set_sync_debug_mode" in event.stack or event.op.startswith("cuda sync")
            found[key] = SyncPoint(event, kind, confirmed_on_cuda=confirmed)
        return list(found.values())


def locate_sync(skip_dirs: tuple[str, ...] = ()) -> Any:
    """The source line responsible for an op caught now: walking out from the op, the first frame that
    is neither torch itself nor the standard library ("user" code: the model's file, or a model library
    such as torchvision), as long as it lies inside the model call. Frames of this tool and of
    `skip_dirs` (the check or test that called the model) end the walk; then the innermost torch frame
    that is not dispatch plumbing is used (e.g. inside nn.TransformerEncoder)."""
    import linecache
    import traceback

    stdlib = os.path.dirname(os.__file__)
    torch_pkg = _TORCH_DIR
    tool = (_OWN_DIR, *(d.rstrip(os.sep) + os.sep for d in skip_dirs))

    def summary(frame: Any) -> Any:
        line = linecache.getline(frame.f_code.co_filename, frame.f_lineno).strip()
        return traceback.FrameSummary(frame.f_code.co_filename, frame.f_lineno, frame.f_code.co_name, line=line)

    frame = sys._getframe(1)
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(tool):
        frame = frame.f_back  # the spy's own frames
    library = None
    while frame is not None:
        raw = frame.f_code.co_filename
        filename = os.path.abspath(raw) if not raw.startswith("<") else raw
        if filename.startswith(tool):
            break
        in_torch = filename.startswith(torch_pkg)
        in_stdlib = filename.startswith(stdlib) and "site-packages" not in filename
        if not in_torch and not in_stdlib and not raw.startswith("<"):
            return summary(frame)
        if library is None and in_torch and not filename.startswith(_TORCH_PLUMBING):
            library = summary(frame)
        frame = frame.f_back
    return library


def _on_accelerator(t: Any) -> bool:
    return isinstance(t, torch.Tensor) and t.device.type not in ("cpu", "meta")


def _called_from_torch() -> bool:
    """True when the wrapped method was called by torch's own Python code (not through `__array__`).

    On CPU such calls act on host-side helper tensors (sizes, indices) that stay on the host in a
    CUDA deployment too; a real device-to-host copy made by torch code is caught in dispatch on CUDA.
    """
    frame = sys._getframe(3)  # wrapper's caller: [_called_from_torch, check, wrapper, caller]
    filename = os.path.abspath(frame.f_code.co_filename)
    return filename.startswith(_TORCH_DIR) and not filename.endswith(os.path.join("torch", "_tensor.py"))


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
