"""Report formats, from hand-built runs (no model, no torch needed by the code under test).

Each format must parse back, escape hostile text, be rewritten after every check, survive a
broken sibling format, and talk to GitHub Actions only at the end of the run.
"""
from __future__ import annotations

import importlib.util
import io
import json
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from torch_diagnose.errors import UsageError
from torch_diagnose.options import RunOptions
from torch_diagnose.registry import CheckSpec
from torch_diagnose.report import FileReporter, HtmlWriter, JUnitWriter, MarkdownWriter, TerminalReporter, file_reporters
from torch_diagnose.report.html import render_html
from torch_diagnose.report.markdown import annotation, render_markdown
from torch_diagnose.report.plots import render_plots
from torch_diagnose.results import CheckResult
from torch_diagnose.runner import RunReport

HAS_MPL = importlib.util.find_spec("matplotlib") is not None
HOSTILE = "outputs differ | worst <script>alert(1)</script>\nsecond line 100%"
LINE_PLOT = {"kind": "line", "title": "error per layer", "x": [1, 2, 3], "series": {"max_abs": [0.1, float("nan"), 0.3]},
             "xlabel": "layer", "ylabel": "error", "logy": True}
BAR_PLOTS = [
    {"kind": "bar", "title": "drift", "x": ["fc", "head"], "series": {"fp16": [0.01, 0.02], "bf16": [0.03, 0.04]}},
    {"kind": "barh", "title": "drift (log)", "x": ["fc", "head"], "series": {"fp16": [0.01, 0.02]}, "logy": True},
]


def results() -> list[CheckResult]:
    return [
        CheckResult(check="eval_mode", family="mode", status="pass", summary="every module is in eval mode",
                    metrics={"modules": 12}, duration_s=0.1),
        CheckResult(check="determinism", family="determinism", status="fail", summary=HOSTILE,
                    metrics={"max_abs": float("nan"), "ratio": float("inf"), "runs": 4},
                    culprit="head (DropoutHead)", location="model.py:12", hint="call `model.eval()` | then rerun",
                    details={"layers": [{"name": "fc", "err": 0.5}, {"name": "head", "err": float("inf"), "op": "dropout"}],
                             "plot": LINE_PLOT},
                    duration_s=1.2),
        CheckResult(check="precision", family="precision", status="warn", summary="fp16 drifts by 2%",
                    culprit="encoder.layers.3", hint="keep LayerNorm in fp32", metrics={"drift": 0.02},
                    details={"plot": BAR_PLOTS}, duration_s=0.5),
        CheckResult(check="cuda_sync", family="sync", status="skip", summary="needs a CUDA device"),
        CheckResult(check="onnx", family="export", status="error", summary="RuntimeError: exporter broke",
                    details={"traceback": "Traceback (most recent call last):\n  File \"x.py\", line 1\nRuntimeError: exporter broke"},
                    duration_s=0.3),
    ]


def make_run(items: list[CheckResult] | None = None, **kw) -> RunReport:
    kw.setdefault("options", {"format": ["json", "junit", "md", "html"]})
    run = RunReport(target={"name": "tiny", "source": "tests/tiny.py:make", "model_class": "tiny.Net", "parameters": 123},
                    environment={"python": "3.11", "torch": "2.4.0", "device": "cpu"},
                    notes=["the model was in training mode"], **kw)
    run.results = list(items or [])
    return run


def drive(reporters: list, items: list[CheckResult], run: RunReport | None = None, *, interrupted: bool = False) -> RunReport:
    """Feed reporters exactly as runner.run does."""
    run = run or make_run()
    specs = [CheckSpec(id=r.check, family=r.family, title=r.check, func=lambda ctx, opts: None) for r in items]
    for rep in reporters:
        rep.start(run, specs)
    for spec, result in zip(specs, items):
        for rep in reporters:
            rep.check_started(spec)
        run.results.append(result)
        for rep in reporters:
            rep.check_finished(result, run)
    run.interrupted = interrupted
    run.duration_s = 4.2
    for rep in reporters:
        rep.finish(run)
    return run


