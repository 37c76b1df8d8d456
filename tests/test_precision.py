"""fp16 and bf16: judged against fp64 with the ratio rule; faults fail naming the module and line."""
from __future__ import annotations

import math
import warnings

import pytest
import torch
import torchvision

from torch_diagnose import ERROR, FAIL, PASS, WARN, Target, diagnose, run_check
from torch_diagnose.context import Context
from torch_diagnose.errors import UsageError
from torch_diagnose.options import RunOptions
from torch_diagnose.runner import run_one
from tests.models import faulty
from tests.models import precision as pm


@pytest.mark.parametrize("factory", [pm.tiny_convnet, pm.mlp, pm.gru_classifier, faulty.dict_outputs, faulty.non_tensor_outputs])
@pytest.mark.parametrize("check", ["fp16", "bf16"])
def test_clean_models_pass_with_margin(factory, check: str) -> None:
    result = run_check(check, factory())
    assert result.status == PASS, result.explain()
    # the multiplier (4) leaves room: clean models use well under half of their error budget
    assert result.metrics["budget_use"] < 0.5, result.explain()
    assert result.metrics["reference"] == "fp64"
    assert "layers" not in result.details  # the per-layer table is only built on a warning or failure


def test_clean_resnet18_passes_both_dtypes_and_reports_metrics() -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    report = diagnose(Target(model, torch.randn(2, 3, 64, 64)), checks=["fp16", "bf16"])
    for check in ("fp16", "bf16"):
        result = report.result(check)
        assert result.status == PASS, result.explain()
        for key in ("max_abs", "max_rms_rel", "min_cosine", "min_sqnr_db", "top1_agreement", "headroom"):
            assert key in result.metrics, key
        assert result.metrics["budget_use"] < 0.5
    assert report.result("fp16").metrics["headroom"] > 100  # activations of O(10) vs 65504
    assert report.result("fp16").metrics["min_sqnr_db"] > report.result("bf16").metrics["min_sqnr_db"]  # fp16 has 3 more bits


def test_overflowing_layer_fails_fp16_naming_it_and_passes_bf16() -> None:
    result = run_check("fp16", pm.overflow_net())
    assert result.status == FAIL, result.explain()
    assert result.culprit_label == "amp (Linear)"
    assert result.culprit.kind == "module" and result.culprit.is_user_code
    assert result.location and "tests/models/precision.py:" in result.location
    assert "65504" in result.hint and "bf16" in result.hint and "fp32" in result.hint
    assert result.metrics["headroom"] < 1
    rows = {row["name"]: row for row in result.details["layers"]}
    assert rows["amp"]["carried_nonfinite"] and rows["amp"]["headroom"] < 1
    assert not rows["stem"]["carried_nonfinite"]
    plot = result.details["plot"]
    assert plot["kind"] == "line" and plot["logy"] and len(plot["x"]) == len(result.details["layers"])
    assert run_check("bf16", pm.overflow_net()).status == PASS


def test_square_overflowing_inside_a_norm_is_found_by_its_local_error() -> None:
    result = run_check("fp16", pm.rmsnorm_net())
    assert result.status == FAIL, result.explain()
    assert result.culprit_label == "norm (RMSNorm)"
    assert "fp32" in result.hint and "overflowing square" in result.hint
    rows = {row["name"]: row for row in result.details["layers"]}
    assert rows["norm"]["local_rms_rel"] > 0.5 > rows["stem"]["local_rms_rel"]
    assert result.metrics["budget_use"] > 10  # far outside the budget, not marginal
    assert run_check("bf16", pm.rmsnorm_net()).status == PASS


def test_activations_below_the_normal_range_are_named() -> None:
    result = run_check("fp16", pm.underflow_net())
    assert result.status == FAIL, result.explain()
    assert result.culprit_label == "shrink (Scale)"
    assert "smallest normal" in result.hint
    assert result.metrics["budget_use"] > 10


