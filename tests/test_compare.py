"""The comparison core (diagnostics/compare.py) on crafted tensors with known answers."""
from __future__ import annotations

import copy
import math
import re

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from torch_diagnose.compare import (
    DEFAULT_TOLERANCES,
    Tolerance,
    calibrated_tolerances,
    compare,
    atol_fraction,
    default_tolerance,
    eps,
    ratio_rule,
    rms_of,
)

FP32 = default_tolerance(torch.float32)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=gen(seed), dtype=dtype)


# --- default tolerances ---------------------------------------------------------------------


def test_default_tolerances_match_assert_close() -> None:
    assert DEFAULT_TOLERANCES[torch.float16] == (1e-3, 1e-5)
    assert DEFAULT_TOLERANCES[torch.bfloat16] == (1.6e-2, 1e-5)
    assert DEFAULT_TOLERANCES[torch.float32] == (1.3e-6, 1e-5)
    assert DEFAULT_TOLERANCES[torch.float64] == (1e-7, 1e-7)
    assert default_tolerance(torch.int64) == Tolerance(0.0, 0.0)
    assert default_tolerance(torch.bool) == Tolerance(0.0, 0.0)


# --- identical and close --------------------------------------------------------------------


def test_identical_tensors_pass_with_perfect_metrics() -> None:
    x = randn(4, 10)
    c = compare(x, x.clone())
    leaf = c.leaf("output")
    assert c.passed and leaf.kind == "tensor"
    assert leaf.max_abs == 0.0 and leaf.max_rel == 0.0 and leaf.rms_rel == 0.0
    assert leaf.sqnr_db == math.inf
    assert leaf.cosine == 1.0
    assert leaf.frac_outside == 0.0 and leaf.min_atol == 0.0 and leaf.min_rtol == 0.0
    assert leaf.top1_agreement == 1.0 and leaf.top5_overlap == 1.0
    assert c.describe().startswith("all outputs match")


def test_perturbation_within_fp32_tolerance_passes() -> None:
    x = randn(64)
    # Half of the allowed band, element by element: atol + rtol * |x|.
    y = x + 0.5 * (FP32.atol + FP32.rtol * x.abs()) * torch.sign(randn(64, seed=1))
    leaf = compare(y, x).leaf("output")
    assert leaf.passed and leaf.frac_outside == 0.0
    assert (leaf.rtol, leaf.atol) == (FP32.rtol, FP32.atol)
    assert 0 < leaf.max_abs <= FP32.atol + FP32.rtol * float(x.abs().max())
    assert leaf.cosine == pytest.approx(1.0, abs=1e-9)


def test_one_element_far_off_fails_and_names_index_and_values() -> None:
    x = torch.arange(12, dtype=torch.float32).reshape(3, 4) / 4 + 1
    y = x.clone()
    y[1, 2] = 7.5  # expected 2.5
    leaf = compare(y, x).leaf("output")
    assert not leaf.passed
    assert leaf.worst_index == (1, 2)
    assert leaf.frac_outside == pytest.approx(1 / 12)
    assert leaf.max_abs == pytest.approx(5.0)
    msg = leaf.message
    assert "1 of 12 elements" in msg
    assert "index (1, 2)" in msg
    assert "7.5 vs expected 2.5" in msg
    assert "greatest difference 5" in msg
    # min_atol / min_rtol are exactly the smallest passing values, at the other tolerance unchanged.
    assert leaf.min_atol == pytest.approx(5.0 - FP32.rtol * 2.5, rel=1e-12)
    assert leaf.min_rtol == pytest.approx((5.0 - FP32.atol) / 2.5, rel=1e-12)
    assert compare(y, x, atol=leaf.min_atol).passed
    assert compare(y, x, rtol=leaf.min_rtol).passed
    assert not compare(y, x, atol=leaf.min_atol * (1 - 1e-9)).passed
    assert not compare(y, x, rtol=leaf.min_rtol * (1 - 1e-9)).passed
    # The bounds the message prints are rounded up, so they pass as printed.
    m = re.search(r"atol>=(\S+) or rtol>=(\S+)", msg)
    assert m is not None
    assert compare(y, x, atol=float(m.group(1))).passed
    assert compare(y, x, rtol=float(m.group(2))).passed
    c = compare({"logits": y}, {"logits": x})
    assert c.describe().startswith("`logits`: 1 of 12 elements")


