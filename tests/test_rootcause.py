"""One root cause, one failure: a random, stateful or still-training model fails one check, and every
check whose comparison relies on that foundation is its skipped consequence, grouped under it."""
from __future__ import annotations

import io
import json
import os
import xml.etree.ElementTree as ET

import pytest

import torch_diagnose
from torch_diagnose import FAIL, PASS, SKIP, CheckResult, Target
from torch_diagnose.context import Context
from torch_diagnose.options import RunOptions
from torch_diagnose.registry import CheckSpec, get_check, register
from torch_diagnose.rootcause import REQUIRES, blocked_by, group, requires_of
from torch_diagnose.runner import run, run_one
from tests.models import root_cause as rc

DEPENDENTS = ["batch_invariance", "fp16", "bf16", "torchscript", "weights_roundtrip"]


def _target(factory) -> Target:
    model, x = factory()
    return Target(model, x, factory=lambda: factory()[0])


def _statuses(report) -> dict[str, tuple[str, str | None]]:
    return {r.check: (r.status, r.caused_by) for r in report.results}


def test_a_random_head_fails_determinism_once_and_the_rest_are_its_consequences() -> None:
    report = torch_diagnose.diagnose(_target(rc.random_head), checks=["determinism", *DEPENDENTS])
    statuses = _statuses(report)
    assert statuses["determinism"] == (FAIL, None)
    for check in DEPENDENTS:
        assert statuses[check] == (SKIP, "determinism"), check
        summary = report.result(check).summary
        assert summary.startswith("not judged: outputs are not deterministic: outputs change between runs")
        assert summary.endswith("(see determinism)")
        assert "fix determinism first" in report.result(check).hint
    assert [r.check for r in report.root_causes()] == ["determinism"]
    assert report.summary[FAIL] == 1 and report.exit_code() == 1
    data = report.to_dict()
    assert data["root_causes"] == ["determinism"]
    assert data["consequences"] == {check: "determinism" for check in DEPENDENTS}
    assert data["results"][1]["caused_by"] == "determinism"


def test_without_determinism_a_probe_finds_it_and_the_first_blocked_check_fails_in_its_place() -> None:
    report = torch_diagnose.diagnose(_target(rc.random_head), checks=["fp16", "bf16", "torchscript"])
    fp16 = report.result("fp16")
    assert fp16.status == FAIL and fp16.caused_by is None
    assert fp16.summary.startswith("not judged: outputs are not deterministic: a rerun of the example inputs differs")
    assert "determinism was not selected: run it to find the culprit" in fp16.summary
    assert fp16.details["blocked_by"] == "determinism"
    assert _statuses(report)["bf16"] == (SKIP, "fp16") and _statuses(report)["torchscript"] == (SKIP, "fp16")
    assert report.summary[FAIL] == 1


def test_a_stateful_counter_is_one_state_mutation_failure() -> None:
    checks = ["state_mutation", "determinism", "batch_invariance", "fp16", "weights_roundtrip"]
    report = torch_diagnose.diagnose(_target(rc.counter), checks=checks)
    statuses = _statuses(report)
    assert statuses["state_mutation"] == (FAIL, None)
    assert statuses["determinism"] == (SKIP, "state_mutation")
    assert report.result("determinism").summary.startswith("a consequence of state_mutation (forward mutates the model's state)")
    assert report.result("determinism").details["consequence_status"] == FAIL
    for check in ("batch_invariance", "fp16", "weights_roundtrip"):
        assert statuses[check] == (SKIP, "state_mutation"), check
    assert report.summary[FAIL] == 1


def test_dropout_left_training_makes_eval_mode_the_root_and_determinism_its_consequence() -> None:
    report = torch_diagnose.diagnose(rc.stuck_training(), checks=["eval_mode", "determinism", "batch_invariance", "fp16"])
    statuses = _statuses(report)
    assert statuses["eval_mode"] == (FAIL, None)
    assert statuses["determinism"] == (SKIP, "eval_mode")
    assert report.result("determinism").culprit_label == "drop (Dropout)"  # what it measured is kept
    assert statuses["batch_invariance"] == (SKIP, "eval_mode") and statuses["fp16"] == (SKIP, "eval_mode")
    assert [r.check for r in report.root_causes()] == ["eval_mode"]


