"""Degenerate outputs (all zero, constant, tied, empty, tiny) are found once per run, and every verdict
that compared them says so: a pass becomes a warning with the numbers and the likely cause."""
from __future__ import annotations

import json

import torch

import torch_diagnose
from torch_diagnose import FAIL, PASS, WARN, CheckResult, Target
from torch_diagnose.degenerate import find_degenerate, summarize
from torch_diagnose.options import RunOptions
from torch_diagnose.registry import CheckSpec, get_check
from torch_diagnose.runner import run
from tests.models import root_cause as rc


def _kinds(outputs) -> dict[str, str]:
    return {d.leaf: d.kind for d in find_degenerate(outputs)}


def test_each_kind_is_found_with_its_numbers() -> None:
    torch.manual_seed(0)
    assert _kinds(torch.zeros(2, 4)) == {"output": "zero"}
    assert _kinds(torch.full((2, 4), 3.0)) == {"output": "constant"}
    assert _kinds(torch.tensor([[1.0, 1.0, 1.0], [2.0, 2.0, 2.0]])) == {"output": "tied"}
    assert _kinds(torch.randn(2, 4) * 1e-9) == {"output": "tiny"}
    # Mask R-CNN with random weights: all of its 100 scores within 5e-4 of 1 (31 exactly 1): their order is arbitrary
    assert _kinds({"scores": torch.tensor([1.0] * 31 + [0.9995] * 69)}) == {"scores": "saturated"}
    assert _kinds({"scores": torch.tensor([1.0, 0.97, 0.9, 0.4, 0.2])}) == {}  # one confident detection is not degenerate
    assert _kinds(torch.randn(2, 4)) == {}
    found = find_degenerate(torch.zeros(2, 4))
    assert summarize(found).startswith("degenerate outputs: `output` is all zero (2x4). Likely cause: a zero-initialised head")


def test_empty_detections_are_one_field_across_images() -> None:
    model, x = rc.empty_detector()
    kinds = _kinds(model(x))
    assert kinds == {"[*].boxes": "empty", "[*].scores": "empty", "[*].labels": "empty"}
    # one image with detections: the field is not degenerate
    boxes = [{"boxes": torch.zeros(0, 4)}, {"boxes": torch.rand(2, 4)}]
    assert _kinds(boxes) == {}


def test_zero_initialised_head_turns_passes_into_warnings_with_the_numbers(tmp_path) -> None:
    report = torch_diagnose.diagnose(rc.zero_head(), checks=["fp16", "torchscript"], report_dir=str(tmp_path))
    for check in ("fp16", "torchscript"):
        result = report.result(check)
        assert result.status == WARN, result.summary
        assert " — but degenerate outputs: `output` is all zero (4x4)" in result.summary
        assert "zero-initialised head" in result.summary
        assert result.metrics["degenerate_outputs"] == "`output` is all zero (4x4)"
        assert "trained weights" in result.hint
    data = json.loads((tmp_path / "diagnose.json").read_text())
    assert data["results"][0]["details"]["degenerate_outputs"][0]["kind"] == "zero"


def test_empty_detection_model_is_flagged_degenerate() -> None:
    report = torch_diagnose.diagnose(rc.empty_detector(), checks=["determinism", "fp16"])
    for check in ("determinism", "fp16"):
        result = report.result(check)
        assert result.status == WARN, result.summary
        assert "`[*].boxes` is empty (0x4)" in result.summary and "score threshold" in result.summary


def test_a_failure_keeps_failing_with_the_note_in_its_hint() -> None:
    spec = CheckSpec(id="strict", family="mine", title="strict", compares_outputs=True,
                     func=lambda ctx, opts: (ctx.reference, CheckResult.failed("differs", hint="look"))[1])
    result = run(Target(*rc.zero_head()), RunOptions(), checks=[spec]).result("strict")
    assert result.status == FAIL and result.summary == "differs"
    assert result.hint.startswith("look; note: degenerate outputs: `output` is all zero")


