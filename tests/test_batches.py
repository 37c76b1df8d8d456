"""The one batch policy (issues 13, 14): a list of images is a batch, per-input batch dims, and models
that reject other batch sizes; checked through batch_invariance, cuda_oom and benchmark."""
from __future__ import annotations

import time

import pytest
import torch
from torch import nn

from torch_diagnose import ERROR, PASS, WARN, Target, run_check
from torch_diagnose import inputs as inp
from torch_diagnose.context import Context, Variant
from torch_diagnose.options import RunOptions
from torch_diagnose.registry import get_check
from torch_diagnose.runner import run
from tests.models import faulty
from tests.models.real_models import detection


def _images(n: int) -> list[torch.Tensor]:
    return [torch.full((3, 4, 4), float(i)) for i in range(n)]


def test_a_list_of_images_is_the_batch_never_the_channels() -> None:
    x = (_images(2),)
    assert inp.batch_size(x) == 2
    assert inp.batch_unit(x) == "image"
    grown = inp.resize_batch(x, 5)
    assert [float(t[0, 0, 0]) for t in grown[0]] == [0, 1, 0, 1, 0] and grown[0][0].shape == (3, 4, 4)
    picked = inp.select_batch(x, [1])
    assert len(picked[0]) == 1 and float(picked[0][0][0, 0, 0]) == 1
    joined = inp.concat_batch([picked, x])
    assert len(joined[0]) == 3
    dims, source = inp.find_batch_dims(x)
    assert "a list of 2 images is the batch" in source and dims.listed


def test_lists_of_per_image_dicts_are_joined_along_the_list() -> None:
    out = [{"boxes": torch.zeros(3, 4), "scores": torch.zeros(3)}, {"boxes": torch.zeros(1, 4), "scores": torch.zeros(1)}]
    assert inp.batch_size(out) == 2
    joined = inp.concat_batch([out, out[:1]])
    assert len(joined) == 3 and joined[2]["boxes"].shape == (3, 4)


def test_per_input_batch_dims_leave_unbatched_inputs_unchanged() -> None:
    x = {"x": torch.zeros(5, 2, 8), "mask": torch.ones(5, 5), "lengths": torch.tensor([5, 4])}
    dims = inp.BatchDims(0, {"x": 1, "lengths": 0, "mask": None})
    assert inp.batch_size(x, dims) == 2
    grown = inp.resize_batch(x, 3, dims)
    assert grown["x"].shape == (5, 3, 8) and grown["mask"].shape == (5, 5) and grown["lengths"].tolist() == [5, 4, 5]


def test_target_batch_dims_are_honoured_by_the_checks() -> None:
    class TimeMajor(nn.Module):
        def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            return (x * mask.sum()).sum(0)

    target = Target(TimeMajor(), (torch.randn(5, 3, 4), torch.ones(5, 5)), batch_dims={"x": 1, "mask": None})
    result = run_check("batch_invariance", target)
    assert result.status == PASS, result.explain()
    assert result.metrics["batch_size"] == 3


# ---------------------------------------------------------------------------------------------
# a real detection model (issue 14): one model shared by the three checks


@pytest.fixture(scope="module")
def frcnn() -> Target:
    target = detection()
    target.model.transform.min_size, target.model.transform.max_size = (160,), 160  # 160x160 images stay 160x160
    target.model.roi_heads.detections_per_img = 10
    return target


def test_detection_batch_invariance_compares_per_image_detections(frcnn: Target) -> None:
    result = run_check("batch_invariance", frcnn, permute=False)
    assert result.status in (PASS, WARN), result.explain()  # WARN: random weights give degenerate scores
    assert result.metrics["batch_size"] == 2
    assert "each of 2 images run alone" in result.summary and "a list of 2 images is the batch" in result.summary
    compared = result.details["comparisons"][0]
    assert result.details["output_batch_dims"] == {"output": "the list (one output per sample)"}
    assert compared["comparison"] == "sample 0 alone vs row 0 of the batch"


