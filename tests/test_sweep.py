"""The shape and value sweep shared by the export checks (no exporter needed here)."""
from __future__ import annotations

import os
import subprocess
import sys

import torch

from torch_diagnose import Target
from torch_diagnose.context import Context
from torch_diagnose.export import repro
from torch_diagnose.export.build import build_sweep
from torch_diagnose.export.cases import fill_values, named_leaves, resize, resize_dim
from torch_diagnose.export.run import evaluate, judge
from torch_diagnose.inputs import call_model
from torch_diagnose.options import RunOptions
from torch_diagnose.text import one_line
from torch_diagnose.tree import map_leaves
from tests.models import export as em


def ctx_for(target, **options) -> Context:
    if isinstance(target, tuple):
        target = Target(*target)
    return Context(target, RunOptions(device="cpu", **options))


def test_image_dims_discovered_channels_stay_static() -> None:
    sweep = build_sweep(ctx_for(em.conv_net()))
    dyn = {g.name: g for g in sweep.dynamic_groups}
    assert set(dyn) == {"batch", "x_dim2", "x_dim3"}
    assert dyn["batch"].required and not dyn["x_dim2"].required
    channel = sweep.group_of("x", 1)
    assert channel is not None and not channel.dynamic and channel.rejected  # conv rejects 2 and 6 channels
    # the example, two cases changing every dim at once, four at grid-changing sizes (half, double,
    # ± the total stride 2), two value sets; one-dim cases kept aside
    kinds = [c.kind for c in sweep.cases]
    assert kinds == ["example"] + ["shape"] * 6 + ["values", "values"]
    together = [c.sizes for c in sweep.cases if c.kind == "shape"]
    assert together[:2] == [{"batch": 3, "x_dim2": 15, "x_dim3": 17}, {"batch": 3, "x_dim2": 17, "x_dim3": 15}]
    assert together[2:] == [{"x_dim2": 8, "x_dim3": 32}, {"x_dim2": 32, "x_dim3": 14}, {"x_dim2": 14, "x_dim3": 18},
                            {"x_dim2": 18, "x_dim3": 8}]
    assert dyn["x_dim2"].grid == [8, 32, 14, 18] and dyn["batch"].grid == []
    assert all(c.inputs.shape[2] != c.inputs.shape[3] for c in sweep.cases if c.kind == "shape")  # H and W part ways
    assert all(size >= 2 for c in sweep.cases for size in c.sizes.values())
    assert {c.sizes["x_dim2"] for c in sweep.group_cases["x_dim2"]} == {15, 17, 8, 32, 14, 18}


def test_shared_sequence_dim_of_keyword_inputs_moves_together() -> None:
    sweep = build_sweep(ctx_for(em.transformer_kwargs()))
    batch = sweep.group("batch")
    assert set(batch.refs) == {("src", 0), ("padding_mask", 0)}
    seq = sweep.group_of("src", 1)
    assert seq is not None and seq.dynamic
    assert set(seq.refs) == {("src", 1), ("padding_mask", 1)}
    assert sweep.group_of("src", 2) is not None and not sweep.group_of("src", 2).dynamic


def test_declared_dims_are_required_and_named() -> None:
    sweep = build_sweep(ctx_for(em.loop_over_seq_declared()))
    seq = sweep.group("seq")
    assert seq.required and seq.why == "declared dynamic" and seq.dynamic
    assert seq.label == "input `x` dim 1 (seq)"


def test_eager_that_rejects_other_batches_names_the_line() -> None:
    sweep = build_sweep(ctx_for(em.baked_batch()))
    batch = sweep.group("batch")
    assert not batch.dynamic and batch.required
    assert batch.rejected_at and batch.rejected_at.endswith(f"export.py:{_line_of(em.BakedBatch, 'reshape(4, -1)')}")


def test_size_one_batch_is_exported_at_two() -> None:
    model, x = em.dict_heads()
    sweep = build_sweep(ctx_for((model, x[:1])))
    assert sweep.export_inputs.shape[0] == 2
    assert any("exported at size 2" in n for n in sweep.notes)
    assert all(c.sizes.get("batch", 2) >= 2 for c in sweep.cases if c.kind == "shape")


def test_integer_inputs_keep_their_values() -> None:
    sweep = build_sweep(ctx_for(em.gru_tagger()))
    assert not any(c.kind == "values" for c in sweep.cases)
    for case in sweep.cases:
        assert case.inputs.dtype == torch.int64 and int(case.inputs.max()) < 50


def test_nested_and_keyword_inputs_are_named_and_resized() -> None:
    inputs = {"a": torch.zeros(2, 3), "b": (torch.ones(2, 5), torch.arange(4))}
    names = ["a", "b"]
    assert list(named_leaves(inputs, names)) == ["a", "b[0]", "b[1]"]
    out = resize(inputs, names, {("b[0]", 1): 7, ("a", 0): 1})
    assert out["a"].shape == (1, 3) and out["b"][0].shape == (2, 7) and torch.equal(out["b"][1], torch.arange(4))
    tiled = resize_dim(torch.arange(3), 0, 7)
    assert tiled.tolist() == [0, 1, 2, 0, 1, 2, 0]


