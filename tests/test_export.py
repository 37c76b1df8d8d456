"""Export family: torchscript, torch_export, onnx and torch_compile against eager, away from the example.

Faulty models must fail in the checks where they break, naming the dimension or line; clean
models must pass. Each test runs one check on a tiny model; resnet18 runs once, at 64x64.
"""
from __future__ import annotations

import inspect
import os
import sys
from typing import Dict, List

import pytest
import torch
import torchvision

from torch_diagnose import FAIL, PASS, SKIP, WARN, Target
from torch_diagnose.context import Context
from torch_diagnose.options import RunOptions
from torch_diagnose.registry import select_checks
from torch_diagnose.runner import run, run_one
from tests.models import export as em
from tests.models import faulty


def check(check_id: str, target, tmp_path=None, **opts):
    if isinstance(target, tuple):
        target = Target(*target)
    import tempfile

    options = RunOptions(device="cpu", report_dir=str(tmp_path) if tmp_path else tempfile.mkdtemp(prefix="export-test-"))
    return run_one(check_id, target, options, **opts)


def line_of(cls: type, text: str) -> str:
    lines, start = inspect.getsourcelines(cls)
    return f"export.py:{start + next(i for i, line in enumerate(lines) if text in line)}"


# ---------------------------------------------------------------------------------------------
# torchscript


def test_trace_freezing_a_data_dependent_branch_fails_with_the_line_and_a_repro(tmp_path) -> None:
    r = check("torchscript", em.data_dependent_if(), tmp_path)
    assert r.status == FAIL, r.explain()
    assert r.culprit_label == "<root> (DataDependentIf)"
    assert r.culprit.kind == "module" and r.culprit.code == "if x.sum() > 0:"  # the module, at the line
    assert r.location.endswith(line_of(em.DataDependentIf, "if x.sum() > 0:"))
    assert "negative values" in r.summary or "fresh values" in r.summary
    assert "data-dependent branch" in r.hint and "if x.sum() > 0:" in r.hint
    assert "torch.jit.script matches eager" in r.hint  # script keeps the branch
    assert "deprecated" in r.hint and "torch.export" in r.hint
    assert r.metrics["tracer_warnings"] == 1
    bundle = tmp_path / "repro" / "torchscript"
    assert {"inputs.npz", "expected.npz", "repro.py", "model.torchscript.pt"} <= set(os.listdir(bundle))
    assert "counterexample" in r.details


def test_trace_unrolling_a_loop_over_a_declared_dimension_fails_naming_dim_and_sizes() -> None:
    r = check("torchscript", em.loop_over_seq_declared(), repro=False)
    assert r.status == FAIL, r.explain()
    assert r.culprit_label == "input `x` dim 1 (seq)"
    assert "traced at 10" in r.summary and "outputs differ by" in r.summary and "the trace raises" in r.summary
    assert r.location.endswith(line_of(em.LoopOverSeq, "for i in range(x.size(1)):"))
    assert "unrolled" in r.hint


def test_trace_unrolling_a_loop_over_an_optional_dimension_only_warns() -> None:
    """Issue 13: a dim the user never declared dynamic is optional: wrong numbers there warn, with the fix."""
    r = check("torchscript", em.loop_over_seq(), repro=False)
    assert r.status == WARN, r.explain()
    assert r.culprit_label == "input `x` dim 1"
    assert "outputs differ by" in r.summary and "optional dimension" in r.summary
    assert "static" in r.summary and "dynamic_dims" in r.summary and "x:1=NAME" in r.summary


def test_trace_baking_a_size_with_int_fails_on_the_batch_dim() -> None:
    r = check("torchscript", em.int_size(), repro=False)
    assert r.status == FAIL, r.explain()
    assert r.culprit_label == "input `x` dim 0 (batch)"
    assert "batch dimension" in r.summary
    assert "int(x.shape[0])" in r.hint and "Python number" in r.hint


def test_trace_of_a_numpy_round_trip_fails_naming_numpy() -> None:
    r = check("torchscript", em.numpy_round_trip(), repro=False)
    assert r.status == FAIL, r.explain()
    assert r.culprit_label == "<root> (NumpyRoundTrip)"
    assert "NumPy" in r.hint and r.location.endswith(line_of(em.NumpyRoundTrip, "np.tanh"))


def test_untraceable_outputs_are_a_failure_not_an_error() -> None:
    r = check("torchscript", faulty.non_tensor_outputs(), script=False)  # with script, a warning naming that route
    assert r.status == FAIL, r.explain()
    assert "non-tensor outputs" in r.summary and "`[1]` (str)" in r.summary
    assert r.metrics["export_failed"] is True