def test_detection_memory_is_measured_in_images(frcnn: Target) -> None:
    result = run_check("cuda_oom", frcnn)
    assert result.status == PASS, result.explain()
    assert "at batch of 2 images" in result.summary and "per image" in result.summary
    assert [m["batch"] for m in result.details["measurements"]] == [1, 2, 4]


def test_detection_benchmark_reports_images_never_channels(frcnn: Target) -> None:
    result = run_check("benchmark", frcnn, min_time_s=0.01, max_time_s=0.5)
    assert result.status == PASS, result.explain()
    assert "2 images: p50" in result.summary and "1 image: p50" in result.summary
    assert "b3" not in result.summary and "b3.p50_ms" not in result.metrics


# ---------------------------------------------------------------------------------------------
# a model that rejects other batch sizes (issue 13)


class FixedBatch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.view(2, -1))  # REJECTS: batch 2 only


def _fixed() -> Target:
    torch.manual_seed(0)
    return Target(FixedBatch().eval(), torch.randn(2, 4, 4))


def test_cuda_oom_measures_the_batch_a_fixed_batch_model_accepts() -> None:
    result = run_check("cuda_oom", _fixed())
    assert result.status == PASS, result.explain()
    assert "the model rejects batch 1, 4:" in result.summary and "only batch 2 measured" in result.summary
    assert "test_batches.py:" in result.summary and "x.view(2, -1)" in result.summary
    assert result.metrics["bytes_per_sample"] is None
    with_budget = run_check("cuda_oom", _fixed(), memory_budget="1GB")
    assert with_budget.status == PASS and "larger batches could not be measured" in with_budget.summary
    deploy = run_check("cuda_oom", _fixed(), batch_size=4)
    assert deploy.status == WARN and "batch 4 cannot be measured: the model rejects batch" in deploy.summary


def test_benchmark_times_the_batch_a_fixed_batch_model_accepts() -> None:
    result = run_check("benchmark", _fixed(), min_time_s=0.01)
    assert result.status == PASS, result.explain()
    assert "b2 p50" in result.summary and "the model rejects batch 1:" in result.summary
    assert "only batch 2 measured" in result.summary
    assert result.status != ERROR


# ---------------------------------------------------------------------------------------------
# the benchmark is bounded (issue 14)


def test_a_slow_variant_is_listed_not_timed_and_the_benchmark_finishes_quickly() -> None:
    model, x = faulty.small_net()
    ctx = Context(Target(model, x), RunOptions())
    calls = {"slow": 0}

    def slow(inputs):
        calls["slow"] += 1
        time.sleep(0.5)  # ~1000x eager: an emulated fp16 conv
        return ctx.model(inputs)

    ctx.add_variant(Variant("fp16", slow, source_check="fp16_bf16", verdict="pass"))
    start = time.perf_counter()
    options = RunOptions(option={"benchmark": {"min_time_s": "0.05", "max_time_s": "1"}})
    report = run(ctx.target, options, checks=[get_check("benchmark")], context=ctx)
    elapsed = time.perf_counter() - start
    result = report.result("benchmark")
    assert result.status == PASS, result.explain()
    row = {r["variant"]: r for r in result.details["matrix"]}["fp16"]
    assert row["p50_ms"] is None and row["recommended"] is False
    assert "fp16: not timed, " in row["note"] and " ms a call = " in row["note"] and "x eager (no fast fp16 on this CPU)" in row["note"]
    assert "fp16: not timed" in result.summary and result.metrics["not_timed_variants"] == "fp16"
    assert calls["slow"] == 2 and elapsed < 6


def test_measure_caps_the_time_of_slow_calls() -> None:
    from torch_diagnose.timing import measure

    ticks = {"t": 0.0}

    def fn() -> None:
        ticks["t"] += 1.0  # a 1 s call

    stats = measure(fn, min_time_s=0.3, max_time_s=2.5, clock=lambda: ticks["t"])
    assert stats.warmup == 2 and stats.n == 1  # 2 warm-up calls reach the cap: one sample, not 5
