"""CI outputs agree with the exit code and show no runner paths: JUnit under --fail-on warn,
Markdown paths relative to the project root, plain class names, and the quiet terminal."""
from __future__ import annotations

import io
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from torch_diagnose.report import JUnitWriter, TerminalReporter
from torch_diagnose.report.markdown import annotation, class_name, relative_paths, render_markdown
from torch_diagnose.results import CheckResult
from torch_diagnose.runner import RunReport


pytestmark = pytest.mark.usefixtures("no_ci_env")


def _items() -> list[CheckResult]:
    return [
        CheckResult(check="fp16", family="precision", status="warn", summary="fp16 drifts by 2%", hint="keep LayerNorm in fp32"),
        CheckResult(check="eval_mode", family="mode", status="pass", summary="every module is in eval mode"),
        CheckResult(check="determinism", family="determinism", status="fail", summary="outputs change between runs"),
        CheckResult(check="onnx", family="export", status="skip", caused_by="determinism",
                    summary="not judged: outputs are not deterministic (see determinism)"),
    ]


def _run(items: list[CheckResult], **options) -> RunReport:
    run = RunReport(target={"name": "tiny"}, options=options)
    run.results = items
    return run


def _suite(run: RunReport) -> ET.Element:
    return ET.fromstring(JUnitWriter().render(run).split("\n", 1)[1]).find("testsuite")


@pytest.mark.parametrize("fail_on", [None, "fail", "error"])
def test_junit_warning_passes_unless_it_fails_the_run(fail_on) -> None:
    run = _run(_items(), **({"fail_on": fail_on} if fail_on else {}))
    suite = _suite(run)
    case = suite.find("testcase[@name='fp16']")
    assert case.find("failure") is None and "keep LayerNorm" in case.find("system-out").text
    assert suite.get("failures") == "1" and run.exit_code(fail_on or "fail") in (0, 1)


def test_junit_warning_is_a_failure_under_fail_on_warn() -> None:
    run = _run(_items(), fail_on="warn")
    suite = _suite(run)
    failure = suite.find("testcase[@name='fp16']/failure")
    assert failure is not None and failure.get("type") == "warn" and failure.get("message") == "fp16 drifts by 2%"
    assert "keep LayerNorm in fp32" in failure.text and suite.find("testcase[@name='fp16']/system-out") is None
    assert suite.get("failures") == "2" and run.exit_code("warn") == 1
    assert suite.find("testcase[@name='onnx']/skipped") is not None, "a consequence stays skipped"
    assert suite.find("testcase[@name='eval_mode']/failure") is None
    assert suite.find("properties/property[@name='fail_on']").get("value") == "warn"
    only_warn = _suite(_run([_items()[0]], fail_on="warn"))
    assert only_warn.get("failures") == "1", "the XML is red exactly when the exit code is 1"


def test_markdown_paths_are_relative_to_the_project_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project = tmp_path / "proj"
    (project / "src").mkdir(parents=True)
    (project / "pyproject.toml").write_text("[project]\nname = 'p'\n")
    monkeypatch.chdir(project / "src")  # a sub-folder: the root is still the pyproject's folder
    root = str(project.resolve())
    items = [CheckResult(check="determinism", status="fail", summary=f"repro bundle written to {root}/reports/repro/determinism",
                         location=f"{root}/src/model.py:12", hint=f"see {root}/reports/diagnose.html, or https://example.org/a/b"),
             CheckResult(check="onnx", status="error", summary="boom",
                         details={"traceback": f'Traceback:\n  File "{root}/src/model.py", line 3\nRuntimeError: boom'})]
    run = RunReport(target={"source": f"{root}/src/model.py:make", "model_class": "_diagnose_target_model.make.<locals>.Net"},
                    options={"fail_on": "fail"})
    run.results = items
    md = render_markdown(run)
    assert root not in md and str(tmp_path) not in md
    assert "`src/model.py:12`" in md and "reports/repro/determinism" in md and "reports/diagnose.html" in md
    assert "https://example.org/a/b" in md and 'File "src/model.py", line 3' in md
    assert md.startswith("# 💥 diagnose src/model.py:make") and "`Net`" in md and "<locals>" not in md
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    assert annotation(items[0]).startswith("::error file=src/model.py,line=12,")
    assert root not in annotation(items[0])
    assert relative_paths("/usr/share/x 3/4 a/b") == "/usr/share/x 3/4 a/b", "paths outside the project stay"


def test_class_names_drop_internal_aliases_only() -> None:
    assert class_name("torchvision.models.resnet.ResNet") == "torchvision.models.resnet.ResNet"
    assert class_name("__main__.Net") == "Net" and class_name("pt_models.make.<locals>.Net") == "Net"
    assert class_name("_diagnose_target_model.Net") == "Net"


def test_quiet_terminal_prints_one_line_per_check_and_nothing_else(tmp_path: Path) -> None:
    out = io.StringIO()
    items = _items()
    run = _run([], report_dir=str(tmp_path), format=["json"])
    run.notes.append("the model was in training mode")
    reporter = TerminalReporter(stream=out, quiet=True, verbose=True, report_paths=[tmp_path])
    reporter.start(run, [])
    for item in items:
        run.results.append(item)
        reporter.check_finished(item, run)
    reporter.finish(run)
    lines = out.getvalue().splitlines()
    assert len(lines) == len(items)
    assert lines[0].split(None, 2) == ["WARN", "fp16", "fp16 drifts by 2%"]
    assert lines[2].split(None, 2) == ["FAIL", "determinism", "outputs change between runs"]
    assert "reports" not in out.getvalue() and "keep LayerNorm" not in out.getvalue() and " s)" not in out.getvalue()


def test_a_fixture_result_names_its_test_and_shared_seconds_in_junit_and_markdown() -> None:
    """A result a fixture produced in the user's own test says which test; shared work is shown as such."""
    result = CheckResult(check="onnx", family="export", status="fail", summary="ONNX differs", duration_s=3.0,
                         details={"test": "tests/test_deploy.py::test_export"}, shared_s=1.25, shared={"fp64 reference": 1.25})
    run = _run([result])
    props = {p.get("name"): p.get("value") for p in _suite(run).iter("property")}
    assert props["test"] == "tests/test_deploy.py::test_export" and props["shared_s"] == "1.25"
    page = render_markdown(run)
    assert "`onnx` (in `tests/test_deploy.py::test_export`)" in page
    assert "- **test:** `tests/test_deploy.py::test_export`" in page
    assert "- **duration:** 3.0 s (+1.2 s shared: fp64 reference)" in page