@pytest.fixture(autouse=True)
def _clean_env(no_ci_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """No CI environment (conftest.py) and a fixed width."""
    monkeypatch.setenv("COLUMNS", "100")


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One full run written in every format, shared by the parse-back tests (plots take a moment)."""
    out = tmp_path_factory.mktemp("reports")
    with pytest.MonkeyPatch.context() as mp:
        for name in ("GITHUB_ACTIONS", "GITHUB_STEP_SUMMARY"):
            mp.delenv(name, raising=False)
        drive(file_reporters(RunOptions(report_dir=str(out))), results())
    return out


def _cells(row: str) -> list[str]:
    return [c.strip() for c in re.split(r"(?<!\\)\|", row)[1:-1]]


# -- every format parses back --------------------------------------------------------------------
def test_json_is_exactly_to_dict(written: Path) -> None:
    data = json.loads((written / "diagnose.json").read_text())
    assert data["schema_version"] == 1
    assert [r["status"] for r in data["results"]] == ["pass", "fail", "warn", "skip", "error"]
    assert data["results"][1]["metrics"] == {"max_abs": "nan", "ratio": "inf", "runs": 4}
    assert data["summary"] == {"pass": 1, "warn": 1, "fail": 1, "skip": 1, "error": 1}
    assert data["interrupted"] is False and data["duration_s"] == 4.2
    assert not list(written.glob(".*.tmp")), "temp files must not be left behind"


def test_junit_counts_elements_and_properties(written: Path) -> None:
    root = ET.parse(written / "diagnose.xml").getroot()
    assert root.tag == "testsuites"
    suite = root.find("testsuite")
    assert suite is not None and suite.get("name") == "diagnose"
    assert {k: suite.get(k) for k in ("tests", "failures", "errors", "skipped", "time")} == {
        "tests": "5", "failures": "1", "errors": "1", "skipped": "1", "time": "4.200"}
    cases = {c.get("name"): c for c in suite.iter("testcase")}
    assert cases["determinism"].get("classname") == "diagnose.determinism"
    failure = cases["determinism"].find("failure")
    assert failure is not None and failure.get("message") == HOSTILE
    assert "culprit: head (DropoutHead) (model.py:12)" in failure.text
    error = cases["onnx"].find("error")
    assert error is not None and error.text.startswith("Traceback")
    assert cases["cuda_sync"].find("skipped").get("message") == "needs a CUDA device"
    assert "keep LayerNorm in fp32" in cases["precision"].find("system-out").text
    assert cases["eval_mode"].find("failure") is None and cases["precision"].find("failure") is None
    props = {p.get("name"): p.get("value") for p in cases["determinism"].iter("property")}
    assert props["metric.max_abs"] == "nan" and props["metric.ratio"] == "inf" and props["metric.runs"] == "4"
    assert props["culprit"] == "head (DropoutHead)" and props["status"] == "fail" and props["hint"].startswith("call")


def test_markdown_table_sections_and_escaping(written: Path) -> None:
    md = (written / "diagnose.md").read_text(encoding="utf-8")
    assert md.startswith("# 💥 diagnose tiny: 1 error, 1 failed, 1 warning, 1 passed, 1 skipped")
    lines = md.splitlines()
    start = lines.index("| status | check | summary | culprit | hint |")
    assert lines[start + 1] == "|---|---|---|---|---|"
    rows = lines[start + 2:lines.index("", start)]
    assert len(rows) == 5 and all(len(_cells(r)) == 5 for r in rows), "pipes and newlines must not split cells"
    body = {_cells(r)[1]: _cells(r) for r in rows}
    assert list(body) == ["`eval_mode`", "`determinism`", "`precision`", "`cuda_sync`", "`onnx`"]
    fail = body["`determinism`"]
    assert fail[0] == "❌ fail" and "\\|" in fail[2] and "<br>" in fail[2] and "&lt;script&gt;" in fail[2]
    assert fail[3] == "head (DropoutHead) at `model.py:12`" and fail[4] == "call `model.eval()` \\| then rerun"
    assert [body[k][0] for k in ("`eval_mode`", "`precision`", "`cuda_sync`", "`onnx`")] == ["✅ pass", "⚠️ warn", "⏭️ skip", "💥 error"]
    assert "<script>" not in md
    assert "## ❌ fail: `determinism`" in md and "| `max_abs` | nan |" in md
    assert "## ✅" not in md, "passing checks get no section"
    assert "RuntimeError: exporter broke" in md.split("## 💥 error: `onnx`")[1]


def test_html_is_offline_escaped_and_complete(written: Path) -> None:
    page = (written / "diagnose.html").read_text(encoding="utf-8")
    assert page.lower().startswith("<!doctype html>") and page.rstrip().endswith("</html>")
    assert "http://" not in page and "https://" not in page
    urls = re.findall(r"\b(?:src|href)\s*=\s*[\"']?([^\"'\s>]*)", page)
    assert all(url.startswith(("data:image/png;base64,", "#check-")) for url in urls), urls
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "head (DropoutHead)" in page and "model.py:12" in page and "<code>model.eval()</code>" in page
    assert "<th>name</th><th>err</th><th>op</th>" in page, "list of dicts -> table over the union of keys"
    assert page.index("<h2>Root causes</h2>") < page.index("<dt>fix</dt>") < page.index("<h2>Checks</h2>"), "a failing check is a root cause"
    assert "Traceback (most recent call last)" in page and "2.4.0" in page
    if HAS_MPL:
        assert page.count('src="data:image/png;base64,') == 3
    else:
        assert "matplotlib is not installed" in page


# -- plots -----------------------------------------------------------------------------------------
def test_plots_degrade_to_a_note(monkeypatch: pytest.MonkeyPatch) -> None:
    warn = results()[2]
    warn.details["plot"] = [{"kind": "pie", "title": "bad", "series": {"a": [1]}}, BAR_PLOTS[0]]
    run = make_run([warn])
    page = render_html(run)
    assert "bad: plot skipped: ValueError: unknown plot kind" in page
    if HAS_MPL:
        assert page.count("data:image/png") == 1
        assert [(title, uri[:22]) for title, uri in render_plots(run)] == [("precision: drift", "data:image/png;base64,")]
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if it were not installed
    page = render_html(run)
    assert "data:image/png" not in page and "plot skipped: matplotlib is not installed" in page
    assert page.rstrip().endswith("</html>")


# -- rewrite after every check, isolation between formats -----------------------------------------
def test_every_file_is_rewritten_after_each_check(tmp_path: Path) -> None:
    reporters = file_reporters(RunOptions(report_dir=str(tmp_path)))
    run = make_run()
    items = results()
    for rep in reporters:
        rep.start(run, [])
    assert json.loads((tmp_path / "diagnose.json").read_text())["results"] == []
    run.results.append(items[1])
    for rep in reporters:
        rep.check_finished(items[1], run)
    data = json.loads((tmp_path / "diagnose.json").read_text())
    assert [r["check"] for r in data["results"]] == ["determinism"]
    assert ET.parse(tmp_path / "diagnose.xml").getroot().find("testsuite").get("failures") == "1"
    assert "in progress" in (tmp_path / "diagnose.md").read_text(encoding="utf-8")
    page = (tmp_path / "diagnose.html").read_text(encoding="utf-8")
    assert "determinism" in page and "data:image/png" not in page and "plots are drawn when the run finishes" in page


def test_a_broken_format_costs_only_itself(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    reporters = file_reporters(RunOptions(report_dir=str(tmp_path)))
    run = make_run()
    for rep in reporters:
        rep.start(run, [])
    good_xml = (tmp_path / "diagnose.xml").read_text()

    def boom(self, run, *, final=True):
        raise RuntimeError("junit exploded")

    monkeypatch.setattr(JUnitWriter, "render", boom)
    items = results()
    for item in items:
        item.details.pop("plot", None)  # plots are not what this test is about, and they take time
    drive(reporters, items, run)
    assert len(json.loads((tmp_path / "diagnose.json").read_text())["results"]) == 5
    assert "onnx" in (tmp_path / "diagnose.md").read_text(encoding="utf-8")
    assert "onnx" in (tmp_path / "diagnose.html").read_text(encoding="utf-8")
    assert (tmp_path / "diagnose.xml").read_text() == good_xml, "the last complete version stays"
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "RuntimeError: junit exploded" in warnings[0] and "diagnose.xml" in warnings[0]


def test_unencodable_text_still_writes_every_format(tmp_path: Path, capsys) -> None:
    item = CheckResult(check="odd", status="fail", summary="path \udcff\x00 broke", culprit="\x07bell")
    drive(file_reporters(RunOptions(report_dir=str(tmp_path))), [item])
    assert capsys.readouterr().err == ""
    json.loads((tmp_path / "diagnose.json").read_text())
    ET.parse(tmp_path / "diagnose.xml")


def test_file_reporters_options(tmp_path: Path) -> None:
    reporters = file_reporters(RunOptions(report_dir=str(tmp_path / "a" / "b"), format=["json", "html", "json"]))
    assert [r.path.name for r in reporters] == ["diagnose.json", "diagnose.html"]
    assert (tmp_path / "a" / "b").is_dir()
    (tmp_path / "file").write_text("")
    with pytest.raises(UsageError, match="cannot create the report folder"):
        file_reporters(RunOptions(report_dir=str(tmp_path / "file")))
    with pytest.raises(UsageError, match="unknown report format 'pdf'"):
        file_reporters(RunOptions(report_dir=str(tmp_path), format=["pdf"]))


# -- GitHub Actions --------------------------------------------------------------------------------
def test_step_summary_is_appended_once_at_finish(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    summary = tmp_path / "step_summary.md"
    summary.write_text("earlier step\n", encoding="utf-8")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    reporter = FileReporter(MarkdownWriter(), tmp_path)
    run = make_run()
    reporter.start(run, [])
    run.results.append(results()[0])
    reporter.check_finished(run.results[0], run)
    assert summary.read_text(encoding="utf-8") == "earlier step\n"
    run.duration_s = 1.0
    reporter.finish(run)
    text = summary.read_text(encoding="utf-8")
    assert text == "earlier step\n" + (tmp_path / "diagnose.md").read_text(encoding="utf-8")
    assert text.count("# ✅ diagnose tiny") == 1


def test_annotations_on_github_actions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    drive(file_reporters(RunOptions(report_dir=str(tmp_path), format=["md"])), results())
    assert "::" not in capsys.readouterr().out, "no annotations outside GitHub Actions"
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    drive(file_reporters(RunOptions(report_dir=str(tmp_path), format=["md"])), results())
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("::")]
    assert len(lines) == 3
    assert lines[0] == ("::error file=model.py,line=12,title=diagnose determinism::outputs differ | worst "
                        "<script>alert(1)</script>%0Asecond line 100%25%0Aculprit: head (DropoutHead)%0A"
                        "hint: call `model.eval()` | then rerun")
    assert lines[1] == ("::warning title=diagnose precision::fp16 drifts by 2%25%0Aculprit: encoder.layers.3%0A"
                        "hint: keep LayerNorm in fp32")
    assert lines[2] == "::error title=diagnose onnx::RuntimeError: exporter broke"


def test_annotation_paths_relative_to_workspace(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GITHUB_WORKSPACE", str(tmp_path))
    item = CheckResult(check="c", status="fail", summary="s", location=f"{tmp_path}/pkg/m,x.py:7")
    assert annotation(item) == "::error file=pkg/m%2Cx.py,line=7,title=diagnose c::s"
    assert annotation(CheckResult(check="c", status="pass")) is None


# -- terminal --------------------------------------------------------------------------------------
class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_terminal_plain_output(tmp_path: Path) -> None:
    out = io.StringIO()
    drive([TerminalReporter(stream=out, verbose=True)], results(), make_run(options={"report_dir": str(tmp_path), "format": ["json"]}))
    text = out.getvalue()
    assert "\033[" not in text and "running" not in text
    assert text.startswith("diagnose tiny: 5 checks\n")
    assert "  FAIL   determinism    1.2 s  outputs differ | worst <script>alert(1)</script> second line 100%" in text
    assert "culprit: head (DropoutHead) (model.py:12)" in text and "hint: call `model.eval()` | then rerun" in text
    assert "note: the model was in training mode" in text
    assert "1 error, 1 failed, 1 warning, 1 passed, 1 skipped in 4.2 s" in text
    assert "interrupted" not in text and "reports:" not in text, "json was not written by this run"
    header = next(line for line in text.splitlines() if line.lstrip().startswith("status"))
    assert header.split() == ["status", "check", "culprit", "or", "reason"]
    table = text[text.index(header):].split("\n\n")[0].splitlines()
    assert max(len(line) for line in table) <= 100
    assert any("head (DropoutHead)" in line for line in table)


def test_terminal_tty_colour_interrupt_and_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)  # the transient line is for a person's terminal, not CI
    (tmp_path / "diagnose.json").write_text("{}")
    tty = FakeTTY()
    drive([TerminalReporter(stream=tty, report_paths=[tmp_path / "diagnose.json", tmp_path / "missing.xml"])],
          results()[:2], interrupted=True)
    text = tty.getvalue()
    assert "  running eval_mode ...\r\033[K" in text and "\033[1;31mFAIL \033[0m" in text
    assert "culprit: head" not in text, "not verbose"
    assert "interrupted: partial results" in text
    assert f"reports: {tmp_path / 'diagnose.json'}\n" in text
    monkeypatch.setenv("NO_COLOR", "1")
    tty = FakeTTY()
    drive([TerminalReporter(stream=tty)], results()[:1])
    assert "\033[3" not in tty.getvalue() and "\033[1;" not in tty.getvalue()


def test_terminal_lists_reports_this_run_wrote(tmp_path: Path) -> None:
    out = io.StringIO()
    run = make_run(options={"report_dir": str(tmp_path), "format": ["json", "md"]})
    drive([*file_reporters(RunOptions(report_dir=str(tmp_path), format=["json", "md"])), TerminalReporter(stream=out, width=400)],
          results()[:1], run)
    assert f"reports: {tmp_path / 'diagnose.json'}, {tmp_path / 'diagnose.md'}" in out.getvalue()


def test_no_torch_or_matplotlib_on_import() -> None:
    code = "import sys, torch_diagnose.report; assert 'torch' not in sys.modules and 'matplotlib' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parent.parent)


def test_markdown_renders_an_empty_run() -> None:
    assert render_markdown(make_run(), final=False).startswith("# ⏳ diagnose tiny: no checks ran")
    assert "no check has finished yet" in HtmlWriter().render(make_run(), final=False)


def test_plots_are_evidence_passing_checks_draw_only_informative_ones() -> None:
    pytest.importorskip("matplotlib")
    from torch_diagnose.report.plots import render_result_plots

    spec = {"kind": "line", "title": "t", "x": [1, 2], "series": {"y": [1.0, 2.0]}, "xlabel": "x", "ylabel": "y"}
    assert render_result_plots(CheckResult(check="a", status="pass", details={"plot": spec})) == []
    drawn = render_result_plots(CheckResult(check="a", status="pass", details={"plot": {**spec, "always": True}}))
    assert len(drawn) == 1 and drawn[0][1].startswith("data:image/png;base64,")
    assert len(render_result_plots(CheckResult(check="a", status="fail", details={"plot": spec}))) == 1


def test_consequences_are_grouped_under_their_root_in_every_format() -> None:
    from torch_diagnose.plugin.reports import terminal_summary  # noqa: F401  (imports without torch)

    items = [
        CheckResult(check="determinism", family="determinism", status="fail", summary="outputs change between runs",
                    culprit="head (DropoutHead)", location="model.py:12", hint="pass training=self.training"),
        CheckResult(check="eval_mode", family="determinism", status="pass", summary="all modules in eval mode"),
        CheckResult(check="fp16", family="precision", status="skip", caused_by="determinism",
                    summary="not judged: outputs are not deterministic: outputs change between runs (see determinism)"),
        CheckResult(check="onnx", family="export", status="skip", caused_by="determinism",
                    summary="not judged: outputs are not deterministic: outputs change between runs (see determinism)"),
    ]
    run = make_run(items)
    table = " ".join(" ".join(TerminalReporter(stream=io.StringIO(), color=False).table(items)).split())
    assert "determinism head (DropoutHead)" in table
    assert "↳ consequences of determinism: fp16, onnx (not judged)" in table
    assert "eval_mode" not in table, "passes are only counted"
    md = render_markdown(run)
    assert md.startswith("# ❌ diagnose tiny: 1 failed, 1 passed, 2 skipped — 1 root cause, 2 consequences (not judged)")
    assert "## Root causes" in md and "**fix:** pass training=self.training" in md
    assert "| ⏭️ skip | ↳ `fp16` |" in md
    page = render_html(run)
    assert page.index("<h2>Root causes</h2>") < page.index("<h2>Checks</h2>") and 'class="skip consequence"' in page
    suite = ET.fromstring(JUnitWriter().render(run).split("\n", 1)[1])
    assert suite.find(".//testcase[@name='onnx']/skipped").get("message").endswith("(see determinism)")
    assert suite.find(".//property[@name='root_causes']").get("value") == "1"
    assert run.exit_code() == 1 and run.to_dict()["consequences"] == {"fp16": "determinism", "onnx": "determinism"}
