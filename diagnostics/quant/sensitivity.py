"""Per-layer int8 sensitivity: each layer quantized alone, ranked by the SQNR the model keeps.

Dynamic: the real `quantize_dynamic` of that layer. Static: int8 fake-quantization of its weights
per channel and of its input per tensor over the calibrated range. The worst layer is the culprit,
with its input's channel outliers; keeping it in float is tried where the flow allows (dynamic, FX).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from .. import inputs as inp
from ..compare import compare
from ..context import deepcopy_model
from ..locate.code import Frame
from ..precision.hooks import ModuleCallView
from ..precision.input_stats import InputStats, record_input_stats
from ..registry import CheckOptions
from ..results import SEVERITY
from .calibration import Calibration
from .flows import build_dynamic, build_fx
from .runtime import QuantMode

#: Module types the static sensitivity simulation quantizes one at a time.
STATIC_TYPES: tuple[type, ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
#: A channel this many times the median channel's magnitude leaves per-tensor int8 no levels for the rest.
OUTLIER_RATIO = 100


@dataclass
class Sensitivity(ModuleCallView):
    name: str  # the layer's dotted path
    module_type: str
    sqnr_db: float
    input_range: tuple[float, float] | None = None
    outlier_channel: int | None = None
    outlier_ratio: float | None = None
    producer: str | None = None
    call_site: Frame | None = None

    @property
    def has_outlier(self) -> bool:
        return self.outlier_ratio is not None and self.outlier_ratio >= OUTLIER_RATIO

    def row(self) -> dict[str, Any]:
        return {"layer": self.label, "sqnr_db": self.sqnr_db, "input_range": list(self.input_range) if self.input_range else None,
                "outlier_channel": self.outlier_channel, "outlier_ratio": self.outlier_ratio, "producer": self.producer,
                "call_site": self.call_site.location if self.call_site else None}


def static_layers(model: nn.Module, limit: int) -> list[str]:
    return [n for n, m in model.named_modules() if type(m) in STATIC_TYPES][:limit]


def sqnr(outputs: Any, ref: Any) -> float:
    return compare(outputs, ref).min_sqnr_db


def _fake_quant_input(lo: float, hi: float) -> Callable[..., Any]:
    """Pre-hook: the first floating input quantized per tensor to 256 levels over [lo, hi] (0 included)."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = max((hi - lo) / 255.0, 1e-12)
    zero_point = int(min(max(round(-lo / scale), 0), 255))

    def hook(module: nn.Module, args: tuple) -> tuple:
        out, done = [], False
        for a in args:
            if not done and isinstance(a, torch.Tensor) and a.is_floating_point():
                a = torch.fake_quantize_per_tensor_affine(a.float(), scale, zero_point, 0, 255).to(a.dtype)
                done = True
            out.append(a)
        return tuple(out)

    return hook


def _fake_quant_weight(w: torch.Tensor) -> torch.Tensor:
    """Symmetric int8 per output channel (axis 0), as the static flows quantize weights."""
    flat = w.detach().float().reshape(w.shape[0], -1)
    scale = (flat.abs().amax(dim=1) / 127.0).clamp_min(1e-12)
    zero = torch.zeros(w.shape[0], dtype=torch.int32)
    return torch.fake_quantize_per_channel_affine(w.detach().float(), scale, zero, 0, -127, 127).to(w.dtype)


def _row(name: str, module: nn.Module, db: float, st: InputStats | None) -> Sensitivity:
    row = Sensitivity(name, type(module).__name__, db)
    if st is not None:
        row.input_range = (st.min, st.max) if math.isfinite(st.min) else None
        out = st.outlier()
        if out is not None:
            row.outlier_channel, row.outlier_ratio = out
        row.producer, row.call_site = st.producer, st.call_site
    return row


def static_sensitivity(model: nn.Module, x: Any, ref: Any, stats: dict[str, InputStats], limit: int) -> list[Sensitivity]:
    """Each Conv/Linear alone in simulated static int8: per-channel int8 weights, its input fake-quantized
    per tensor over the calibrated range `stats[name]` (from `record_input_stats`)."""
    work = deepcopy_model(model)[0]
    rows = []
    for name in static_layers(work, limit):
        st = stats.get(name)
        if st is None or not math.isfinite(st.min):
            continue  # never called, or no floating input
        module = work.get_submodule(name)
        original = module.weight.detach().clone()
        handle = module.register_forward_pre_hook(_fake_quant_input(st.min, st.max))
        try:
            with torch.no_grad():
                module.weight.copy_(_fake_quant_weight(original))
                out = inp.call_model(work, x)
        finally:
            handle.remove()
            with torch.no_grad():
                module.weight.copy_(original)
        rows.append(_row(name, module, sqnr(out, ref), st))
    return sorted(rows, key=lambda r: r.sqnr_db)


def dynamic_sensitivity(mode: QuantMode, model: nn.Module, x: Any, ref: Any, limit: int) -> list[Sensitivity]:
    """Each Linear/LSTM/GRU alone through the real quantize_dynamic, the rest in float."""
    from torch.ao.quantization import quantize_dynamic

    work = deepcopy_model(model)[0]
    names = mode.layers[:limit]
    stats = record_input_stats(work, [x], names)
    rows = []
    partly = QuantMode("dynamic", model=work, fastpath_off=mode.fastpath_off)
    for name in names:
        head, _, attr = name.rpartition(".")
        parent = work.get_submodule(head) if head else work
        original = getattr(parent, attr)
        setattr(parent, attr, quantize_dynamic(nn.Sequential(original), {type(original)}, dtype=torch.qint8)[0])
        try:
            out = partly.call(x)
        finally:
            setattr(parent, attr, original)
        rows.append(_row(name, original, sqnr(out, ref), stats.get(name)))
    return sorted(rows, key=lambda r: r.sqnr_db)