def test_a_clean_model_has_no_consequences_and_the_probe_costs_one_forward() -> None:
    report = torch_diagnose.diagnose(rc.clean(), checks=["determinism", "batch_invariance", "fp16", "torchscript"])
    assert all(r.caused_by is None and r.status == PASS for r in report.results), _statuses(report)
    # fp16 alone: the runner's probe (determinism not selected) adds exactly one forward to the check's own
    options = RunOptions()
    bare = Context(Target(*rc.clean()), options)
    get_check("fp16").func(bare, get_check("fp16").resolve_options())
    ran = run(Target(*rc.clean()), options, checks=[get_check("fp16")])
    assert ran.result("fp16").status == PASS
    assert ran.overhead["model_forward_calls"] == bare.stats.calls + 1


def test_run_one_on_a_shared_context_sees_earlier_verdicts() -> None:
    """The pytest face shares one Context per model: fp16 after a failed determinism is its consequence."""
    target = Target(*rc.random_head())
    ctx = Context(target, RunOptions())
    assert run_one("determinism", target, context=ctx).status == FAIL
    fp16 = run_one("fp16", target, context=ctx)
    assert (fp16.status, fp16.caused_by) == (SKIP, "determinism")


def test_a_third_party_check_declares_what_it_relies_on() -> None:
    calls = []

    def mine(ctx, opts):
        calls.append(1)
        return CheckResult.passed("compared")

    spec = CheckSpec(id="my_parity", family="mine", title="mine", func=mine, requires=("deterministic",))
    report = run(Target(*rc.random_head()), RunOptions(), checks=[get_check("determinism"), spec])
    assert (report.result("my_parity").status, report.result("my_parity").caused_by) == (SKIP, "determinism")
    assert not calls
    with pytest.raises(ValueError, match="unknown foundation 'sane'"):
        register("never_registered", family="mine", title="x", requires=("sane",))
    # a register argument wins over the built-in table
    assert requires_of(get_check("fp16")) == REQUIRES["fp16"] == ("deterministic",)
    assert requires_of(CheckSpec(id="fp16", family="x", title="x", func=mine, requires=())) == ()
    assert blocked_by(("deterministic",), {"determinism": report.result("determinism")}).check == "determinism"


def test_reports_group_consequences_under_their_root(tmp_path) -> None:
    from torch_diagnose.report import TerminalReporter, file_reporters

    options = RunOptions(report_dir=str(tmp_path), format=["json", "junit", "md", "html"], checks=["determinism", "fp16", "bf16"])
    stream = io.StringIO()
    report = run(Target(*rc.random_head()), options, reporters=[*file_reporters(options), TerminalReporter(stream=stream, color=False)])
    assert [(root.check, [c.check for c in follow]) for root, follow in group(report.results)] == [("determinism", ["fp16", "bf16"])]
    text = stream.getvalue()
    assert "↳" in text and "consequences of determinism: fp16, bf16 (not judged)" in " ".join(text.split())
    assert "1 failed, 2 skipped — 1 root cause, 2 consequences (not judged)" in text
    md = (tmp_path / "diagnose.md").read_text()
    assert md.index("## Root causes") < md.index("| status | check |")
    assert "**fix:**" in md and "consequences of determinism: fp16, bf16 (not judged)" in md
    assert "| ⏭️ skip | ↳ `fp16` |" in md and "## ⏭️ skip: `fp16`" not in md
    html = (tmp_path / "diagnose.html").read_text()
    assert "<h2>Root causes</h2>" in html and "consequence" in html
    suite = ET.parse(tmp_path / "diagnose.xml").getroot()
    case = suite.find(".//testcase[@name='fp16']")
    skipped = case.find("skipped")
    assert skipped is not None and "(see determinism)" in skipped.get("message")
    assert case.find(".//property[@name='caused_by']").get("value") == "determinism"
    data = json.loads((tmp_path / "diagnose.json").read_text())
    assert data["root_causes"] == ["determinism"] and data["results"][1]["caused_by"] == "determinism"


@pytest.mark.slow
def test_isolated_checks_see_the_root_cause(monkeypatch) -> None:
    monkeypatch.setenv("PYTHONPATH", os.getcwd())
    report = run("tests/models/root_cause.py:random_head", RunOptions(isolate=True, timeout=60, checks=["determinism", "fp16"]))
    assert _statuses(report) == {"determinism": (FAIL, None), "fp16": (SKIP, "determinism")}