def test_min_tolerances_survive_float_rounding() -> None:
    # Computing atol as diff - rtol*|e| and adding it back can round a hair low; the reported
    # minimum must still pass when fed back, for every one of many random cases.
    g = gen(0)
    for _ in range(200):
        x = torch.randn(50, generator=g)
        y = x + torch.randn(50, generator=g) * 10.0 ** -float(torch.randint(1, 6, (1,), generator=g))
        leaf = compare(y, x).leaf("output")
        assert compare(y, x, atol=leaf.min_atol).passed
        assert compare(y, x, rtol=leaf.min_rtol).passed
        if not leaf.passed:  # and the 3-digit bounds in the message pass as printed
            m = re.search(r"atol>=(\S+) or rtol>=(\S+)", leaf.message)
            assert m is not None
            assert compare(y, x, atol=float(m.group(1))).passed, leaf.message
            assert compare(y, x, rtol=float(m.group(2))).passed, leaf.message


def test_zero_reference_needs_atol_not_rtol() -> None:
    leaf = compare(torch.tensor([0.0, 1.0]), torch.tensor([0.0, 0.0])).leaf("output")
    assert not leaf.passed
    assert leaf.min_rtol == math.inf  # no rtol helps against a zero reference
    assert leaf.min_atol == pytest.approx(1.0)
    assert compare(torch.tensor([0.0, 1.0]), torch.tensor([0.0, 0.0]), atol=leaf.min_atol).passed


# --- non-finite values ----------------------------------------------------------------------


def test_nan_at_same_positions_is_equal_when_equal_nan() -> None:
    x = torch.tensor([1.0, float("nan"), 3.0])
    leaf = compare(x.clone(), x).leaf("output")
    assert leaf.passed and leaf.nan_actual == leaf.nan_expected == 1
    assert leaf.max_abs == 0.0
    nope = compare(x.clone(), x, equal_nan=False).leaf("output")
    assert not nope.passed and nope.worst_index == (1,)


def test_nan_at_different_positions_fails() -> None:
    a = torch.tensor([1.0, float("nan"), 3.0])
    e = torch.tensor([1.0, 2.0, float("nan")])
    leaf = compare(a, e).leaf("output")
    assert not leaf.passed
    assert leaf.frac_outside == pytest.approx(2 / 3)
    assert leaf.max_abs == math.inf and leaf.sqnr_db == -math.inf
    assert leaf.min_atol == math.inf and leaf.min_rtol == math.inf
    assert "NaN" in leaf.message


def test_same_infinity_is_equal_and_inf_vs_finite_fails() -> None:
    inf = float("inf")
    x = torch.tensor([1.0, inf, -inf])
    ok = compare(x.clone(), x).leaf("output")
    assert ok.passed and ok.inf_actual == 2 and ok.max_abs == 0.0
    assert not compare(torch.tensor([1.0, -inf, -inf]), x).passed  # +Inf vs -Inf
    bad = compare(torch.tensor([1.0, inf, 5.0]), x).leaf("output")
    assert not bad.passed and bad.worst_index == (2,)
    assert "5 vs expected -inf" in bad.message
    finite_ref = compare(torch.tensor([inf, 2.0]), torch.tensor([1.0, 2.0])).leaf("output")
    assert not finite_ref.passed and finite_ref.inf_actual == 1
    assert "1 Inf" in finite_ref.message


# --- shapes, dtypes, structure ---------------------------------------------------------------