def test_constant_that_does_not_fit_fp16_names_module_and_line() -> None:
    result = run_check("fp16", pm.masked_fill_net())
    assert result.status == FAIL, result.explain()
    assert "cannot run in fp16" in result.summary
    assert result.culprit_label == "attn (MaskedAttention)"
    assert result.location and "tests/models/precision.py:" in result.location
    assert "masked_fill" in result.hint and "torch.finfo(x.dtype).min" in result.hint
    assert result.details["ways"]["cast"]["raised"]["code"].startswith("scores = scores.masked_fill")
    assert result.culprit.code.startswith("scores = scores.masked_fill")
    assert run_check("bf16", pm.masked_fill_net()).status == PASS  # -1e9 fits bf16


def test_hardcoded_fp32_tensor_breaks_the_cast_but_not_autocast() -> None:
    result = run_check("fp16", pm.hardcoded_dtype_net())
    assert result.status == WARN, result.explain()
    assert result.metrics["way"] == "autocast" and result.metrics["cast.ran"] is False
    assert result.culprit_label == "proj (FixedProjection)"
    assert "dtype=x.dtype" in result.hint and "x @ proj" in result.hint
    # the model cannot run in fp64 either (the hard-coded fp32 tensor): judged against fp32 instead
    assert result.metrics["reference"] == "fp32"


def test_transformer_fast_path_under_autocast_warns_and_the_cast_is_judged() -> None:
    result = run_check("fp16", pm.padded_encoder())
    assert result.status == WARN, result.explain()
    assert result.metrics["way"] == "cast" and result.metrics["autocast.ran"] is False
    assert result.culprit_label.startswith("encoder") and "Transformer" in result.culprit_label
    assert "set_fastpath_enabled(False)" in result.hint
    assert result.location and result.location.startswith("torch/nn/modules/transformer.py:")  # torch named briefly
    assert result.metrics["budget_use"] < 0.5


def test_layer_call_sites_name_library_lines_not_the_harness() -> None:
    """A torchvision block is called from torchvision's code: its call site is that library line,
    not the test or runner line that called the model (a user frame outside the model never wins)."""
    from torch_diagnose.precision.ranges import record_ranges

    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    rows = {r.name: r for r in record_ranges(model, torch.randn(1, 3, 32, 32))}
    site = rows["layer1.0.conv1"].call_site
    assert site is not None and site.location.startswith("torchvision/models/resnet.py:"), site
    assert rows["layer1.0.conv1"].culprit.library == "torchvision"
    assert rows[""].call_site is None  # the root is called by the harness


def test_user_tolerance_is_enforced() -> None:
    result = run_one("fp16", Target(*pm.mlp()), options=RunOptions(atol=1e-6, rtol=1e-6))
    assert result.status == FAIL, result.explain()
    assert "tolerance you set" in result.summary


def test_variant_is_published_with_the_way_that_ran() -> None:
    model, x = pm.hardcoded_dtype_net()
    ctx = Context(Target(model, x))
    result = run_one("fp16", ctx.target, context=ctx)
    variant = ctx.variants["fp16"]
    assert variant.verdict == result.status == WARN
    assert "autocast" in variant.note and "cast raised" in variant.note
    out = variant.run(x)
    assert out.shape == (4, 4) and out.dtype == torch.float16
    assert math.isfinite(variant.max_error) and variant.size_bytes > 0

    model, x = pm.padded_encoder()
    ctx = Context(Target(model, x))
    run_one("bf16", ctx.target, context=ctx)
    assert "whole-model cast" in ctx.variants["bf16"].note
    assert ctx.variants["bf16"].run(x).dtype == torch.bfloat16
    assert ctx.has_cached("precision:bf16:cast-model")


def test_runs_under_warnings_as_errors() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = run_check("bf16", pm.padded_encoder())  # nested-tensor fast path warns
    assert result.status != ERROR, result.explain()