# ---------------------------------------------------------------------------------------------
# torch.export


def test_export_of_data_dependent_branch_fails_in_plain_words() -> None:
    r = check("torch_export", em.data_dependent_if())
    assert r.status == FAIL, r.explain()
    assert "tensor's value" in r.summary and "if x.sum() > 0:" in r.summary
    assert r.location.endswith(line_of(em.DataDependentIf, "if x.sum() > 0:"))
    assert r.culprit_label == "<root> (DataDependentIf)"
    assert "torch.cond" in r.hint or "torch.where" in r.hint
    assert r.metrics["failure_kind"] == "data-dependent"


def test_export_keeping_an_undeclared_dim_static_warns_with_the_pinning_line() -> None:
    r = check("torch_export", em.loop_over_seq())
    assert r.status == WARN, r.explain()
    assert r.culprit_label == "input `x` dim 1" and r.culprit.kind == "input"
    assert r.location.endswith(line_of(em.LoopOverSeq, "for i in range(x.size(1)):"))
    assert "kept static" in r.summary and "exported at 10" in r.summary
    assert r.metrics["kept_static"] == "x_dim1" and r.metrics["dynamic_ok"] == "batch"


def test_export_of_a_declared_dynamic_dim_that_the_code_pins_fails() -> None:
    r = check("torch_export", em.loop_over_seq_declared(), repro=False)
    assert r.status == FAIL, r.explain()
    assert r.culprit_label == "input `x` dim 1 (seq)"
    assert "declared dynamic" in r.summary
    assert "range(x.size(1))" in r.hint


def test_export_with_batch_baked_in_fails_at_the_reshape() -> None:
    r = check("torch_export", em.baked_batch())
    assert r.status == FAIL, r.explain()
    assert r.culprit_label == "input `x` dim 0 (batch)"
    assert r.location.endswith(line_of(em.BakedBatch, "reshape(4, -1)"))
    assert "reshape(x.shape[0], -1)" in r.hint


def test_export_of_int_size_fails_naming_the_line() -> None:
    r = check("torch_export", em.int_size(), repro=False)
    assert r.status == FAIL, r.explain()
    assert r.culprit_label == "input `x` dim 0 (batch)"
    assert r.location.endswith(line_of(em.IntSize, "int(x.shape[0])"))


def test_numpy_round_trip_exports_through_dynamo() -> None:
    r = check("torch_export", em.numpy_round_trip())
    assert r.status == PASS, r.explain()
    assert r.metrics["strict"] is True and "strict=True" in r.hint


def test_gru_sequence_length_kept_static_is_a_warning_naming_the_gru() -> None:
    r = check("torch_export", em.gru_tagger())
    assert r.status == WARN, r.explain()
    assert r.culprit_label == "input `tokens` dim 1"
    assert "gru (GRU)" in r.hint and "sequence length" in r.hint
    assert r.metrics["dynamic_ok"] == "batch"


# ---------------------------------------------------------------------------------------------
# ONNX


def test_onnx_names_the_first_diverging_operator_with_its_source_line(tmp_path) -> None:
    r = check("onnx", em.topk_ties(), tmp_path)
    assert r.status == FAIL, r.explain()
    assert r.culprit_label.startswith("node_topk") and "(TopK)" in r.culprit_label
    assert r.location.endswith(line_of(em.TopKTies, "topk(3"))
    assert "first diverging ONNX operator" in r.summary
    assert "tie" in r.hint
    bundle = tmp_path / "repro" / "onnx"
    assert {"model.onnx", "inputs.npz", "expected.npz", "repro.py"} <= set(os.listdir(bundle))
    table = r.details["divergence_table"]
    assert any(row["op"] == "Round" and not row["differs"] for row in table)  # the TopK input agrees


def test_onnx_silently_static_batch_fails() -> None:
    r = check("onnx", em.baked_batch())
    assert r.status == FAIL, r.explain()
    assert any("the ONNX graph fixes input `x` dim 0 at 4" in str(row) for row in [r.summary, r.details])
    assert r.metrics["static_graph_inputs"] == "batch"
    assert r.details["onnx_input_dims"]["x"][0] == 4


