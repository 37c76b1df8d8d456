"""Tolerances follow the output's scale (issue 13): a default atol of 1e-5 on outputs of size 1e-8
would pass an export that is 50% wrong; the comparison core caps it at a fraction of the
reference's RMS, and the fp32-vs-fp64 calibration does the same."""
from __future__ import annotations


import pytest
import torch

from torch_diagnose.compare import Tolerance, atol_fraction, calibrated_tolerances, compare, eps, rms_of, scaled_atol


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("scale", [1.0, 1e-8])
def test_a_half_wrong_output_fails_at_any_scale_and_rounding_passes(scale: float) -> None:
    ref = randn(4, 64, seed=3) * scale
    wrong = ref * 1.5
    leaf = compare(wrong, ref).leaf("output")
    assert not leaf.passed and leaf.frac_outside > 0.99
    assert leaf.atol <= atol_fraction(torch.float32) * rms_of(ref)
    # rounding-level differences: one fp32 ulp per element, and a different summation order
    rounded = ref * (1 + eps(torch.float32) * randn(4, 64, seed=4).clamp(-3, 3))
    assert compare(rounded, ref).passed
    w = randn(64, 64, seed=5) * scale
    x = randn(8, 64, seed=6)
    reordered = (x.unsqueeze(1) * w.unsqueeze(0)).flip(-1).sum(-1)  # the sums of x @ w.T, in another order
    assert not torch.equal(reordered, x @ w.T)
    assert compare(reordered, x @ w.T).passed


def test_a_tiny_output_is_not_waved_through_by_the_fixed_atol() -> None:
    ref = torch.full((3, 10), 1e-8) + 1e-9 * randn(3, 10, seed=7)
    assert compare(torch.zeros_like(ref), ref).passed is False
    assert compare(torch.zeros_like(ref), ref, atol=1e-5).passed  # an explicit atol is the user's word
    assert compare(torch.zeros_like(ref), ref, leaf_tolerances={"output": Tolerance(0.0, 1e-5)}).passed


def test_scaled_atol_never_loosens_and_leaves_zero_references_alone() -> None:
    assert scaled_atol(1e-5, torch.float32, 1e3) == 1e-5
    assert scaled_atol(1e-5, torch.float32, 1e-8) == pytest.approx(1e-13)
    assert scaled_atol(1e-5, torch.float32, 0.0) == 1e-5
    assert compare(torch.full((4,), 1e-6), torch.zeros(4)).passed  # zero reference: assert_close's atol
    assert compare(torch.arange(4), torch.arange(4)).passed


def test_calibrated_tolerances_scale_with_tiny_outputs(mlp_outputs: dict[str, torch.Tensor]) -> None:
    fp32, fp64 = mlp_outputs["fp32"] * 1e-8, mlp_outputs["fp64"] * 1e-8
    tol = calibrated_tolerances(fp32, fp64)["output"]
    assert tol.atol < 1e-12
    assert compare(fp32, fp64.float(), leaf_tolerances={"output": tol}).passed
    assert not compare(fp32 * 1.5, fp64.float(), leaf_tolerances={"output": tol}).passed
