"""Fingerprints that turn "the outputs moved" into a culprit: a digest of every `state_dict` entry
(which weights changed) and five numbers per module call's inputs and outputs (which module's
output moved first, found with `locate.divergence.first_divergence`).
"""
from __future__ import annotations

import hashlib
import math
from typing import Any, Callable

import torch

from ..compare import eps
from ..locate.divergence import Divergence, first_divergence
from ..locate.hooks import ModuleCall, ModuleRecorder


def tensor_digest(t: torch.Tensor) -> str | None:
    """sha256 of a tensor's bytes (same values on any device give the same digest); None if unreadable."""
    try:
        data = t.detach().to("cpu").contiguous().reshape(-1)
        if data.is_quantized:
            data = data.int_repr().reshape(-1)
        return hashlib.sha256(data.view(torch.uint8).numpy().tobytes()).hexdigest()
    except Exception:
        return None


def weights_fingerprint(model: torch.nn.Module) -> dict[str, dict[str, Any]]:
    """Per `state_dict` entry: shape, dtype, digest and norm (to say by how much a changed entry moved)."""
    prints: dict[str, dict[str, Any]] = {}
    for key, value in model.state_dict().items():
        if not isinstance(value, torch.Tensor):
            prints[key] = {"repr": repr(value)[:500]}
            continue
        entry: dict[str, Any] = {"shape": list(value.shape), "dtype": str(value.dtype).replace("torch.", ""),
                                 "digest": tensor_digest(value)}
        try:
            data = value.detach().to("cpu")
            data = data.dequantize() if data.is_quantized else data
            entry["norm"] = float(data.double().norm()) if data.numel() else 0.0
        except Exception:
            entry["norm"] = None
        prints[key] = entry
    return prints


_PROBE_SIZE = 4096


def _probe_weights(n: int) -> torch.Tensor:
    return torch.frac(torch.arange(n, dtype=torch.float64) * 0.6180339887498949) - 0.5


def fingerprint(t: torch.Tensor) -> torch.Tensor:
    """Five float64 numbers that move when a tensor moves: mean/rms, rms, max|x|/rms, a fixed
    pseudo-random projection of an evenly strided sample / rms, and the count of non-finite values.
    Scale-free (divided by the rms) so one relative tolerance fits activations of any size.
    Three passes over the data, accumulated in float64 without a float64 copy."""
    x = t.detach()
    if x.is_complex():
        x = torch.view_as_real(x)
    x = x.reshape(-1)
    if not x.is_floating_point():
        x = x.to(torch.float32)
    n = x.numel()
    if n == 0:
        return torch.zeros(5, dtype=torch.float64)
    total = float(x.sum(dtype=torch.float64))
    squares = float((x * x).sum(dtype=torch.float64))
    peak = float(x.abs().max())
    bad = 0.0
    if not (math.isfinite(total) and math.isfinite(squares) and math.isfinite(peak)):
        finite = torch.isfinite(x)
        bad = float((~finite).sum())
        x = torch.where(finite, x, torch.zeros_like(x))
        total, peak = float(x.sum(dtype=torch.float64)), float(x.abs().max())
        squares = float((x.double() ** 2).sum())
    rms = math.sqrt(squares / n)
    scale = rms if rms > 0 else 1.0
    step = max(1, n // _PROBE_SIZE)
    sample = x[::step][:_PROBE_SIZE].to("cpu", torch.float64)
    projection = float((sample * _probe_weights(sample.numel())).sum()) / math.sqrt(sample.numel())
    return torch.tensor([total / n / scale, rms, peak / scale, projection / scale, bad], dtype=torch.float64)


def run_with_module_prints(model: torch.nn.Module, run: Callable[[], Any]) -> tuple[Any, list[dict[str, Any]]]:
    """Run `run()` with forward hooks that fingerprint every module call's inputs and outputs."""
    with ModuleRecorder(model, transform=fingerprint) as recorder:
        outputs = run()
    calls = [{"name": c.name, "type": c.module_type, "inputs": c.inputs, "outputs": c.outputs} for c in recorder.calls]
    return outputs, calls


def fingerprint_tolerance(outputs: dict[str, Any]) -> tuple[float, float]:
    """(rtol, atol) for module fingerprints: sqrt(eps) of the least precise floating output dtype, so
    summation-order noise (other threads, other kernels) passes and a real change does not."""
    dtypes = [t.dtype for t in outputs.values() if isinstance(t, torch.Tensor) and t.is_floating_point()]
    e = max((eps(d) for d in dtypes), default=eps(torch.float32))
    tol = math.sqrt(e)
    return tol, tol


def first_moved_module(recorded: list[dict[str, Any]], current: list[dict[str, Any]], *, rtol: float, atol: float) -> Divergence | None:
    """The first module (in finishing order) whose output fingerprint moved while its inputs' did not."""
    def calls(rows: list[dict[str, Any]]) -> list[ModuleCall]:
        return [ModuleCall(r["name"], r.get("type", "?"), dict(r.get("inputs") or {}), dict(r.get("outputs") or {}), i)
                for i, r in enumerate(rows)]

    return first_divergence(calls(current), calls(recorded), rtol=rtol, atol=atol)