def test_onnx_of_declared_seq_pinned_by_a_loop_fails() -> None:
    r = check("onnx", em.loop_over_seq_declared(), repro=False)
    assert r.status == FAIL, r.explain()
    assert r.culprit_label == "input `x` dim 1 (seq)"
    assert "Got invalid dimensions" in r.summary
    plot = r.details["plot"]  # the JSON's plot is the whole sweep: raised cases are None with their message
    assert plot["x"] == [c["case"] for c in r.details["cases"]] and "raised" in plot["status"]
    raised = plot["status"].index("raised")
    assert plot["series"]["max |artifact - eager|"][raised] is None and plot["messages"][raised]
    assert all(v is None or v >= 0 for v in plot["series"]["max |artifact - eager|"])


def test_onnx_export_failure_is_a_finding_with_the_line() -> None:
    r = check("onnx", em.data_dependent_if())
    assert r.status == FAIL, r.explain()
    assert r.location.endswith(line_of(em.DataDependentIf, "if x.sum() > 0:"))
    assert r.culprit_label == "<root> (DataDependentIf)"  # the module whose forward the exporter stopped in
    assert "the dynamo exporter (torch.onnx.export's default) fails" in r.summary and "torch.where" in r.hint
    assert r.metrics["exporter"] == "legacy (dynamo=False)"  # the legacy exporter's model is judged: it freezes the branch
    assert "differs from eager" in r.summary and "negative values" in r.summary


def test_onnx_adaptive_pooling_wrong_at_other_grids_warns_for_optional_hw() -> None:
    """Issue 13: H/W the user never declared are optional: a wrong pyramid pooling at other sizes warns."""
    r = check("onnx", em.pyramid_pooling(), repro=False)
    assert r.status == WARN, r.explain()
    assert "optional dimension" in r.summary and "static" in r.summary and "dynamic_dims" in r.summary
    assert r.culprit_label.startswith("pools.") and "AdaptiveAvgPool2d" in r.culprit_label
    assert "adaptive pooling to several bins" in r.hint


def test_onnx_adaptive_pooling_fails_when_hw_declared_and_grid_sizes_reach_it() -> None:
    """Issue 15: ±1 keeps the grid at 6 (51, 52, 53 all give 6); half, double and ±stride change it."""
    r = check("onnx", em.pyramid_pooling_declared(), repro=False)
    assert r.status == FAIL, r.explain()
    assert "input `x` dim 2 (height)" in r.summary and "at 51 it matches" in r.summary and "at 26 outputs differ" in r.summary
    assert r.culprit_label.startswith("pools.") and "AdaptiveAvgPool2d" in r.culprit_label
    assert "resize the features to a fixed grid" in r.hint


def test_optional_dims_over_budget_are_exported_static_and_named() -> None:
    """Issue 14: declared dims first; optional ones only within optional_dims_budget_s, else a note."""
    r = check("torch_export", em.conv_net(), repro=False, optional_dims_budget_s=0.001)
    assert r.status == PASS, r.explain()
    assert "not explored: input `x` dim 2, input `x` dim 3" in r.summary
    assert "declare them in dynamic_dims or raise optional_dims_budget_s" in r.summary
    assert r.metrics["dynamic_ok"] == "batch"
    assert any("ran past" in n for n in r.details["export_notes"])