def test_empty_tensors_pass() -> None:
    leaf = compare(torch.empty(0, 3), torch.empty(0, 3)).leaf("output")
    assert leaf.passed and leaf.numel == 0 and leaf.shape == (0, 3)


def test_integer_and_bool_leaves_are_exact() -> None:
    ids = torch.tensor([3, 1, 4, 1, 5])
    assert compare(ids.clone(), ids).passed
    off = ids.clone()
    off[2] = 5
    leaf = compare(off, ids).leaf("output")
    assert not leaf.passed and (leaf.rtol, leaf.atol) == (0.0, 0.0)
    assert leaf.worst_index == (2,) and "5 vs expected 4" in leaf.message
    mask = torch.tensor([True, False, True])
    assert compare(mask.clone(), mask).passed
    assert not compare(torch.tensor([True, True, True]), mask).passed


def test_large_int64_values_are_compared_exactly() -> None:
    # 2**62 and 2**62 + 1 are the same float64: an int leaf must not go through float64 only.
    a, e = torch.tensor([2**62 + 1]), torch.tensor([2**62])
    leaf = compare(a, e).leaf("output")
    assert not leaf.passed and leaf.max_abs >= 1
    assert f"{2**62 + 1} vs expected {2**62}" in leaf.message


def test_shape_mismatch_is_reported_not_raised() -> None:
    c = compare(torch.zeros(2, 3), torch.zeros(3, 2))
    leaf = c.leaf("output")
    assert not c.passed and leaf.kind == "mismatch"
    assert "(2, 3)" in leaf.message and "(3, 2)" in leaf.message


def test_check_dtype() -> None:
    x = randn(3)
    assert compare(x.double(), x).passed
    leaf = compare(x.double(), x, check_dtype=True).leaf("output")
    assert not leaf.passed and "dtype" in leaf.message


def test_missing_and_extra_dict_keys() -> None:
    x = randn(2)
    c = compare({"a": x, "extra": x}, {"a": x, "b": x})
    kinds = {leaf.name: leaf.kind for leaf in c.leaves}
    assert kinds == {"a": "tensor", "b": "missing", "extra": "extra"}
    assert not c.passed
    assert "`b`: missing" in c.describe() and "`extra`: present in the actual" in c.describe()


def test_nested_outputs_with_non_tensor_leaves() -> None:
    x, y = randn(2, 3), randn(4, seed=1)
    expected = {"det": (x, {"label": "cat", "count": 2, "extra": None}), "scores": [y, 0.5]}
    same = compare(copy.deepcopy(expected), expected)
    assert same.passed
    assert {leaf.name: leaf.kind for leaf in same.leaves} == {
        "det[0]": "tensor", "det[1].label": "value", "det[1].count": "value",
        "det[1].extra": "value", "scores[0]": "tensor", "scores[1]": "value",
    }
    changed = copy.deepcopy(expected)
    changed["det"][1]["label"] = "dog"
    changed["det"][1]["extra"] = 0
    c = compare(changed, expected)
    assert not c.passed
    assert c.leaf("det[1].label").message == "values differ: 'dog' vs 'cat'"
    assert not c.leaf("det[1].extra").passed
    assert c.leaf("det[0]").passed and c.leaf("scores[0]").passed
    typed = compare({"t": 1.0}, {"t": torch.tensor(1.0)}).leaf("t")
    assert typed.kind == "mismatch" and "float vs Tensor" in typed.message


def test_nan_python_floats_follow_equal_nan() -> None:
    assert compare(float("nan"), float("nan")).passed
    assert not compare(float("nan"), float("nan"), equal_nan=False).passed


