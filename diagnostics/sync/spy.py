"""`SyncSpy`: every point in a forward pass that would make the host wait for the GPU.

A CUDA kernel launch returns at once; the host only waits when it needs a value from the device.
`SyncSpy` catches the three ways that happens (see `rules`) on any device, so a CPU-only machine
finds the syncs a GPU deployment would suffer: a dispatch mode sees scalar reads, data-dependent
shapes and device-to-host copies; Python-level wrappers, installed only while the spy is active
(and always restored), catch `.tolist()`, `.numpy()`, `.cpu()`, `.to("cpu")` and
`torch.cuda.synchronize()`, which never reach dispatch for CPU tensors. On CUDA
`torch.cuda.set_sync_debug_mode("warn")` runs alongside: its warnings confirm spied points and add
any the spy does not know about. Each event carries the innermost module (`locate.OpSpy`) and the
line inside the model call that makes it (`locate.pick`).
"""
from __future__ import annotations

import contextlib
import itertools
import os
import sys
import threading
import warnings
import weakref
from typing import Any, Callable, Iterator

import torch
from torch.utils._pytree import tree_leaves

from ..locate.code import TOOL, TORCH, Frame, owner, pick, stack_frames
from ..locate.spy import OpSpy, op_base_name
from .rules import OTHER, SyncPoint, dispatch_syncs, sync_kind

#: Tensor methods wrapped while spying: calls that never reach dispatch for CPU tensors.
_TENSOR_METHODS = ("tolist", "numpy", "cpu", "to")


class SyncSpy(OpSpy):
    """Records every host-device sync point of the code run inside `with SyncSpy(model) as spy:`.

    `spy.points()` gives the distinct points in first-seen order (the first is the culprit).
    `cuda_debug=True` also turns on `torch.cuda.set_sync_debug_mode("warn")` when CUDA is available.
    """

    def __init__(self, model: torch.nn.Module | None, *, cuda_debug: bool = True, skip_dirs: tuple[str, ...] = ()) -> None:
        super().__init__(model, lambda name: False)
        #: folders whose frames end the model call besides this tool's (e.g. the test that runs the forward)
        self.skip_dirs = tuple(os.path.abspath(d).rstrip(os.sep) + os.sep for d in skip_dirs)
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
        event.file, event.line = (frame.file, frame.line) if frame else (None, None)
        event.function, event.code = (frame.function, frame.code) if frame else (None, None)

    # -- Python level -------------------------------------------------------------------------
    def _wrap_method(self, target: Any, name: str, label: str, should_record: Callable[..., bool],
                     replacement: Callable[..., Any] | None = None) -> None:
        had_own = name in target.__dict__
        original = target.__dict__[name] if had_own else getattr(target, name)
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
        self._saved.append((target, name, original, had_own))
        setattr(target, name, wrapper)

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
            target, name, original, had_own = self._saved.pop()
            if had_own:
                setattr(target, name, original)
            else:
                try:
                    delattr(target, name)
                except AttributeError:
                    setattr(target, name, original)

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


def locate_sync(skip_dirs: tuple[str, ...] = ()) -> Frame | None:
    """The source line responsible for an op caught now, chosen by `locate.pick` among the frames of
    the model call: walking out from the op past the spy's own frames, up to the first frame of this
    tool or of `skip_dirs` (the check or test that called the model). So the user's line wins, then a
    model library's (torchvision), then torch's own (e.g. inside nn.TransformerEncoder)."""
    def outside(fr: Frame) -> bool:
        return fr.owner == TOOL or (bool(skip_dirs) and os.path.abspath(fr.file).startswith(skip_dirs))

    frames = itertools.takewhile(lambda fr: not outside(fr), itertools.dropwhile(outside, stack_frames(1)))
    return pick(frames)


def _on_accelerator(t: Any) -> bool:
    return isinstance(t, torch.Tensor) and t.device.type not in ("cpu", "meta")


def _called_from_torch() -> bool:
    """True when the wrapped method was called by torch's own Python code (not through `__array__`).

    On CPU such calls act on host-side helper tensors (sizes, indices) that stay on the host in a
    CUDA deployment too; a real device-to-host copy made by torch code is caught in dispatch on CUDA.
    """
    filename = sys._getframe(3).f_code.co_filename  # wrapper's caller: [_called_from_torch, check, wrapper, caller]
    return owner(filename) == TORCH and not os.path.abspath(filename).endswith(os.path.join("torch", "_tensor.py"))