def test_onnx_skips_without_onnxruntime(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    r = check("onnx", em.dict_heads())
    assert r.status == SKIP and "onnxruntime" in r.summary


def test_onnx_keeps_named_dynamic_dims_and_publishes_a_variant() -> None:
    model, x = em.conv_net()
    ctx = Context(Target(model, x), RunOptions(device="cpu"))
    r = run_one("onnx", ctx.target, ctx.options, context=ctx)
    assert r.status == PASS, r.explain()
    assert r.details["onnx_input_dims"]["x"] == ["batch", 3, "x_dim2", "x_dim3"]
    variant = ctx.variants["onnxruntime"]
    assert variant.verdict == PASS and variant.size_bytes > 0 and variant.max_error < 1e-4
    out = variant.run(torch.randn(3, 3, 20, 24))
    assert out.shape == (3, 5)
    assert ctx.has_cached("export:torch_export")  # ONNX was translated from the shared program


# ---------------------------------------------------------------------------------------------
# Clean models


@pytest.mark.parametrize("factory", [em.dict_heads, em.transformer_kwargs, em.conv_net])
@pytest.mark.parametrize("check_id", ["torchscript", "torch_export", "onnx"])
def test_clean_models_pass(check_id: str, factory) -> None:
    r = check(check_id, factory())
    assert r.status == PASS, r.explain()
    assert r.metrics["cases_ok"] == r.metrics["cases"]


def test_gru_tagger_trace_and_onnx_pass_at_every_length() -> None:
    for check_id in ("torchscript", "onnx"):
        r = check(check_id, em.gru_tagger())
        assert r.status == PASS, r.explain()
        assert r.metrics["dynamic_ok"] == "batch,tokens_dim1"


def test_resnet18_family_passes_with_exports_shared() -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    target = Target(model, x)
    ctx = Context(target, RunOptions(device="cpu"))
    report = run(target, RunOptions(device="cpu", checks=["torchscript", "torch_export", "onnx"]), context=ctx)
    statuses = {r.check: r.status for r in report.results}
    # the grid-changing sizes reach 32x32, where the last grid is 1: the program's guard rejects it (optional H/W: a warning)
    assert statuses == {"torchscript": PASS, "torch_export": WARN, "onnx": PASS}, [r.explain() for r in report.results]
    assert "at 32 the program raises" in report.result("torch_export").summary
    assert set(ctx.variants) == {"torchscript", "torch.export", "onnxruntime"}
    assert all(v.size_bytes and v.size_bytes > 40e6 for v in ctx.variants.values())
    onnx = report.result("onnx")
    assert onnx.metrics["dynamic_ok"] == "batch,x_dim2,x_dim3"


# ---------------------------------------------------------------------------------------------
# torch.compile (opt-in)


def test_torch_compile_is_opt_in() -> None:
    assert "torch_compile" not in {s.id for s in select_checks()}
    assert "torch_compile" not in {s.id for s in select_checks(["export"])}  # a family brings its default checks
    assert "torch_compile" in {s.id for s in select_checks(["export", "torch_compile"])}
    assert "torch_compile" in {s.id for s in select_checks(["all"])}


def test_torch_compile_counts_graph_breaks_with_their_line() -> None:
    r = check("torch_compile", em.data_dependent_if(), backend="eager")
    assert r.status == WARN, r.explain()
    assert r.metrics["graph_breaks"] == 1 and r.metrics["cases_mismatch"] == 0
    assert r.culprit_label == "<root> (DataDependentIf)"
    assert r.location.endswith(line_of(em.DataDependentIf, "if x.sum() > 0:"))
    assert "Data-dependent branching" in r.summary


def test_torch_compile_counts_recompiles_with_the_guard() -> None:
    r = check("torch_compile", em.loop_over_seq(), backend="eager")
    assert r.status == WARN, r.explain()
    assert r.metrics["recompiles"] >= 2
    assert r.culprit_label == "input `x` dim 1"
    assert "size mismatch at index 1" in r.summary


def test_torch_compile_clean_model_passes() -> None:
    r = check("torch_compile", em.dict_heads(), backend="aot_eager")
    assert r.status == PASS, r.explain()
    assert r.metrics["graphs"] == 1 and r.metrics["graph_breaks"] == 0


class _DictsPerSample(torch.nn.Module):
    """Returns a list of dicts (as torchvision detection does): a trace refuses it, torch.jit.script does not."""

    def forward(self, x: torch.Tensor) -> List[Dict[str, torch.Tensor]]:
        out: List[Dict[str, torch.Tensor]] = []
        for i in range(x.shape[0]):
            out.append({"y": x[i] * 2.0})
        return out


def test_an_untraceable_model_that_scripts_exactly_is_a_warning_with_the_route() -> None:
    r = check("torchscript", (_DictsPerSample(), torch.randn(2, 3)), repro=False)
    assert r.status == WARN, r.explain()
    assert r.summary.startswith("torch.jit.script works and matches eager") and "script instead of trace" in r.summary


class _TinyBakedBatch(torch.nn.Module):
    """Outputs of size ~1e-8 (random-weight scale) and `int(x.shape[0])` that a trace bakes in: at batch 3 the
    trace divides by 2, so it is 50% off; a fixed atol of 1e-5 would have called that a match."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = int(x.shape[0])
        return x * 1e-8 / n


def test_tiny_outputs_no_longer_hide_a_baked_batch_size() -> None:
    r = check("torchscript", (_TinyBakedBatch(), torch.randn(2, 8)), repro=False)
    assert r.status == FAIL, r.explain()
    assert "batch" in r.summary and r.metrics["cases_mismatch"] >= 1


def test_a_swallowed_budget_alarm_still_ends_over_budget() -> None:
    """The alarm can land where Python swallows it (a gc callback, library `except BaseException`):
    the budget verdict must not depend on that (CI once saw the export finish 'in budget')."""
    import time

    from torch_diagnose.budget import OverBudget, deadline

    with pytest.raises(OverBudget, match="caught on exit"):
        with deadline(0.01):
            try:
                time.sleep(0.1)
            except OverBudget:
                pass  # what a gc callback does with it
    with deadline(5.0) as armed:  # a body in budget passes untouched
        assert armed
