"""What `device_parity` measures: the settings that may explain a CUDA/CPU difference, and where it starts.

`parity_settings` lists the settings tried one at a time (TF32 off, cuDNN deterministic, each SDPA
backend) and then all together; `explain_difference` re-runs under each and returns the one that
brings the outputs back within tolerance; `divergent_module` names the first module whose CUDA
output leaves the CPU one although its inputs agree.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import torch

from . import inputs as inp
from .context import Context
from .locate.culprit import Culprit
from .locate.divergence import Divergence, first_divergence
from .locate.hooks import ModuleRecorder
from .locate.source import class_frame
from .locate.spy import OpSpy
from .text import one_line


@contextlib.contextmanager
def _tf32_off() -> Iterator[None]:
    """IEEE fp32 for cuBLAS matmuls and cuDNN convolutions/RNNs (new API when present, else the legacy flags)."""
    matmul = torch.backends.cuda.matmul
    if hasattr(matmul, "fp32_precision") and hasattr(torch.backends.cudnn, "conv"):
        targets = [(matmul, "fp32_precision"), (torch.backends.cudnn.conv, "fp32_precision"),
                   (torch.backends.cudnn.rnn, "fp32_precision")]
        saved = [(obj, name, getattr(obj, name)) for obj, name in targets]
        try:
            for obj, name in targets:
                setattr(obj, name, "ieee")
            yield
        finally:
            for obj, name, value in saved:
                setattr(obj, name, value)
        return
    saved_legacy = (matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.get_float32_matmul_precision())
    try:
        matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.set_float32_matmul_precision("highest")
        yield
    finally:
        matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved_legacy[:2]
        torch.set_float32_matmul_precision(saved_legacy[2])


@contextlib.contextmanager
def _cudnn_deterministic() -> Iterator[None]:
    saved = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    try:
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        yield
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved


def _sdpa(backend_name: str) -> Callable[[], Any]:
    def make() -> Any:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        return sdpa_kernel(getattr(SDPBackend, backend_name))

    return make


@contextlib.contextmanager
def _all_strict() -> Iterator[None]:
    with _tf32_off(), _cudnn_deterministic(), _sdpa("MATH")():
        yield


def parity_settings(uses_sdpa: bool) -> list[tuple[str, str, Callable[[], Any]]]:
    """(name, what it changes, context factory) for each setting tried, one at a time, then all together."""
    settings = [
        ("baseline", "the same settings once more (does the difference reproduce?)", contextlib.nullcontext),
        ("tf32_off", "TF32 off (torch.backends.cuda.matmul / cudnn.conv fp32_precision = 'ieee')", _tf32_off),
        ("cudnn_deterministic", "cuDNN deterministic algorithms, benchmark off", _cudnn_deterministic),
    ]
    if uses_sdpa:
        for backend in ("MATH", "EFFICIENT_ATTENTION", "FLASH_ATTENTION", "CUDNN_ATTENTION"):
            settings.append((f"sdpa_{backend.lower()}", f"scaled_dot_product_attention on the {backend} backend", _sdpa(backend)))
    settings.append(("all_strict", "TF32 off + cuDNN deterministic + SDPA math backend", _all_strict))
    return settings


def explain_difference(
    run_with: Callable[[Callable[[], Any]], Any],
    settings: list[tuple[str, str, Callable[[], Any]]],
    judge: Callable[[Any], tuple[bool, float]],
) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """Re-run under each setting; the first single setting that brings the outputs within tolerance
    explains the difference (else the combination). A `baseline` setting (the current settings again)
    that already agrees means the difference does not reproduce: it is returned as the explanation.

    `run_with(context_factory)` returns outputs; `judge(outputs)` returns (within tolerance, error).
    A setting whose kernels cannot run (e.g. flash attention on fp32) is listed as unavailable.
    """
    rows: list[dict[str, Any]] = []
    for name, what, factory in settings:
        try:
            out = run_with(factory)
        except Exception as exc:
            rows.append({"setting": name, "what": what, "available": False, "error": one_line(exc, 160)})
            continue
        ok, err = judge(out)
        rows.append({"setting": name, "what": what, "available": True, "within_tolerance": ok, "max_abs": err})
        if name == "baseline" and ok:
            return rows[-1], rows
    usable = [r for r in rows if r.get("available") and r["setting"] != "baseline"]
    singles = [r for r in usable if r["setting"] != "all_strict" and r["within_tolerance"]]
    if singles:
        return singles[0], rows
    combined = next((r for r in usable if r["setting"] == "all_strict" and r["within_tolerance"]), None)
    if combined:
        return combined, rows
    return None, rows


def to_cpu(obj: Any) -> Any:
    return inp.to_device(obj, "cpu")


def uses_sdpa(model: torch.nn.Module, inputs: Any, forward: Callable[[Any], Any]) -> bool:
    """Does forward call scaled_dot_product_attention (so its backends are worth trying)?"""
    with OpSpy(model, lambda name: "scaled_dot_product" in name or "_efficient_attention" in name or "flash_attention" in name) as spy:
        forward(inputs)
    return bool(spy.events)


def divergent_module(ctx: Context, cpu_model: torch.nn.Module, cpu_inputs: Any, atol: float) -> Divergence | None:
    """The first module whose CUDA output leaves the CPU one although its inputs agree."""
    with ModuleRecorder(cpu_model) as rec_cpu:
        ctx.forward(cpu_inputs, cpu_model)
    with ModuleRecorder(ctx.model, transform=lambda t: t.cpu()) as rec_cuda:
        ctx.forward()
    return first_divergence(rec_cuda, rec_cpu, rtol=1e-4, atol=atol)


def divergence_culprit(model: torch.nn.Module, div: Divergence | None) -> Culprit | None:
    """The divergent module as a culprit, with where its forward is written when that is the user's code."""
    if div is None:
        return None
    culprit = div.culprit
    try:
        return culprit.with_frame(class_frame(model.get_submodule(culprit.name)))
    except AttributeError:
        return culprit