def _plot(mode: str, rows: list[Sensitivity]) -> dict[str, Any]:
    shown = rows[:20]
    return {"kind": "barh", "title": f"int8 {mode}: SQNR with one layer quantized (shortest costs most)",
            "x": [r.label for r in shown], "series": {"SQNR (dB)": [r.sqnr_db if math.isfinite(r.sqnr_db) else 100.0 for r in shown]},
            "xlabel": "layer", "ylabel": "output SQNR vs fp32 (dB)", "logy": False}


def rank_layers(numeric: list[QuantMode], float_model: nn.Module, x: Any, ref: Any, cal_stats: dict[str, InputStats],
                opts: CheckOptions, details: dict[str, Any]) -> tuple[Sensitivity | None, QuantMode, list[Sensitivity]]:
    """Per-layer sensitivity of every mode with a numeric problem, into `details`;
    (worst layer, its mode, that mode's ranking)."""
    start = time.perf_counter()
    ranked: dict[str, list[Sensitivity]] = {}
    for mode in numeric:
        if mode.mode == "dynamic":
            ranked["dynamic"] = dynamic_sensitivity(mode, float_model, x, ref, opts.max_layers)
        else:
            ranked["static"] = static_sensitivity(float_model, x, ref, cal_stats, opts.max_layers)
    details["sensitivity"] = {k: [r.row() for r in v] for k, v in ranked.items()}
    details["plot"] = [_plot(k, v) for k, v in ranked.items() if v]
    details["sensitivity_seconds"] = time.perf_counter() - start
    worst_mode = min(numeric, key=lambda m: (-SEVERITY[m.status], m.sqnr_db))
    rows = ranked.get(worst_mode.mode) or next((v for v in ranked.values() if v), [])
    return (rows[0] if rows else None), worst_mode, rows


def keep_float_code(mode: QuantMode, name: str) -> str:
    if mode.mode == "dynamic":
        return f"pass quantize_dynamic a set of module names that leaves out '{name}'"
    if mode.flow == "fx":
        return f"`qconfig_mapping.set_module_name('{name}', None)` before prepare_fx"
    return (f"leave '{name}' out of the quantizer's annotation (PT2E quantizers that support it: `set_module_name('{name}', None)`), "
            f"or use FX with `qconfig_mapping.set_module_name('{name}', None)`")


def keep_float_trial(mode: QuantMode, model: nn.Module, x: Any, ref: Any, cal: Calibration, engine: str, name: str) -> float | None:
    """SQNR with `name` kept in float, rebuilt with the real flow (dynamic and FX only)."""
    try:
        if mode.mode == "dynamic":
            trial = QuantMode("dynamic", model=build_dynamic(model, frozenset({name})), fastpath_off=mode.fastpath_off)
        elif mode.flow == "fx":
            trial = QuantMode("static", model=build_fx(model, x, cal.batches, engine, frozenset({name})), fastpath_off=mode.fastpath_off)
        else:
            return None
        return sqnr(trial.call(x), ref)
    except Exception:
        return None


def _kept_text(mode: QuantMode, top: Sensitivity, kept: float, warn_db: float) -> str:
    if kept >= warn_db:
        return f"keeping it in float gives {kept:.1f} dB"
    if mode.mode == "static":
        return (f"keeping it alone in float gives only {kept:.1f} dB: its input is also quantized where it is produced"
                + (f" ({top.producer})" if top.producer else "") + ", so keep that producer in float too")
    return f"keeping it alone in float gives only {kept:.1f} dB: other layers cost too"


def culprit_hint(mode: QuantMode, top: Sensitivity, rows: list[Sensitivity], kept: tuple[str, float] | None,
                 calibration_blame: str | None, opts: CheckOptions) -> str:
    parts = [f"{top.label} costs the most: quantized alone ({mode.mode}) the output keeps {top.sqnr_db:.1f} dB SQNR"]
    if top.has_outlier:
        src = f" (from {top.producer})" if top.producer else ""
        parts.append(f"channel {top.outlier_channel} of its input{src} is {top.outlier_ratio:.3g}x the median channel's magnitude, "
                     f"so per-tensor int8 leaves the other channels almost no levels")
    elif top.input_range is not None:
        parts.append(f"its input spans [{top.input_range[0]:.3g}, {top.input_range[1]:.3g}]")
    if kept is not None:
        parts.append(_kept_text(mode, top, kept[1], opts.warn_sqnr_db))
    others = [r for r in rows[1:] if r.sqnr_db < opts.warn_sqnr_db]
    if others:
        parts.append("also below the warn level: " + ", ".join(f"{r.label} {r.sqnr_db:.1f} dB" for r in others[:4]))
    fix = f"Keep `{top.name}` in float ({keep_float_code(mode, top.name)})"
    if top.has_outlier:
        fix += (f", or move the outlier's scale into the weights (SmoothQuant: divide input channel {top.outlier_channel} by s and "
                f"multiply that input column of `{top.name}.weight` by s)")
    text = "; ".join(parts) + ". " + fix
    return calibration_blame + ". " + text if calibration_blame else text