class _TiedScores(torch.nn.Module):
    """Every score equal (a collapsed head): which row comes first is arbitrary."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(x.shape[0], 5) + 0.25


def test_a_failure_on_tied_scores_is_not_judged_a_fault() -> None:
    spec = CheckSpec(id="strict", family="mine", title="strict", compares_outputs=True,
                     func=lambda ctx, opts: (ctx.reference, CheckResult.failed("boxes differ", hint="look"))[1])
    result = run(Target(_TiedScores(), torch.randn(2, 3)), RunOptions(), checks=[spec]).result("strict")
    assert result.status == WARN and result.summary.startswith("not judged reliably: degenerate outputs")
    assert "measured: boxes differ" in result.summary and "arbitrary" in result.hint


def test_an_export_that_fails_or_a_model_that_raises_on_tied_scores_still_fails() -> None:
    """Mask R-CNN's saturated scores once turned "torch.jit.trace fails" into "not judged reliably": a
    failure that is not a comparison of output values is a fault whatever the outputs are."""
    for marker in ({"metrics": {"export_failed": True}}, {"details": {"raised_not_compared": True}}):
        spec = CheckSpec(id="strict", family="mine", title="strict", compares_outputs=True,
                         func=lambda ctx, opts, m=marker: (ctx.reference, CheckResult.failed("trace fails", **m))[1])
        result = run(Target(_TiedScores(), torch.randn(2, 3)), RunOptions(), checks=[spec]).result("strict")
        assert result.status == FAIL and result.summary == "trace fails", result.summary
        assert "degenerate outputs" in result.hint


def test_clean_outputs_are_not_flagged_and_checks_that_do_not_compare_outputs_are_left_alone() -> None:
    report = torch_diagnose.diagnose(rc.clean(), checks=["fp16"])
    assert report.result("fp16").status == PASS and "degenerate_outputs" not in report.result("fp16").metrics
    report = torch_diagnose.diagnose(rc.zero_head(), checks=["state_mutation"])
    assert report.result("state_mutation").status == PASS


def test_the_benchmark_recommends_no_variant_on_degenerate_outputs() -> None:
    options = RunOptions(option={"benchmark": {"min_time_s": 0.01, "batch_sizes": [4]}})
    report = run(Target(*rc.zero_head()), options, checks=[get_check("torchscript"), get_check("benchmark")])
    bench = report.result("benchmark")
    assert "no variant recommended as faithful" in bench.summary and "all zero" in bench.summary
    assert bench.metrics["recommended_variant"] == "none"
    assert not any(row["recommended"] for row in bench.details["matrix"])


class _SaturatedThreadDependent(torch.nn.Module):
    """Most scores exactly 1 (a random-weight detector's), boxes that move with the thread count."""

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        n = x.shape[0]
        scores = torch.cat([torch.ones(n, 6), torch.full((n, 2), 0.5)], dim=1)
        boxes = x.sum(1, keepdim=True).expand(-1, 8) + (0.5 if torch.get_num_threads() == 1 else 0.0)
        return {"scores": scores, "boxes": boxes}


def test_saturated_scores_make_a_thread_difference_not_judged_and_skip_localisation() -> None:
    """Mask R-CNN with random weights: a thread-count difference reorders tied scores. Localising it took
    minutes and proved nothing; the verdict says what was measured and why it is not judged."""
    result = torch_diagnose.diagnose(Target(_SaturatedThreadDependent(), torch.randn(2, 3)), checks=["determinism"]).result("determinism")
    assert result.status == WARN, result.explain()
    assert result.summary.startswith("not judged reliably: degenerate outputs: `scores` has 12 of 16 scores within 0.001 of 1")
    assert "threads" in result.summary
    assert result.details["localisation"].startswith("not localised: the order of `scores`")


def test_a_trace_failure_judged_by_the_scripts_outputs_on_tied_scores_is_not_judged() -> None:
    """Mask R-CNN: the trace fails, torch.jit.script runs but "differs" because tied scores reorder;
    whether TorchScript works rests on that comparison, so the verdict is not judged reliably."""
    spec = CheckSpec(id="strict", family="mine", title="strict", compares_outputs=True,
                     func=lambda ctx, opts: (ctx.reference, CheckResult.failed(
                         "trace fails; script differs", metrics={"export_failed": True},
                         details={"judged_by_comparison": True}))[1])
    result = run(Target(_TiedScores(), torch.randn(2, 3)), RunOptions(), checks=[spec]).result("strict")
    assert result.status == WARN and result.summary.startswith("not judged reliably")
