"""The runner: a check that raises ends as error while the others run; isolation contains crashes."""
from __future__ import annotations

import json
import os
import time

import pytest

from torch_diagnose import ERROR, FAIL, PASS, SKIP, CheckResult, SkipCheck, Target
from torch_diagnose.options import RunOptions
from torch_diagnose.registry import CheckSpec, get_check
from torch_diagnose.runner import run
from tests.models import faulty


def _spec(check_id: str, func) -> CheckSpec:
    return CheckSpec(id=check_id, family="test", title=check_id, func=func)


def _raises(ctx, opts):
    raise ValueError("the check itself broke")


def _skips(ctx, opts):
    raise SkipCheck("no pipelines given")


def _returns_garbage(ctx, opts):
    return {"status": "pass"}


def _slow(ctx, opts):
    time.sleep(5)
    return CheckResult(status=PASS, summary="never")


def test_a_check_that_raises_is_an_error_and_the_run_goes_on(tmp_path) -> None:
    from torch_diagnose.report import file_reporters

    options = RunOptions(report_dir=str(tmp_path), format=["json"])
    checks = [_spec("breaks", _raises), get_check("eval_mode"), _spec("skips", _skips), _spec("garbage", _returns_garbage), get_check("determinism")]
    report = run(Target(*faulty.small_net()), options, checks=checks, reporters=file_reporters(options))
    statuses = {r.check: r.status for r in report.results}
    assert statuses == {"breaks": ERROR, "eval_mode": PASS, "skips": SKIP, "garbage": ERROR, "determinism": PASS}
    assert "the check itself broke" in report.result("breaks").summary
    assert "traceback" in report.result("breaks").details
    assert report.exit_code("fail") == 1  # errors count
    data = json.loads((tmp_path / "diagnose.json").read_text())
    assert [r["check"] for r in data["results"]] == ["breaks", "eval_mode", "skips", "garbage", "determinism"]
    assert data["summary"]["error"] == 2


def test_timeout_ends_the_check_as_error() -> None:
    options = RunOptions(timeout=0.5)
    report = run(Target(*faulty.small_net()), options, checks=[_spec("slow", _slow), get_check("eval_mode")])
    assert report.result("slow").status == ERROR
    assert "timed out" in report.result("slow").summary
    assert report.result("eval_mode").status == PASS


def test_fail_on_thresholds() -> None:
    report = run(Target(*faulty.functional_dropout()), RunOptions(), checks=[get_check("determinism")])
    assert report.result("determinism").status == FAIL
    assert report.exit_code("fail") == 1
    assert report.exit_code("error") == 0


def test_model_is_not_evaled_before_eval_mode_looks() -> None:
    model, x = faulty.small_net()
    model.train()
    report = run(Target(model, x), RunOptions(), checks=[get_check("determinism"), get_check("eval_mode")])
    # determinism ran first (and switched to eval), yet eval_mode judged the handed-over state
    assert report.result("eval_mode").status == FAIL
    assert any("training mode" in note for note in report.notes)


@pytest.mark.slow
def test_isolated_crash_is_contained(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_DIAGNOSE_CHECKS", "tests.models.crashing_checks")
    monkeypatch.setenv("PYTHONPATH", os.getcwd())
    from torch_diagnose.registry import load_checks
    import torch_diagnose.registry as registry

    monkeypatch.setattr(registry, "_loaded", False)
    load_checks()
    options = RunOptions(isolate=True, timeout=20)
    checks = [get_check("crash_segfault"), get_check("eval_mode")]
    spec = "tests/models/faulty.py:small_net"
    report = run(spec, options, checks=checks)
    crash = report.result("crash_segfault")
    assert crash.status == ERROR and "SIGSEGV" in crash.summary
    assert report.result("eval_mode").status == PASS


# -- progress within a check and shared work charged to the check that asked first ---------------------
class _Sleepy(__import__("torch").nn.Module):
    """Every forward takes 50 ms, so building the fp32 and fp64 references takes a measurable time."""

    def __init__(self) -> None:
        import torch

        super().__init__()
        self.fc = torch.nn.Linear(4, 2)

    def forward(self, x):
        time.sleep(0.05)
        return self.fc(x)


def _asks_tolerances(ctx, opts):
    ctx.progress("phase 1/2")
    ctx.tolerances()
    ctx.progress("phase 2/2")
    return CheckResult(status=PASS, summary="ok")


class _Recorder:
    def __init__(self) -> None:
        self.said: list[tuple[str, str]] = []

    def start(self, run, checks): ...
    def check_started(self, spec): ...
    def check_finished(self, result, run): ...
    def finish(self, run): ...

    def check_progress(self, spec, text: str) -> None:
        self.said.append((spec.id, text))


def test_shared_work_is_charged_to_the_first_check_that_asks() -> None:
    import torch

    torch.manual_seed(0)
    rec = _Recorder()
    report = run(Target(_Sleepy(), torch.randn(2, 4)), RunOptions(),
                 checks=[_spec("first", _asks_tolerances), _spec("second", _asks_tolerances)], reporters=[rec])
    first, second = report.result("first"), report.result("second")
    assert {"fp32 reference", "fp64 reference"} <= set(first.shared), first.shared
    assert first.shared["fp32 reference"] >= 0.04 and first.shared["fp64 reference"] >= 0.04
    assert first.shared.get("calibrated tolerances", 0.0) < 0.04, "nested builds are charged once, to their own label"
    assert first.shared_s == pytest.approx(sum(first.shared.values())) and first.shared_s <= first.duration_s
    assert first.own_s == pytest.approx(first.duration_s - first.shared_s)
    assert second.shared == {} and second.shared_s == 0.0 and second.own_s == second.duration_s
    data = first.to_dict()
    assert data["shared_s"] == first.shared_s and data["own_s"] == first.own_s and "fp64 reference" in data["shared"]
    assert CheckResult.from_dict(data).shared == first.shared
    assert report.overhead["shared_s"] == pytest.approx(first.shared_s)
    # progress: the check's phases, the shared builds named while they run, then the phase that was showing
    assert [text for check, text in rec.said if check == "first"] == [
        "phase 1/2", "building the calibrated tolerances", "building the fp64 reference", "building the calibrated tolerances",
        "building the fp32 reference", "building the calibrated tolerances", "phase 1/2", "phase 2/2"]
    assert [text for check, text in rec.said if check == "second"] == ["phase 1/2", "phase 2/2"]


def test_progress_is_a_no_op_without_a_listener() -> None:
    import torch

    from torch_diagnose.context import Context
    from torch_diagnose.runner import run_one

    ctx = Context(Target(*faulty.small_net()))
    ctx.progress("nobody listens")  # no runner: nothing happens, nothing breaks
    report = run(Target(*faulty.small_net()), RunOptions(), checks=[_spec("first", _asks_tolerances)], context=ctx,
                 reporters=[_Recorder()])
    assert report.result("first").status == PASS and ctx.progress.listener is None, "the runner removes its listener"

    def boom(text: str) -> None:
        raise RuntimeError("a face that cannot draw")

    ctx.progress.listener = boom
    ctx.progress("still fine")
    assert torch.is_tensor(ctx.inputs) and run_one("eval_mode", ctx.target, context=ctx).status == PASS