def test_value_sets_have_both_signs_and_scales() -> None:
    x = torch.zeros(3, 4)
    pos = fill_values(x, kind="positive", scale=10.0, seed=1)
    neg = fill_values(x, kind="negative", scale=0.1, seed=2)
    assert (pos >= 0).all() and pos.abs().mean() > 3
    assert (neg <= 0).all() and neg.abs().mean() < 0.3
    ids = torch.arange(6)
    assert torch.equal(fill_values(ids, kind="randn", scale=1.0, seed=0), ids)


def test_correct_artifact_passes_every_case() -> None:
    ctx = ctx_for(em.conv_net())
    sweep = build_sweep(ctx)
    model64 = ctx.model_copy().double()
    # a different summation order (fp64 then cast): differences are rounding noise, not faults
    outcome = evaluate(ctx, sweep, lambda inp: model64(inp.double()).float(), artifact="program")
    assert not outcome.failed, outcome.rows()
    assert {gv.verdict for gv in outcome.groups} == {"dynamic"}


def test_artifact_that_bakes_the_example_batch_is_wrong_and_one_that_rejects_is_static() -> None:
    ctx = ctx_for(em.dict_heads())
    sweep = build_sweep(ctx)
    model = ctx.model
    baked = lambda inp: {k: v[: inp.shape[0]] if inp.shape[0] <= 4 else torch.cat([v, v])[: inp.shape[0]] * 0 + v.mean()
                         for k, v in model(sweep.example).items()}
    out = evaluate(ctx, sweep, baked, artifact="trace")
    batch = next(gv for gv in out.groups if gv.group.name == "batch")
    assert batch.verdict == "wrong" and batch.failed
    assert "traced at 4" in batch.text and "outputs differ by" in batch.text

    def rejecting(inp):
        if inp.shape[0] != 4:
            raise RuntimeError("Got invalid dimensions for input: x")
        return model(inp)

    out = evaluate(ctx, sweep, rejecting, artifact="ONNX model")
    batch = next(gv for gv in out.groups if gv.group.name == "batch")
    assert batch.verdict == "static" and batch.failed  # the batch must stay dynamic
    assert "the ONNX model raises" in batch.text


def test_value_scales_are_judged_against_their_own_fp64_reference() -> None:
    ctx = ctx_for(em.conv_net())
    sweep = build_sweep(ctx)
    case = next(c for c in sweep.cases if c.name.startswith("positive values x10"))
    noisy = map_leaves(case.expected, lambda t: t * (1 + 4 * torch.finfo(torch.float32).eps))
    assert judge(ctx, case, noisy).passed
    wrong = map_leaves(case.expected, lambda t: t + 1e-2 * t.abs().max())
    assert not judge(ctx, case, wrong).passed


def test_one_line_keeps_the_cause_of_exporter_errors() -> None:
    ts = RuntimeError("The following operation failed in the TorchScript interpreter.\nTraceback of TorchScript:\n  ...\nRuntimeError: index 9 is out of bounds")
    assert one_line(ts) == "RuntimeError: index 9 is out of bounds"
    ort = RuntimeError("[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : Got invalid dimensions for input: x for the following indices\n index: 1 Got: 9 Expected: 10")
    assert "index: 1 Got: 9 Expected: 10" in one_line(ort)


def _line_of(cls: type, text: str) -> int:
    import inspect

    lines, start = inspect.getsourcelines(cls)
    return start + next(i for i, line in enumerate(lines) if text in line)


# ---------------------------------------------------------------------------------------------
# Counterexamples


def test_shrink_finds_a_small_failing_input_and_bundle_reproduces(tmp_path) -> None:
    model, x = em.loop_over_seq()
    ctx = ctx_for((model, x))
    sweep = build_sweep(ctx)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, (x,), check_trace=False)
    run = lambda inp: call_model(traced, inp)
    failing = next(c for c in sweep.group_cases["x_dim1"] if c.sizes["x_dim1"] > 10)
    cex = repro.shrink(ctx, sweep, failing, run, max_examples=30, budget_s=30)
    assert cex is not None and cex.shrunk
    assert cex.sizes["x_dim1"] > 10  # shorter sequences make the trace raise, not differ
    assert cex.sizes["batch"] == 2  # shrunk to the smallest batch
    assert cex.max_abs > 1e-3
    path = str(tmp_path / "model.pt")
    traced.save(path)
    folder = repro.write_bundle(str(tmp_path / "bundle"), kind="torchscript", artifact_path=path, inputs=cex.case.inputs,
                                names=sweep.names, expected=cex.case.expected, actual=cex.actual, title="trace vs eager",
                                description=cex.describe(), threshold=cex.max_abs / 2)
    for name in ("model.pt", "inputs.npz", "expected.npz", "repro.py", "info.json"):
        assert os.path.exists(os.path.join(folder, name)), name
    proc = subprocess.run([sys.executable, os.path.join(folder, "repro.py")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "REPRODUCED" in proc.stdout
