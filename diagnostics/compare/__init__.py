"""The comparison core: every numeric check compares two outputs through `compare()`.

Per named leaf (see `tree.py`) it reports max abs error, max relative error (with a floor, so
near-zero references do not explode it), error relative to the reference RMS, cosine similarity,
SQNR in dB, the fraction of elements outside (rtol, atol), top-k agreement for logits-like
leaves, NaN/Inf counts, and the smallest (rtol, atol) that would have passed. Non-tensor leaves
are compared for equality (a `torch.device` leaf always matches: it says where, not what).
Default tolerances follow `torch.testing.assert_close`'s per-dtype table, with the default atol
capped at a fraction of the reference leaf's RMS (`scaled_atol`), so tiny outputs are judged at
their own scale. `ratio_rule()` judges a low-precision result against an fp64 reference the way
`torch._dynamo.utils.same(fp64_ref=...)` does: by how its error compares with fp32's own error.

* `tolerance` — per-dtype defaults, `scaled_atol`, `calibrated_tolerances` (from fp32-vs-fp64 error).
* `leaf`      — one leaf's statistics (`compare_leaf`, `LeafComparison`).
* `core`      — `compare()` and `Comparison` over every leaf.
* `ratio`     — `ratio_rule()` against an fp64 reference.
"""
from __future__ import annotations

from .core import Comparison, compare
from .leaf import LeafComparison, compare_leaf
from .ratio import RatioVerdict, ratio_rule, rmse
from .tolerance import (DEFAULT_TOLERANCES, REL_FLOOR, Tolerance, atol_fraction, calibrated_tolerances, default_tolerance, eps,
                        rms_of, scaled_atol)

__all__ = ["Comparison", "compare", "LeafComparison", "compare_leaf", "RatioVerdict", "ratio_rule", "rmse",
           "DEFAULT_TOLERANCES", "REL_FLOOR", "Tolerance", "atol_fraction", "calibrated_tolerances", "default_tolerance", "eps",
           "rms_of", "scaled_atol"]
