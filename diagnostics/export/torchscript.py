"""Building a TorchScript trace (saved and reloaded, TracerWarnings kept with their lines) and
attempting `torch.jit.script`."""
from __future__ import annotations

import linecache
import logging
import os
import re
import time
import warnings
from typing import Any

import torch

from ..context import Context
from ..inputs import as_args_kwargs, call_model
from ..locate.code import Frame, raise_site
from .cases import Sweep
from .messages import informative, trim_message
from .pipeline import Built, non_tensor_outputs, quiet, tmpdir

DEPRECATION = ("TorchScript is deprecated in current torch (torch.jit.trace/script emit a FutureWarning): "
               "prefer torch.export (see the torch_export check), which captures shapes symbolically")


def tracer_cause(message: str) -> str:
    """What a TracerWarning means for the trace, in plain words."""
    m = message.lower()
    if "python boolean" in m:
        return "a data-dependent branch (`if` on a tensor) is frozen to the branch the example took"
    if "numpy" in m:
        return "a NumPy round trip is stored in the trace as a constant"
    if "python index" in m or "python integer" in m or "python float" in m or "python number" in m or "python value" in m:
        return "a tensor size or value converted to a Python number is baked in as a constant"
    if "iterating over a tensor" in m:
        return "a Python loop over a tensor is unrolled"
    if "torch.tensor results are registered as constants" in m:
        return "torch.tensor(...) built from Python values is a constant"
    return message.split(". ")[0]


def like_eager(out: Any, reference: Any) -> Any:
    """Compare like with like: torchvision's scripted detection models return `(losses, detections)`
    where eager returns the detections list; take the detections."""
    if (isinstance(out, tuple) and len(out) == 2 and isinstance(out[0], dict) and isinstance(out[1], list)
            and isinstance(reference, list)):
        return out[1]
    return out


def _has_containers(obj: Any) -> bool:
    """Does an output hold a dict or a list (which need strict=False to trace)?"""
    if isinstance(obj, (dict, list)):
        return True
    if isinstance(obj, tuple):
        return any(_has_containers(v) for v in obj)
    return False


def _tracer_warnings(caught: list[warnings.WarningMessage]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    seen: set[tuple[str, int, str]] = set()
    for w in caught:
        if not issubclass(w.category, torch.jit.TracerWarning):
            continue
        msg = str(w.message).split(". ")[0].strip()
        key = (w.filename, w.lineno, msg)
        if key in seen:
            continue
        seen.add(key)
        frame = Frame(w.filename, w.lineno, "", linecache.getline(w.filename, w.lineno).strip())
        out.append({"location": frame.location, "code": frame.code, "message": msg, "cause": tracer_cause(str(w.message)),
                    "file": w.filename, "line": w.lineno})
    return out


def _script_attempt(ctx: Context, built: Built, try_script: bool) -> None:
    if not try_script:
        built.extra["script"] = "not tried"
        return
    start = time.perf_counter()
    try:
        with quiet():
            scripted = torch.jit.script(ctx.model)
        built.extra["script"] = "ok"
        built.extra["script_module"] = scripted
    except Exception as exc:
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip().splitlines()
        built.extra["script"] = f"{type(exc).__name__}: " + " ".join(t.strip() for t in text[:2])[:300]
    built.extra["script_s"] = round(time.perf_counter() - start, 3)


def _trace(ctx: Context, sweep: Sweep, built: Built, caught: list[warnings.WarningMessage]) -> Any:
    args, kwargs = as_args_kwargs(sweep.export_inputs)
    strict = not _has_containers(ctx.reference)
    if not strict:
        built.notes.append("outputs contain dicts or lists: traced with strict=False")
    with warnings.catch_warnings(record=True) as recorded, torch.no_grad():
        warnings.simplefilter("always")
        previous = logging.root.manager.disable
        logging.disable(logging.CRITICAL)
        try:
            return torch.jit.trace(ctx.model, args if not kwargs else None, example_kwarg_inputs=kwargs or None,
                                   strict=strict, check_trace=False)
        finally:
            logging.disable(previous)
            caught.extend(recorded)


def _trace_failed(ctx: Context, built: Built, exc: BaseException) -> None:
    built.error, built.error_kind = informative(exc), "trace"
    odd = non_tensor_outputs(ctx)
    if odd:
        built.error = f"eager returns non-tensor outputs {odd}; a trace can only return tensors (and tuples/lists/dicts of tensors): {built.error}"
        built.error_kind = "outputs"
    built.frame = raise_site(exc)


def _save_and_reload(ctx: Context, built: Built, traced: Any) -> Any:
    """The trace after a torch.jit.save / load round trip (what deployment runs); the in-memory one when that fails."""
    path = os.path.join(tmpdir(ctx), "model.torchscript.pt")
    try:
        with quiet():
            torch.jit.save(traced, path)
            loaded = torch.jit.load(path, map_location=ctx.device)
    except Exception as exc:
        built.extra["roundtrip"] = trim_message(exc)
        built.notes.append(f"save/load round trip fails: {trim_message(exc)}; the in-memory trace is swept instead")
        return traced
    built.path, built.size_bytes = path, os.path.getsize(path)
    built.extra["roundtrip"] = "saved and reloaded; the reloaded trace is the one swept"
    return loaded


def build_torchscript(ctx: Context, sweep: Sweep, try_script: bool) -> Built:
    """`torch.jit.trace` (strict=False for dict/list outputs), saved and reloaded; `torch.jit.script` attempted."""
    built = Built("torchscript")
    caught: list[warnings.WarningMessage] = []
    start = time.perf_counter()
    try:
        traced = _trace(ctx, sweep, built, caught)
    except Exception as exc:
        built.seconds = time.perf_counter() - start
        _trace_failed(ctx, built, exc)
        built.warnings = _tracer_warnings(caught)
        _script_attempt(ctx, built, try_script)
        return built
    built.seconds = time.perf_counter() - start
    built.warnings = _tracer_warnings(caught)
    module = _save_and_reload(ctx, built, traced)
    built.run = lambda inputs: call_model(module, inputs)
    built.extra["trace"] = traced
    _script_attempt(ctx, built, try_script)
    return built
