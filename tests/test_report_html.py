"""diagnose.html from real results: verdict first, details as tables (never raw JSON), every plot drawn.

The results come from real checks on tiny faulty models (a seconds-long run): an fp16 overflow (a
per-layer table and a plot), a random head (determinism fails, fp16 follows as a consequence), a
batch size baked in by `int()` (export cases that raise) with the benchmark's deployment matrix.
The structure is checked with html.parser; layout (no sideways overflow, every plot image loaded) in
a real headless browser when Debian's chromium is installed (skipped otherwise, e.g. in CI).
"""
from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from torch_diagnose import Target
from torch_diagnose.options import RunOptions
from torch_diagnose.report.html import render_html
from torch_diagnose.results import CheckResult
from torch_diagnose.runner import RunReport, run
from tests.models import export as export_models
from tests.models import precision as precision_models
from tests.models import root_cause as rc

HAS_MPL = importlib.util.find_spec("matplotlib") is not None
CHROMIUM = shutil.which("chromium")
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync")


def _run(target: Target, checks: str) -> RunReport:
    options = RunOptions(checks=checks.split(","), seed=0, option={"benchmark": {"min_time_s": "0.02"}})
    return run(target, options)


@pytest.fixture(scope="module")
def real_run() -> RunReport:
    """One report over the results of three real runs (every kind of finding the page must show)."""
    parts = [_run(Target(*precision_models.overflow_net()), "fp16"),
             _run(Target(*rc.random_head()), "determinism,fp16"),
             _run(Target(*export_models.int_size()), "torch_export,benchmark")]
    report = parts[-1]
    report.results = [r for part in parts for r in part.results]
    report.notes.append("a note with `code` in it")
    report.duration_s = sum(p.duration_s for p in parts)
    return report


@pytest.fixture(scope="module")
def page(real_run: RunReport) -> str:
    return render_html(real_run)