def test_fp16_against_fp32_uses_fp16_tolerance() -> None:
    x = randn(256)
    leaf = compare(x.half(), x).leaf("output")
    assert (leaf.rtol, leaf.atol) == DEFAULT_TOLERANCES[torch.float16]
    assert leaf.passed  # rounding to fp16 is within fp16's own tolerance
    assert not compare(x.half().float(), x).passed  # but far outside fp32's
    bf = compare(x.bfloat16(), x).leaf("output")
    assert (bf.rtol, bf.atol) == DEFAULT_TOLERANCES[torch.bfloat16] and bf.passed


def test_explicit_and_per_leaf_tolerances() -> None:
    x = randn(8)
    y = x + 1e-3
    assert not compare({"a": y, "b": y}, {"a": x, "b": x}).passed
    assert compare({"a": y, "b": y}, {"a": x, "b": x}, atol=2e-3).passed
    c = compare({"a": y, "b": y}, {"a": x, "b": x}, leaf_tolerances={"a": Tolerance(0.0, 2e-3)})
    assert c.leaf("a").passed and (c.leaf("a").rtol, c.leaf("a").atol) == (0.0, 2e-3)
    assert not c.leaf("b").passed and (c.leaf("b").rtol, c.leaf("b").atol) == (FP32.rtol, FP32.atol)
    # A per-leaf tolerance wins over the global one.
    c = compare({"a": y}, {"a": x}, atol=1.0, leaf_tolerances={"a": Tolerance(0.0, 1e-6)})
    assert not c.passed


# --- statistics -----------------------------------------------------------------------------


def test_top1_agreement_on_logits() -> None:
    logits = torch.arange(10.0).repeat(4, 1)  # every row: class 9 wins, top-5 is {5..9}
    flipped = logits.clone()
    flipped[0, 0] = 100.0  # row 0: class 0 wins, top-5 becomes {0, 6, 7, 8, 9}
    leaf = compare(flipped, logits).leaf("output")
    assert leaf.top1_agreement == pytest.approx(0.75)
    assert leaf.top5_overlap == pytest.approx((4 / 5 + 3) / 4)
    assert compare(flipped, logits).metrics()["top1_agreement"] == pytest.approx(0.75)


def test_top1_is_not_computed_over_a_batch_of_scalars() -> None:
    scores = randn(8)  # one score per sample: an argmax over the batch means nothing
    assert compare(scores + 1.0, scores).leaf("output").top1_agreement is None


def test_sqnr_of_known_noise() -> None:
    signal = randn(20_000)  # variance ~1
    noise = 0.1 * randn(20_000, seed=1)  # variance ~0.01 -> 20 dB
    leaf = compare(signal + noise, signal).leaf("output")
    assert leaf.sqnr_db == pytest.approx(20.0, abs=0.5)
    assert leaf.rms_rel == pytest.approx(0.1, rel=0.05)
    assert leaf.cosine == pytest.approx(1 / math.sqrt(1.01), abs=1e-3)


def test_complex_leaves_are_judged_per_element() -> None:
    x = torch.tensor([1 + 1j, 2 + 2j, 3 + 0j])
    assert compare(x.clone(), x).passed
    y = x.clone()
    y[0] = 4 + 5j  # both parts off: |(4+5j) - (1+1j)| = 5
    leaf = compare(y, x).leaf("output")
    assert not leaf.passed
    assert leaf.frac_outside == pytest.approx(1 / 3)  # 1 of 3 complex elements, not 2 of 6 parts
    assert leaf.worst_index == (0,) and leaf.max_abs == pytest.approx(5.0)
    assert "(4+5j vs expected 1+1j)" in leaf.message
    assert leaf.cosine < 1.0 and leaf.top1_agreement is None


def test_comparison_summary_metrics() -> None:
    x = randn(4, 3)
    c = compare({"a": x + 0.01, "b": x}, {"a": x, "b": x})
    m = c.metrics("eq.")
    assert m["eq.max_abs"] == pytest.approx(0.01, rel=1e-3)
    assert m["eq.b.sqnr_db"] == math.inf and "eq.a.cosine" in m
    assert c.worst is not None and c.worst.name == "a"
    assert c.min_sqnr_db == c.leaf("a").sqnr_db