def test_nan_in_the_fp32_output_is_judged_on_the_finite_part() -> None:
    result = run_check("fp16", faulty.nan_outputs())
    assert result.status == PASS, result.explain()  # fp16 is no worse than fp32 here; other checks flag the NaN


def test_model_that_raises_everywhere_is_an_error_not_a_crash() -> None:
    result = run_check("fp16", faulty.raising_forward())
    assert result.status == ERROR
    assert "boom" in result.summary


def test_options_are_validated_by_the_registry() -> None:
    with pytest.raises(UsageError, match="option ways: 'jit' is not one of autocast, cast"):
        run_check("fp16", pm.mlp(), ways=["autocast", "jit"])
    with pytest.raises(UsageError, match="did you mean 'autocast'"):  # -o bf16.ways=autocats, before any check runs
        diagnose(Target(*pm.mlp()), checks=["bf16"], option=["bf16.ways=autocats"])
    with pytest.raises(UsageError, match="at least one way"):
        run_check("bf16", pm.mlp(), ways="")
    assert run_check("bf16", pm.mlp(), ways="CAST").metrics["way"] == "cast"  # case does not matter
    only_cast = run_check("fp16", pm.mlp(), ways=["cast"])
    assert only_cast.status == PASS and only_cast.metrics["way"] == "cast" and "autocast.ran" not in only_cast.metrics


@pytest.mark.cuda
def test_fp16_on_cuda_overflow_is_named() -> None:
    result = run_one("fp16", Target(*pm.overflow_net()), options=RunOptions(device="cuda"))
    assert result.status == FAIL, result.explain()
    assert result.culprit_label == "amp (Linear)"
    clean = run_one("fp16", Target(*pm.tiny_convnet()), options=RunOptions(device="cuda"))
    assert clean.status == PASS, clean.explain()


def test_positions_in_bf16_break_the_cast_but_not_autocast() -> None:
    result = run_check("bf16", pm.position_net())
    assert result.status == WARN, result.explain()
    assert result.metrics["way"] == "autocast"
    assert "deploy with autocast" in result.summary
    assert result.culprit_label == "pos (SinusoidalPositions)"
    assert result.details["layers_way"] == "cast"


def test_cancellation_too_noisy_for_bf16_fails_on_the_sqnr_floor() -> None:
    result = run_check("bf16", pm.cancel_net())
    assert result.status == FAIL, result.explain()
    assert result.metrics["budget_use"] < 1  # the ratio rule alone accepts it: fp32 cancels bits too
    assert result.metrics["min_sqnr_db"] < 20 and "too noisy" in result.summary
    assert result.culprit_label == "offset (OffsetCancel)"
    assert "cancels" in result.hint


class _SlowInHalf(torch.nn.Module):
    """fp32 at full speed; the whole-model fp16 cast (and autocast, when `autocast_too`) crawls, as fp16
    kernels do on a CPU without half support."""

    def __init__(self, autocast_too: bool) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(8, 4)
        self.autocast_too = autocast_too

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import time

        if x.dtype == torch.float16 or (self.autocast_too and torch.is_autocast_enabled("cpu")):
            time.sleep(3)
        return self.lin(x)


def test_a_way_past_its_budget_is_stopped_and_said_not_a_timeout() -> None:
    import time

    from torch_diagnose import SKIP, Target

    torch.manual_seed(0)
    start = time.perf_counter()
    both = run_check("fp16", Target(_SlowInHalf(autocast_too=True).eval(), torch.randn(4, 8)), way_budget_s=0.5)
    assert time.perf_counter() - start < 5, "each way is stopped at its budget"
    assert both.status == SKIP and both.summary.startswith("not judged: fp16 ran past its budget every way")
    assert "judge it on the device you deploy to (--device cuda)" in both.summary
    one = run_check("fp16", Target(_SlowInHalf(autocast_too=False).eval(), torch.randn(4, 8)), way_budget_s=0.5)
    assert one.status == PASS, one.explain()
    assert "cast stopped at way_budget_s, not judged" in one.summary and one.details["ways"]["cast"]["stopped"]
