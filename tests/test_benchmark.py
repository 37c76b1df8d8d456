"""benchmark: timing statistics on synthetic clocks, the deployment matrix and its recommendation."""
from __future__ import annotations

import itertools

import pytest
import torch

from torch_diagnose import FAIL, PASS, Target, run_check
from torch_diagnose.context import Context, Variant
from torch_diagnose.options import RunOptions
from torch_diagnose.registry import get_check
from torch_diagnose.runner import run
from torch_diagnose.timing import TimingStats, measure, percentile
from torch_diagnose.checks.benchmark import batch_of, parse_latency_limits, recommend
from tests.models import faulty


def test_percentiles_and_iqr_on_known_samples() -> None:
    stats = TimingStats(samples=[float(i) for i in range(1, 101)])  # 1..100 s
    assert stats.p50 == pytest.approx(50.5)
    assert stats.p90 == pytest.approx(90.1)
    assert stats.p99 == pytest.approx(99.01)
    assert stats.iqr == pytest.approx(49.5)
    summary = stats.summary(batch=4)
    assert summary["throughput_per_s"] == pytest.approx(4 / 50.5)
    assert percentile([], 50) != percentile([], 50)  # NaN for no samples


def test_measure_warms_up_syncs_and_stops_adaptively() -> None:
    """A fake clock where every call takes 10 ms: 0.3 s of measurement means 30 samples."""
    now = itertools.count()
    ticks = {"t": 0.0}

    def clock() -> float:
        return ticks["t"]

    calls = {"fn": 0, "sync": 0}

    def fn() -> None:
        calls["fn"] += 1
        ticks["t"] += 0.010

    def sync() -> None:
        calls["sync"] += 1

    stats = measure(fn, sync=sync, min_time_s=0.3, warmup_s=0.05, clock=clock)
    assert stats.warmup >= 2
    assert stats.n == pytest.approx(30, abs=1)
    assert stats.p50 == pytest.approx(0.010)
    assert calls["sync"] == 2 * calls["fn"]
    del now


def test_recommendation_never_picks_a_failed_variant() -> None:
    rows = [
        {"variant": "eager", "p50_ms": 10.0, "verdict": "reference"},
        {"variant": "onnxruntime", "p50_ms": 2.0, "verdict": "fail"},
        {"variant": "torchscript", "p50_ms": 5.0, "verdict": "pass"},
        {"variant": "int8-dynamic", "p50_ms": 1.0, "verdict": None},
        {"variant": "fp16", "p50_ms": None, "verdict": "pass"},
    ]
    best = recommend(rows)
    assert best["variant"] == "torchscript"
    rows = [{"variant": "eager", "p50_ms": 10.0, "verdict": "reference"}, {"variant": "onnxruntime", "p50_ms": 2.0, "verdict": "error"}]
    assert recommend(rows)["variant"] == "eager"


def test_latency_limits_parse() -> None:
    assert parse_latency_limits("20") == {None: 20.0}
    assert parse_latency_limits("1=5,8=20") == {1: 5.0, 8: 20.0}
    assert parse_latency_limits("") == {}


def test_batch_of_repeats_rows() -> None:
    x = torch.arange(3.0).reshape(3, 1)
    assert batch_of(x, 5).flatten().tolist() == [0.0, 1.0, 2.0, 0.0, 1.0]
    d = {"x": torch.zeros(2, 4), "scale": torch.ones(2, 1)}
    assert batch_of(d, 1)["x"].shape == (1, 4)


def test_benchmark_passes_and_informs_on_a_small_model() -> None:
    result = run_check("benchmark", faulty.small_net(), min_time_s=0.05)
    assert result.status == PASS, result.explain()
    assert result.metrics["b1.p50_ms"] > 0 and result.metrics["b4.p50_ms"] > 0
    assert result.metrics["b4.throughput_per_s"] > 0
    assert result.details["plot"][0]["x"] == [1, 4]


def test_latency_gate_fails_when_exceeded() -> None:
    result = run_check("benchmark", faulty.small_net(), min_time_s=0.05, max_latency_ms="1=0.000001")
    assert result.status == FAIL
    assert result.culprit_label == "batch 1"
    assert "p50" in result.summary


def test_matrix_reuses_published_variants_and_recommends_only_passing_ones() -> None:
    model, x = faulty.small_net()
    ctx = Context(Target(model, x), RunOptions())
    scripted = torch.jit.trace(ctx.model, ctx.inputs)
    calls = {"broken": 0}

    def broken(inputs):
        calls["broken"] += 1
        return ctx.model(inputs) + 1.0  # wrong numbers: its check failed it

    ctx.add_variant(Variant("torchscript", lambda i: scripted(i), source_check="torchscript", verdict="pass", size_bytes=1000))
    ctx.add_variant(Variant("onnxruntime", broken, source_check="onnx", verdict="fail"))
    report = run(ctx.target, RunOptions(option={"benchmark": {"min_time_s": "0.05"}}), checks=[get_check("benchmark")], context=ctx)
    result = report.result("benchmark")
    rows = {r["variant"]: r for r in result.details["matrix"]}
    assert set(rows) == {"eager", "torchscript", "onnxruntime"}
    assert rows["onnxruntime"]["max_error"] == pytest.approx(1.0, rel=1e-5)
    assert rows["onnxruntime"]["recommended"] is False
    assert result.metrics["recommended_variant"] in ("eager", "torchscript")
    assert calls["broken"] >= 1


def test_reports_carry_the_matrix_and_the_plots(tmp_path) -> None:
    from torch_diagnose.report import file_reporters

    model, x = faulty.small_net()
    ctx = Context(Target(model, x), RunOptions())
    scripted = torch.jit.trace(ctx.model, ctx.inputs)
    ctx.add_variant(Variant("torchscript", lambda i: scripted(i), source_check="torchscript", verdict="pass"))
    options = RunOptions(report_dir=str(tmp_path), format=["md", "html"], option={"benchmark": {"min_time_s": "0.05"}})
    run(ctx.target, options, checks=[get_check("benchmark")], context=ctx, reporters=file_reporters(options))
    md = (tmp_path / "diagnose.md").read_text()
    assert "Deployment matrix" in md and "| torchscript |" in md and "⭐ yes" in md
    html = (tmp_path / "diagnose.html").read_text()
    pytest.importorskip("matplotlib")
    assert html.count("data:image/png;base64,") >= 2  # latency vs batch size, latency per variant
