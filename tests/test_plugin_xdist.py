"""The pytest plugin under pytest-xdist, and reports from a user's own tests.

* The generated items of one `--diagnose-model` run share one worker, so the benchmark's deployment
  matrix times every variant the other checks built (real `-n 2` runs, tiny model).
* Where a scheduler splits them anyway, the controller lists the variants the benchmark never saw.
* A user's own tests that call the fixtures write reports/ like the CLI, with and without `-n 2`.
* A misspelt `--diagnose-checks` name is one usage error naming the flag and the closest match.
"""
from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from torch_diagnose.plugin.matrix import complete_matrix

pytest_plugins = ["pytester"]

MODELS_SOURCE = (Path(__file__).resolve().parent / "models" / "plugin.py").read_text()
#: Short timings; every variant timed however busy the machine (a slow warm call is otherwise listed, not timed).
FAST_BENCHMARK = ("--diagnose-option", "benchmark.min_time_s=0.02", "--diagnose-option", "benchmark.max_time_s=0.2",
                  "--diagnose-option", "benchmark.max_slowdown=100000")

USER_TESTS = '''
import pytest
import pt_models


@pytest.fixture
def diagnose_target():
    return pt_models.clean_model()


def test_determinism(diagnose):
    assert diagnose("determinism", repeats=1).status == "pass"


def test_eval_mode_of_a_faulty_model(check_eval_mode):
    check_eval_mode(target="pt_models.py:dropout_left_on")
'''


@pytest.fixture
def project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    pytester.makepyfile(pt_models=MODELS_SOURCE)
    for name in ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_XDIST_TESTRUNUID", "PYTEST_ADDOPTS",
                 "TORCH_DIAGNOSE_TEST_DRIFT", "TORCH_DIAGNOSE_TEST_CODE_CHANGE", "TORCH_DIAGNOSE_TEST_BUILD_LOG"):
        monkeypatch.delenv(name, raising=False)  # when this suite itself runs under xdist
    return pytester


def _run(pytester: pytest.Pytester, mode: str, *args: str) -> pytest.RunResult:
    if mode == "plain":
        return pytester.runpytest("-p", "no:xdist", "-p", "no:cacheprovider", *args)
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", "-n", "2", *args)


def _report(pytester: pytest.Pytester) -> dict:
    return json.loads((pytester.path / "reports" / "diagnose.json").read_text())


def test_the_matrix_under_xdist_times_every_variant_the_checks_built(project: pytest.Pytester) -> None:
    project.makepyfile(test_pt_other="def test_other():\n    pass\n")  # a user test alongside: load still spreads
    result = _run(project, "n2", "--diagnose-model", "pt_models.py:clean_model", "--diagnose-checks",
                  "fp16,bf16,torchscript,benchmark", "--diagnose-format", "json", *FAST_BENCHMARK, "-v")
    result.assert_outcomes(passed=5)
    out = result.stdout.str()
    workers = set(re.findall(r"\[(gw\d)\] \[ *\d+%\] PASSED diagnose\[", out))
    assert len(workers) == 1, out  # the generated items shared one worker (and one Context)
    bench = next(r for r in _report(project)["results"] if r["check"] == "benchmark")
    rows = {row["variant"]: row for row in bench["details"]["matrix"]}
    assert set(rows) == {"eager", "fp16", "bf16", "torchscript"}, rows
    assert all(row["p50_ms"] is not None for row in rows.values()), rows
    assert "not timed" not in bench["summary"]


def _payload(check: str, worker: str, variants: list[dict] | None = None, **result: object) -> dict:
    return {"generated": True, "worker": worker, "nodeid": f"diagnose[x]::{check}", "variants": variants or [],
            "result": {"check": check, "status": "pass", "summary": "s", **result}}


def test_a_matrix_split_across_workers_says_what_it_lacks(pytester: pytest.Pytester) -> None:
    """Under a scheduler that splits the generated items (`--dist worksteal`): rows for the variants
    built elsewhere, named as not timed, and the summary saying so."""
    from torch_diagnose.plugin.session import SessionState

    state = SessionState(pytester.parseconfig())
    fp16 = {"name": "fp16", "verdict": "pass", "max_error": 2e-4, "size_bytes": None, "source_check": "fp16"}
    script = {"name": "torchscript", "verdict": "pass", "max_error": 0.0, "size_bytes": 4000, "source_check": "torchscript"}
    matrix = [{"variant": "eager", "p50_ms": 0.02}, {"variant": "torchscript", "p50_ms": 0.01}]
    state.payloads = [_payload("fp16", "gw0", [fp16]), _payload("torchscript", "gw1", [script]),
                      _payload("benchmark", "gw1", summary="b1 p50 0.02 ms", details={"matrix": matrix}, metrics={})]
    complete_matrix(state)
    complete_matrix(state)  # once per session, however often asked
    bench = state.payloads[2]["result"]
    assert [row["variant"] for row in bench["details"]["matrix"]] == ["eager", "torchscript", "fp16"]
    row = bench["details"]["matrix"][2]
    assert row["p50_ms"] is None and row["verdict"] == "pass" and row["max_error"] == 2e-4
    assert row["note"] == "built by fp16 on another pytest-xdist worker (gw0): not timed"
    assert bench["summary"].count("not timed: fp16 (built on another pytest-xdist worker") == 1
    assert bench["metrics"]["variants_built_elsewhere"] == "fp16"


@pytest.mark.parametrize("mode", ["plain", "n2"])
def test_a_users_own_tests_write_reports_like_the_cli(project: pytest.Pytester, mode: str) -> None:
    project.makepyfile(test_pt_user=USER_TESTS)
    formats = ("--diagnose-format", "json") if mode == "n2" else ()  # every format once; HTML's plots cost seconds
    result = _run(project, mode, *formats)
    result.assert_outcomes(passed=1, failed=1)
    folder = project.path / "reports"
    written = sorted(p.name for p in folder.iterdir())
    assert written == (["diagnose.json"] if formats else ["diagnose.html", "diagnose.json", "diagnose.md", "diagnose.xml"])
    results = {(r["check"], r["details"]["test"]): r["status"] for r in _report(project)["results"]}
    assert results == {("determinism", "test_pt_user.py::test_determinism"): "pass",
                       ("eval_mode", "test_pt_user.py::test_eval_mode_of_a_faulty_model"): "fail"}
    result.stdout.fnmatch_lines(["reports: reports?diagnose.*"])
    if not formats:
        assert "drop (Dropout)" in (folder / "diagnose.md").read_text()
        cases = {case.get("name"): case for case in ET.parse(folder / "diagnose.xml").getroot().iter("testcase")}
        assert set(cases) == {"determinism", "eval_mode"} and cases["eval_mode"].find("failure") is not None


@pytest.mark.parametrize("mode", ["plain", "n2"])
def test_a_misspelt_check_names_the_flag_and_the_closest_match_once(project: pytest.Pytester, mode: str) -> None:
    result = _run(project, mode, "--diagnose-model", "pt_models.py:clean_model", "--diagnose-checks", "onxx")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    err = result.stderr.str()
    assert err.count("--diagnose-checks: unknown check or family 'onxx'; did you mean 'onnx'?") == 1, err
    assert "INTERNALERROR" not in err + result.stdout.str() and "Traceback" not in err and "During handling" not in err