class Outline(HTMLParser):
    """What the tests look at: headings in order, images, text outside <pre>/<code>/<style>, wide tables."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[tuple[str, dict[str, str]]] = []
        self.headings: list[tuple[str, str]] = []  # (tag, text)
        self.images: list[dict[str, str]] = []
        self.text: list[str] = []
        self.tables_outside_scroll = 0
        self._heading: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list) -> None:
        attr = {k: v or "" for k, v in attrs}
        if tag == "img":
            self.images.append({**attr, "in_details": str(any(t == "details" for t, _ in self.stack))})
            return
        if tag in ("br", "meta"):
            return
        if tag == "table" and not any("scroll" in a.get("class", "") for _, a in self.stack):
            self.tables_outside_scroll += 1
        if tag in ("h1", "h2", "h3", "h4"):
            self._heading = []
        self.stack.append((tag, attr))

    def handle_endtag(self, tag: str) -> None:
        if tag in ("h1", "h2", "h3", "h4") and self._heading is not None:
            self.headings.append((tag, " ".join("".join(self._heading).split())))
            self._heading = None
        while self.stack:
            if self.stack.pop()[0] == tag:
                break

    def handle_data(self, data: str) -> None:
        if self._heading is not None:
            self._heading.append(data)
        if not any(t in ("pre", "code", "style", "script", "title") for t, _ in self.stack):
            self.text.append(data)


def outline(page: str) -> Outline:
    parser = Outline()
    parser.feed(page)
    return parser


def test_verdict_comes_first_with_culprit_fix_and_consequences(real_run: RunReport, page: str) -> None:
    statuses = {r.check: r.status for r in real_run.results if not r.caused_by}
    assert statuses["determinism"] == "fail" and statuses["torch_export"] == "fail"
    assert [r.check for r in real_run.results if r.caused_by] == ["fp16"], "fp16 of the random head is a consequence"
    heads = [text for _, text in outline(page).headings]
    order = [heads.index(h) for h in ("Root causes", "Deployment matrix (benchmark)", "Checks", "Run")]
    assert order == sorted(order), heads
    verdict = page[page.index('<section id="verdict">'):page.index('<section id="matrix">')]
    for check in ("fp16", "determinism", "torch_export"):
        assert f'href="#check-{check}"' in verdict
    export = real_run.result("torch_export")
    assert export.culprit and export.location and "tests/models/export.py:" in export.location
    assert "<dt>culprit</dt>" in verdict and "<dt>fix</dt>" in verdict and "export.py:" in verdict
    assert "consequence of determinism:" in verdict and "(not judged)" in verdict
    assert "a note with <code>code</code> in it" in verdict


def test_details_are_tables_and_lists_never_raw_json(page: str) -> None:
    parsed = outline(page)
    text = "".join(parsed.text)
    for raw in ('{"', "[{", "{'", "[]", "{}"):
        assert raw not in text, f"raw value {raw!r} in the page text"
    assert not re.search(r">\s*(True|False|None)\s*<", page), "booleans and None as symbols, not Python words"
    assert "`" not in text, "markdown backticks must become <code>"
    assert "<pre>{" not in page and "<pre>[" not in page
    assert parsed.tables_outside_scroll == 0, "every table sits in a sideways-scrolling box"
    assert ".scroll{overflow-x:auto" in page
    assert page.count('class="yes"') >= 1 and page.count('class="no"') >= 1, "booleans as ✓/✗"
    assert '<span class="star">★ yes</span>' in page, "the recommended variant is starred, as in the Markdown"
    layers = page[page.index('id="check-fp16"'):]
    assert "<th>carried rms rel</th>" in layers and '<td class="n">' in layers, "per-layer errors as a table"


def test_every_plot_is_an_image_and_no_empty_plot_heading(real_run: RunReport, page: str) -> None:
    if not HAS_MPL:
        pytest.skip("matplotlib is not installed")
    parsed = outline(page)
    assert parsed.images, "the failing checks and the benchmark have plots"
    for img in parsed.images:
        assert re.fullmatch(r"data:image/png;base64,[A-Za-z0-9+/=]{200,}", img["src"]), img["alt"]
        assert img["in_details"] == "False", f"plot {img['alt']!r} is hidden in a collapsed block"
    sections = re.split(r"<h4>Plots</h4>", page)
    assert all('<img class="plot"' in after.split("</div></div>")[0] for after in sections[1:]), "a Plots heading without an image"
    assert page.count("<h4>Plots</h4>") == len(re.findall(r'<div class="plots">', page))
    matrix = page[page.index('<section id="matrix">'):page.index('<section id="checks">')]
    assert matrix.count('<img class="plot"') == 2, "latency vs batch size and per variant, visible with the matrix"


def test_the_sweep_plot_shows_raised_cases() -> None:
    pytest.importorskip("matplotlib")
    from torch_diagnose.export.cases import SweepCase
    from torch_diagnose.export.run import CaseResult, SweepOutcome

    outcome = SweepOutcome([CaseResult(SweepCase("example", "example", None), "ok", 0.0),
                            CaseResult(SweepCase("x dim 0 (batch)=5", "shape", None), "raised", None, "Guard failed"),
                            CaseResult(SweepCase("values x10", "values", None), "mismatch", 0.5)], [])
    spec = outcome.plot("t")  # what an export check records in details["plot"]
    assert spec["x"] == ["example", "x dim 0 (batch)=5", "values x10"]
    assert spec["series"]["max |artifact - eager|"] == [0.0, None, 0.5] and spec["status"] == ["ok", "raised", "mismatch"]
    assert spec["messages"][1] == "Guard failed"
    result = CheckResult(check="onnx", status="fail", details={"cases": outcome.rows(), "plot": spec})
    run_ = RunReport(target={"name": "t"})
    run_.results = [result]
    assert render_html(run_).count('<img class="plot"') == 1


def test_a_run_without_plots_has_no_plots_heading() -> None:
    run_ = RunReport(target={"name": "t"})
    run_.results = [CheckResult(check="eval_mode", status="pass", summary="ok", details={"flags": {"a": True}}),
                    CheckResult(check="onnx", status="fail", summary="x", details={"plot": {"kind": "pie", "series": {"a": [1]}}})]
    page = render_html(run_)
    assert "<h4>Plots</h4>" in page and "plot skipped: ValueError" in page  # a note, under its heading
    run_.results[1].details = {}
    assert "Plots" not in render_html(run_)


# -- in a real browser -------------------------------------------------------------------------------
_PROBE = """<script>window.addEventListener('load', function () {
  var imgs = Array.from(document.querySelectorAll('img.plot'));
  var loaded = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  var out = document.createElement('pre'); out.id = 'probe';
  out.textContent = 'overflow=' + (document.documentElement.scrollWidth > window.innerWidth) +
    ' width=' + window.innerWidth + ' scroll=' + document.documentElement.scrollWidth +
    ' images=' + imgs.length + ' loaded=' + loaded;
  document.body.appendChild(out);
});</script>"""


def browser_probe(page: str, width: int, folder: Path) -> dict[str, str]:
    """Open the page in headless chromium at `width` px and read back what the probe script saw."""
    path = folder / f"probe_{width}.html"
    path.write_text(page.replace("</body>", _PROBE + "</body>"), encoding="utf-8")
    cmd = [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={folder / 'profile'}", f"--window-size={width},1000",
           "--virtual-time-budget=5000", "--dump-dom", path.as_uri()]
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout
    found = re.search(r'<pre id="probe">([^<]*)</pre>', dom)
    assert found, f"the probe did not run in chromium (DOM of {len(dom)} characters)"
    return dict(item.split("=", 1) for item in found.group(1).split())


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (not installed in CI)")
@pytest.mark.parametrize("width", [1400, 900])
def test_in_chromium_no_sideways_overflow_and_every_plot_loads(page: str, width: int, tmp_path: Path) -> None:
    seen = browser_probe(page, width, tmp_path)
    assert seen["overflow"] == "false", seen
    expected = page.count('<img class="plot"')
    assert int(seen["images"]) == expected and int(seen["loaded"]) == expected, seen
