"""The fp64 ratio rule: judge a result by how its error against an fp64 reference compares with
fp32's own error, as `torch._dynamo.utils.same(fp64_ref=...)` does."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from ..tree import flatten



@dataclass
class RatioVerdict:
    """The fp64 ratio rule for one leaf: error of `actual` vs fp64, against fp32's own error."""

    name: str
    passed: bool
    error: float  # RMSE of actual against fp64
    fp32_error: float  # RMSE of fp32 against fp64
    budget: float
    ratio: float  # error / (fp32_error * eps_scale), inf when the fp32 error is 0 and error is not

    def metrics(self) -> dict[str, Any]:
        return {"rmse_vs_fp64": self.error, "fp32_rmse_vs_fp64": self.fp32_error, "budget": self.budget, "ratio": self.ratio}


def rmse(a: torch.Tensor, b: torch.Tensor) -> float:
    d = a.detach().cpu().double() - b.detach().cpu().double()
    if d.numel() == 0:
        return 0.0
    if not torch.isfinite(d).all():
        return math.inf
    return float(d.pow(2).mean().sqrt())


def ratio_rule(
    actual: Any,
    fp32: Any,
    fp64: Any,
    *,
    multiplier: float = 2.0,
    eps_scale: float = 1.0,
    abs_floor: float | None = None,
) -> list[RatioVerdict]:
    """Judge `actual` by how its error against `fp64` compares with `fp32`'s error against `fp64`.

    Passes a leaf when `rmse(actual, fp64) <= multiplier * eps_scale * rmse(fp32, fp64) + abs_floor`.
    `eps_scale` is eps(low dtype) / eps(float32) when `actual` ran in a lower precision, so the
    budget grows with the dtype's resolution (torch._dynamo uses multiplier 2 with eps_scale 1 for
    fp32-vs-fp32 checks). `abs_floor` defaults to 1e-4 x the fp64 reference's RMS, so exact
    references (error 0) do not demand exact results.
    """
    fa, f32, f64 = flatten(actual), flatten(fp32), flatten(fp64)
    verdicts = []
    for name, ref in f64.items():
        if not isinstance(ref, torch.Tensor) or not ref.is_floating_point() or name not in fa or name not in f32:
            continue
        act, base = fa[name], f32[name]
        if not isinstance(base, torch.Tensor) or base.shape != ref.shape:
            continue  # no usable fp32 baseline for this leaf: nothing to judge against
        if not isinstance(act, torch.Tensor) or act.shape != ref.shape:
            verdicts.append(RatioVerdict(name, False, math.inf, math.nan, 0.0, math.inf))
            continue
        err = rmse(act, ref)
        err32 = rmse(base, ref)
        ref_rms = float(ref.detach().cpu().double().pow(2).mean().sqrt()) if ref.numel() else 0.0
        floor = 1e-4 * ref_rms if abs_floor is None else abs_floor
        budget = multiplier * eps_scale * err32 + floor
        denom = err32 * eps_scale
        ratio = err / denom if denom > 0 else (0.0 if err == 0 else math.inf)
        # A non-finite error never passes, even when fp32's own error is non-finite (budget inf).
        verdicts.append(RatioVerdict(name, math.isfinite(err) and err <= budget, err, err32, budget, ratio))
    return verdicts
