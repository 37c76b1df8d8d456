"""quantization: int8 dynamic and static against fp32; outlier channels fail naming the layer."""
from __future__ import annotations

import warnings

import pytest
import torch
import torchvision
from torch import nn

from torch_diagnose import ERROR, FAIL, PASS, SKIP, WARN, Target
from torch_diagnose.context import Context
from torch_diagnose.errors import UsageError
from torch_diagnose.options import RunOptions
from torch_diagnose.results import CheckResult
from torch_diagnose.runner import run_one
from torch_diagnose.target import coerce_target
from tests.models import precision as pm

#: The check named by the user: every mode in `modes` runs (a default run follows quant/defaults.py).
NAMED = RunOptions(checks=["quantization"])


def quant(target, **options) -> CheckResult:
    """`quantization` as a user who named it runs it (`--checks quantization`)."""
    return run_one("quantization", coerce_target(target, source="<test>"), NAMED, **options)


def test_outlier_channel_fails_naming_the_layer_that_reads_it() -> None:
    result = quant(pm.outlier_mlp())
    assert result.status == FAIL, result.explain()
    assert result.culprit_label == "fc2 (Linear)"
    assert result.culprit.kind == "module" and result.location.startswith("tests/models/precision.py:")
    assert "channel 7" in result.hint and "act (ReLU)" in result.hint and "float" in result.hint
    assert result.metrics["dynamic.sqnr_db"] < 10 and result.metrics["static.sqnr_db"] < 10
    ranked = result.details["sensitivity"]["static"]
    assert ranked[0]["layer"] == "fc2 (Linear)" and ranked[0]["outlier_ratio"] > 1e3
    assert ranked[-1]["sqnr_db"] > 30  # fc1 alone costs little in static int8 (per-channel weights)
    assert result.details["plot"][0]["kind"] == "barh"


def test_outlier_channel_in_a_convnet_fails_static_only() -> None:
    result = quant(pm.outlier_convnet())
    assert result.status == FAIL, result.explain()
    assert result.culprit_label == "conv2 (Conv2d)"
    assert result.metrics["dynamic.status"] == PASS and result.metrics["static.status"] == FAIL
    assert "channel 3" in result.hint
    # static is much worse than dynamic, and the check says the calibration data is not why
    assert "much worse than dynamic" in result.summary and "not the likely cause" in result.summary


def test_fx_flow_tries_keeping_the_culprit_in_float() -> None:
    result = quant(pm.outlier_mlp(), static_flow="fx")
    assert result.status == FAIL
    assert result.metrics["static.flow"] == "fx"
    assert result.culprit_label == "fc2 (Linear)"
    assert any(k.startswith("sqnr_db_with_fc2_in_float") for k in result.metrics)


@pytest.mark.parametrize("factory", [pm.mlp, pm.gru_classifier, pm.tiny_convnet, pm.padded_encoder])
def test_clean_models_pass_or_warn_with_reasons(factory) -> None:
    result = quant(factory())
    assert result.status in (PASS, WARN), result.explain()
    assert result.metrics.get("dynamic.sqnr_db", 99) > 20 and result.metrics["static.sqnr_db"] > 20
    if result.status == WARN:
        assert result.hint and "calibration" in result.hint  # synthesised calibration data is the reason


def test_clean_resnet18() -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    # latency is exercised on the small models; here it would only time a busy CI machine
    result = quant(Target(model, torch.randn(2, 3, 64, 64)), latency=False, synthetic_batches=4)
    assert result.status in (PASS, WARN), result.explain()
    assert result.metrics["static.flow"] == "pt2e"
    assert result.metrics["static.sqnr_db"] > 20 and result.metrics["dynamic.sqnr_db"] > 20
    assert result.metrics["static.size_bytes"] < result.metrics["size_fp32_bytes"] / 3
    assert "latency_fp32_ms" not in result.metrics


def test_constant_calibration_data_is_blamed() -> None:
    model, x = pm.mlp()
    result = quant(Target(model, x, calibration=[torch.zeros(16, 32)] * 4))
    assert result.status == FAIL, result.explain()
    assert result.metrics["dynamic.status"] == PASS and result.metrics["static.status"] == FAIL
    assert "calibration data is the likely cause" in result.summary and "constant" in result.summary
    assert result.metrics["calibration_source"] == "target"


def test_real_calibration_and_labels_pass() -> None:
    model, x = pm.mlp()
    gen = torch.Generator().manual_seed(1)
    calibration = [torch.randn(16, 32, generator=gen) for _ in range(4)]
    with torch.no_grad():
        labels = torch.cat([model(c).argmax(-1) for c in calibration]).tolist()
    result = quant(Target(model, x, calibration=calibration, labels=labels))
    assert result.status == PASS, result.explain()
    assert result.metrics["latency_fp32_ms"] > 0 and result.metrics["dynamic.latency_ms"] > 0
    assert result.metrics["accuracy_fp32"] == 1.0
    assert result.metrics["dynamic.accuracy"] >= 0.95 and result.metrics["static.accuracy"] >= 0.95
    assert result.metrics["calibration_samples"] == 64
    assert "KiB" in result.summary and " kB" not in result.summary  # binary units, as everywhere


class Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # data-dependent control flow: neither torch.export nor FX can capture it
            return self.fc(x)
        return self.fc(-x)


def test_model_no_static_flow_can_capture_warns_with_each_flow_error() -> None:
    torch.manual_seed(0)
    result = quant((Branchy().eval(), torch.randn(4, 8)))
    assert result.status == WARN, result.explain()
    assert result.metrics["dynamic.status"] == PASS
    assert "pt2e:" in result.summary and "fx:" in result.summary
    assert "control flow" in result.hint


def test_variants_are_published_and_engine_restored() -> None:
    model, x = pm.mlp()
    engine = torch.backends.quantized.engine
    ctx = Context(Target(model, x), NAMED)
    run_one("quantization", ctx.target, NAMED, context=ctx)
    assert torch.backends.quantized.engine == engine
    for name in ("int8-dynamic", "int8-static"):
        variant = ctx.variants[name]
        assert variant.source_check == "quantization" and variant.size_bytes > 0
        assert variant.run(x).shape == (16, 10)
        assert variant.run(x[:5]).shape == (5, 10)  # the PT2E graph was exported for 16 rows: run in chunks
    assert "PT2E" in ctx.variants["int8-static"].note


def test_conv_only_model_skips_dynamic_only() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).eval()
    result = quant((model, torch.randn(1, 3, 8, 8)), modes=["dynamic"])
    assert result.status == SKIP and "Linear" in result.summary


def test_runs_under_warnings_as_errors_and_validates_options() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = quant(pm.gru_classifier())
    assert result.status != ERROR, result.explain()
    with pytest.raises(UsageError, match="'eager' is not one of auto, pt2e, fx"):
        quant(pm.mlp(), static_flow="eager")
    with pytest.raises(UsageError, match="did you mean 'static'"):
        quant(pm.mlp(), modes="dynamic,statik")
    assert quant(pm.mlp(), modes="Dynamic", latency=False).metrics["dynamic.status"] == PASS  # case does not matter


@pytest.mark.cuda
def test_cuda_run_quantizes_on_cpu_and_says_so() -> None:
    result = run_one("quantization", Target(*pm.outlier_mlp()), options=RunOptions(checks=["quantization"], device="cuda"))
    assert result.status == FAIL, result.explain()
    assert result.culprit_label == "fc2 (Linear)"
    assert "ran on CPU" in result.summary and result.metrics["quantized_device"] == "cpu"
