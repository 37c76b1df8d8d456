"""The calibration set for static int8, and whether it explains a bad static result.

The target's `calibration` batches when given, else batches synthesised from the example inputs
(same mean and std, with a warning). Findings name what makes a set poor: synthesised, too few
samples, a constant input, identical batches, a range unlike the example's.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any

import torch

from ..context import Context
from ..precision.hooks import float_leaves
from ..precision.input_stats import InputStats
from ..registry import CheckOptions
from ..results import SkipCheck
from ..tree import map_leaves
from .runtime import QuantMode, rows, to_cpu

SYNTHESISED = ("the calibration inputs were synthesised from the example inputs (random values with their mean and "
               "std): real calibration data matters, give Target(calibration=[...]) a few hundred representative inputs")


@dataclass
class Calibration:
    batches: list[Any]
    source: str  # "target" or "synthesised"
    samples: int
    findings: list[str] = field(default_factory=list)  # reasons the data may be a poor calibration set

    def describe(self) -> str:
        what = "calibration batches from Target.calibration" if self.source == "target" else "calibration batches synthesised from the example inputs"
        return f"{len(self.batches)} {what} ({self.samples} samples)"


def calibration(ctx: Context, opts: CheckOptions, example: Any) -> Calibration:
    target = ctx.target
    if target.calibration is not None:
        def build() -> list[Any]:
            return [to_cpu(b) for b in itertools.islice(iter(target.calibration), max(opts.calibration_batches, 1))]

        batches = ctx.cached("quantization:calibration", build)
        if not batches:
            raise SkipCheck("Target.calibration is empty: give some inputs shaped like the example inputs")
        source = "target"
    else:
        batches = [example] + [synthesise(example, seed=ctx.options.seed + 1 + i) for i in range(max(opts.synthetic_batches, 1) - 1)]
        source = "synthesised"
    cal = Calibration(batches, source, sum(rows(b, ctx.batch_dim) for b in batches))
    cal.findings = _findings(cal, example, opts)
    return cal


def synthesise(example: Any, *, seed: int) -> Any:
    """Random values with each floating input's mean and std (integer inputs, ids and masks, kept)."""
    gen = torch.Generator().manual_seed(seed)

    def make(t: Any) -> Any:
        if isinstance(t, torch.Tensor) and t.is_floating_point() and t.numel() > 1:
            mean, std = float(t.float().mean()), float(t.float().std())
            return (mean + std * torch.randn(t.shape, generator=gen)).to(t.dtype)
        return t

    return map_leaves(example, make)


def _spread(t: torch.Tensor) -> tuple[float, float, float]:
    """(min, max, std) of a tensor's values."""
    return float(t.min()), float(t.max()), float(t.std()) if t.numel() > 1 else 0.0


def _input_findings(name: str, parts: list[torch.Tensor], ex: torch.Tensor) -> list[str]:
    """What is wrong with one input's calibration values, against the example's."""
    lo, hi, std = _spread(torch.cat([p.detach().float().reshape(-1) for p in parts]))
    ex_lo, ex_hi, ex_std = _spread(ex.detach().float())
    if std == 0 or hi == lo:
        return [f"calibration input `{name}` is constant ({lo:.3g} everywhere): observers see no range"]
    found = []
    if len(parts) > 1 and all(torch.equal(parts[0], p) for p in parts[1:]):
        found.append(f"all {len(parts)} calibration batches of `{name}` are identical")
    span, ex_span = hi - lo, ex_hi - ex_lo
    if ex_span > 0 and (span / ex_span > 4 or span / ex_span < 0.25 or ex_std > 0 and not 0.25 < std / ex_std < 4):
        found.append(f"calibration input `{name}` spans [{lo:.3g}, {hi:.3g}] (std {std:.3g}), unlike the example inputs' "
                     f"[{ex_lo:.3g}, {ex_hi:.3g}] (std {ex_std:.3g}): calibrate on inputs preprocessed like serving inputs")
    return found


def _findings(cal: Calibration, example: Any, opts: CheckOptions) -> list[str]:
    findings: list[str] = []
    if cal.source == "synthesised":
        findings.append(SYNTHESISED)
    if cal.samples < opts.min_calibration_samples:
        findings.append(f"only {cal.samples} calibration samples (fewer than {opts.min_calibration_samples}): activation ranges "
                        f"from so few are noisy; use a few hundred representative inputs")
    batch_leaves = [float_leaves(b, root="x") for b in cal.batches]
    for name, ex in float_leaves(example, root="x").items():
        parts = [p for p in (leaves.get(name) for leaves in batch_leaves) if isinstance(p, torch.Tensor)]
        if parts:
            findings += _input_findings(name, parts, ex)
    return findings


def _range_mismatches(cal_stats: dict[str, InputStats], ex_stats: dict[str, InputStats]) -> list[str]:
    """Layers whose calibrated input range is far from the example's, the farthest first."""
    found = []
    for name, cs in cal_stats.items():
        es = ex_stats.get(name)
        if es is None or not (math.isfinite(cs.min) and math.isfinite(es.min)):
            continue
        span = max(cs.max, 0.0) - min(cs.min, 0.0)
        ex_span = max(es.max, 0.0) - min(es.min, 0.0)
        if ex_span <= 0:
            continue
        ratio = span / ex_span
        if ratio < 0.5 or ratio > 8:
            effect = "the example's values are clipped" if ratio < 0.5 else "int8 steps are too coarse for the example's values"
            found.append((abs(math.log(max(ratio, 1e-30))), f"`{cs.name}`'s input was calibrated to [{cs.min:.3g}, {cs.max:.3g}] "
                          f"but reaches [{es.min:.3g}, {es.max:.3g}] on the example ({effect})"))
    found.sort(key=lambda m: -m[0])
    return [text for _, text in found]


def calibration_blame(static: QuantMode | None, dynamic: QuantMode | None, cal: Calibration,
                      cal_stats: dict[str, InputStats], ex_stats: dict[str, InputStats]) -> str | None:
    """Whether poor static results come from the calibration data (said when static is bad)."""
    if static is None or not static.ran or not static.numeric:
        return None
    if dynamic is not None and dynamic.ran:
        if static.sqnr_db >= dynamic.sqnr_db - 10:
            return None
        head = f"static int8 ({static.sqnr_db:.1f} dB) is much worse than dynamic ({dynamic.sqnr_db:.1f} dB)"
    else:
        head = f"static int8 reaches {static.sqnr_db:.1f} dB"
    causes = [f for f in cal.findings if f != SYNTHESISED] + _range_mismatches(cal_stats, ex_stats)[:3]
    if causes:
        return f"{head}; the calibration data is the likely cause: " + "; ".join(causes)
    return (f"{head}; the calibration data is not the likely cause ({cal.describe()}, and every layer's calibrated input range "
            f"matches the example's): the activations themselves do not fit per-tensor int8 (see the per-layer sensitivity)")