# --- fp64 ratio rule and calibration ---------------------------------------------------------


def test_ratio_rule_passes_fp16_rounding_and_fails_gross_error(mlp_outputs: dict[str, torch.Tensor]) -> None:
    fp32, fp64 = mlp_outputs["fp32"], mlp_outputs["fp64"]
    scale = eps(torch.float16) / eps(torch.float32)
    assert scale == 2.0**13
    (good,) = ratio_rule(fp32.half().float(), fp32, fp64, eps_scale=scale)
    assert good.passed and good.error <= good.budget
    assert good.fp32_error > 0 and good.ratio < 1.0
    (strict,) = ratio_rule(fp32.half().float(), fp32, fp64)  # judged as if it were fp32
    assert not strict.passed
    (bad,) = ratio_rule(fp32 + 0.1 * randn(*fp32.shape, seed=2), fp32, fp64, eps_scale=scale)
    assert not bad.passed and bad.ratio > 10
    (same,) = ratio_rule(fp32, fp32, fp64)
    assert same.passed and same.ratio == pytest.approx(1.0)


def test_ratio_rule_never_passes_nan(mlp_outputs: dict[str, torch.Tensor]) -> None:
    fp32, fp64 = mlp_outputs["fp32"], mlp_outputs["fp64"]
    broken32 = fp32.clone()
    broken32[0, 0] = float("nan")
    broken = fp32.clone()
    broken[1, 1] = float("nan")
    (v,) = ratio_rule(broken, broken32, fp64)  # fp32's own error is inf: the budget is inf
    assert not v.passed
    (mismatch,) = ratio_rule(fp32[:1], fp32, fp64)
    assert not mismatch.passed


def test_calibrated_tolerances_are_at_least_fp32_defaults_at_the_outputs_scale(mlp_outputs: dict[str, torch.Tensor]) -> None:
    fp32, fp64 = mlp_outputs["fp32"], mlp_outputs["fp64"]
    tols = calibrated_tolerances({"y": fp32, "ids": torch.arange(3)}, {"y": fp64, "ids": torch.arange(3)})
    assert list(tols) == ["y"]  # integer leaves keep exact comparison
    tol = tols["y"]
    assert tol.rtol >= FP32.rtol and tol.atol >= min(FP32.atol, atol_fraction(torch.float32) * rms_of(fp64))
    max_err = float((fp32.double() - fp64).abs().max())
    assert tol.atol >= 8 * max_err
    assert compare(fp32, fp64.float(), leaf_tolerances={"output": tol}).passed


# --- properties -----------------------------------------------------------------------------

finite_f32 = hnp.arrays(
    np.float32,
    hnp.array_shapes(min_dims=1, max_dims=3, max_side=6),
    elements=st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False, width=32),
)


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(finite_f32)
def test_property_compare_with_itself_passes(arr: np.ndarray) -> None:
    x = torch.from_numpy(arr)
    leaf = compare(x.clone(), x).leaf("output")
    assert leaf.passed and leaf.max_abs == 0.0 and leaf.sqnr_db == math.inf and leaf.cosine == 1.0


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(st.data())
def test_property_min_tolerances_make_it_pass(data: st.DataObject) -> None:
    expected = data.draw(finite_f32)
    actual = data.draw(hnp.arrays(np.float32, expected.shape, elements=st.floats(-1e6, 1e6, width=32)))
    a, e = torch.from_numpy(actual), torch.from_numpy(expected)
    leaf = compare(a, e).leaf("output")
    assert compare(a, e, atol=leaf.min_atol).passed
    if math.isfinite(leaf.min_rtol):
        assert compare(a, e, rtol=leaf.min_rtol).passed
    if leaf.min_atol > 0:
        assert not compare(a, e, atol=leaf.min_atol * (1 - 1e-9)).passed
