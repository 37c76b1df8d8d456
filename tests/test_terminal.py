"""The terminal a person reads: every line fits the width without splitting a word or a path, the closing
summary is compact and says each thing once, `-q` is one line per check, the status line shows what a
long check is doing (in place on a terminal, one plain line on a log), shared work is named.

Hand-built runs with a fixed width: no model, no torch needed by the code under test."""
from __future__ import annotations

import io
import re

import pytest

from torch_diagnose.registry import CheckSpec
from torch_diagnose.report import TerminalReporter
from torch_diagnose.report.live import ERASE, LiveStatus
from torch_diagnose.report.wrap import MIN_WIDTH, clip, hang, hang_items, terminal_width
from torch_diagnose.results import CheckResult
from torch_diagnose.runner import RunReport

PATH = "/home/someone/projects/a-long-project-name/src/models/attention_block.py:123"
TOKEN = "x" * 70  # longer than the text column at every width: it stands on a line of its own
LONG = ("outputs change between runs of the same input (3 of 3 runs differ; worst: seed 2, max abs diff 0.845) "
        f"because the module at {PATH} draws a random mask on every call; {TOKEN} then more words follow here")
HINT = f"pass `training=self.training` to F.dropout in `Block.forward` ({PATH}) and rerun the check"
ANSI = re.compile(r"\033\[[0-9;]*[A-Za-z]")


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


pytestmark = pytest.mark.usefixtures("no_ci_env")


def items() -> list[CheckResult]:
    return [
        CheckResult(check="eval_mode", status="pass", summary="all 68 module(s) are in eval mode", duration_s=0.1),
        CheckResult(check="determinism", status="fail", summary=LONG, culprit="encoder.layers.3.attention.dropout (Dropout)",
                    location=PATH, hint=HINT, duration_s=3.1, shared_s=1.2, shared={"fp64 reference": 1.0, "fp32 reference": 0.2}),
        CheckResult(check="fp16", status="skip", caused_by="determinism", details={"blocked_by": "determinism"},
                    summary=f"not judged: outputs are not deterministic: {LONG} (see determinism)"),
        CheckResult(check="onnx", status="skip", caused_by="determinism",
                    summary=f"not judged: outputs are not deterministic: {LONG} (see determinism)"),
        CheckResult(check="weights_roundtrip", status="warn", summary="a buffer outside the state_dict: " + LONG,
                    hint="register it as a buffer", duration_s=0.4),
        CheckResult(check="torchscript", status="error", summary="RuntimeError: the exporter broke at " + PATH, duration_s=0.2),
    ]


def drive(reporter: TerminalReporter, results: list[CheckResult], progress: dict[str, list[str]] | None = None) -> str:
    run = RunReport(target={"name": "tiny"}, notes=[f"the model was handed over in training mode; see {PATH}"],
                    options={"format": []})
    specs = [CheckSpec(id=r.check, family="t", title=r.check, func=lambda ctx, opts: None) for r in results]
    reporter.start(run, specs)
    for spec, result in zip(specs, results):
        reporter.check_started(spec)
        for text in (progress or {}).get(spec.id, []):
            reporter.check_progress(spec, text)
        run.results.append(result)
        reporter.check_finished(result, run)
    run.duration_s = 7.5
    reporter.finish(run)
    return reporter.stream.getvalue()


def assert_fits(text: str, width: int) -> None:
    """No line over `width` unless it holds one unbreakable token (after its indent or head)."""
    for line in ANSI.sub("", text).splitlines():
        if len(line) > width:
            tokens = line.split()
            longest = max(tokens, key=len)
            assert tokens[-1] == longest and len(longest) > width // 2, f"line over {width} with breakable text: {line!r}"
            assert len(line) - len(longest) <= 9, f"an overlong token stands alone near the left: {line!r}"


def words(text: str) -> list[str]:
    return ANSI.sub("", text).split()


@pytest.mark.parametrize("width", [60, 80, 120])
def test_every_line_fits_and_no_word_or_path_is_split(width: int) -> None:
    text = drive(TerminalReporter(stream=io.StringIO(), color=False, verbose=True, width=width), items())
    assert_fits(text, width)
    tokens = words(text)
    for token in (PATH, TOKEN, f"{PATH})", "`training=self.training`"):
        assert token in tokens or any(t.startswith(token) or t.endswith(token) for t in tokens), token
    # the long summary comes back word for word, in order, from the wrapped live line
    flat = " ".join(tokens)
    assert " ".join(LONG.split()) in flat
    assert " ".join(HINT.split()) in flat
    assert "culprit: encoder.layers.3.attention.dropout (Dropout)" in flat
    # continuation lines hang under the text column
    lines = text.splitlines()
    first = next(i for i, line in enumerate(lines) if " determinism " in line and "FAIL" in line)
    column = lines[first].index("outputs")
    if width - column >= 28:
        assert lines[first + 1].startswith(" " * column) and lines[first + 1][column] != " "


def test_narrow_terminals_are_treated_as_60_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "40")
    assert terminal_width() == MIN_WIDTH and terminal_width(30) == MIN_WIDTH
    monkeypatch.setenv("COLUMNS", "97")
    assert terminal_width() == 97 and TerminalReporter(stream=io.StringIO()).width() == 97
    assert TerminalReporter(stream=io.StringIO(), width=80).width() == 80


def test_wrapping_helpers() -> None:
    words40 = " ".join(["word"] * 12)
    assert hang("  PASS  a  ", words40, 50) == ["  PASS  a  " + " ".join(["word"] * 8), " " * 11 + " ".join(["word"] * 4)]
    assert hang("  PASS  " + "a" * 35 + "  ", words40, 60)[1] == "    " + " ".join(["word"] * 9), "no room: a short indent"
    assert hang("head: ", f"see {PATH} now", 60)[1] == "    " + PATH, "a token too long for the indent moves left"
    assert hang("x: ", "7.5\xa0s", 60) == ["x: 7.5 s"], "glued words print with a plain space"
    assert hang("", "w" * 54 + " in 7.5\xa0s", 60) == ["w" * 54 + " in", "7.5 s"], "a number keeps its unit"
    assert hang("  FAIL  check  ", PATH + " broke", 60) == ["  FAIL  check", "    " + PATH, " " * 15 + "broke"]
    assert hang_items("reports: ", ["/a/b c.json", "/a/d.md"], 60) == ["reports: /a/b c.json, /a/d.md"]
    assert hang_items("reports: ", ["/r/" + "a" * 40 + ".json", "/r/" + "b" * 40 + ".md"], 60)[1].strip().startswith("/r/b")
    assert clip("  abc   def", 20) == "  abc def" and clip("abcdefghij", 5) == "abcd…"


def test_closing_summary_is_compact_and_says_each_thing_once() -> None:
    text = drive(TerminalReporter(stream=io.StringIO(), color=False, verbose=False, width=80), items())
    closing = text[text.index("  status  check"):]
    rows = closing.split("\n\n")[0].splitlines()
    assert rows[0].split() == ["status", "check", "culprit", "or", "reason"]
    assert [r.split()[1] for r in rows[1:] if r.split()[0] in ("FAIL", "WARN", "ERROR")] == ["determinism", "weights_roundtrip", "torchscript"]
    assert "eval_mode" not in closing, "passes are only counted"
    assert any("encoder.layers.3.attention.dropout (Dropout)" in r for r in rows)
    assert all(len(r) <= 80 for r in rows) and any(r.endswith("…") for r in rows), "long reasons are cut in the table only"
    assert "↳ consequences of determinism: fp16, onnx (not judged)" in " ".join(closing.split())
    flat = " ".join(text.split())
    # fix lines for failing root causes only (the warning's hint is not repeated), with the full location
    assert f"fix determinism: at {PATH}: {' '.join(HINT.split())}" in flat and "fix weights_roundtrip" not in flat
    # every summary is printed once (live), never again in the summary
    assert flat.count("outputs change between runs of the same input") == 2  # determinism + weights_roundtrip
    assert "1 error, 1 failed, 1 warning, 1 passed, 2 skipped — 2 root causes, 2 consequences (not judged) in 7.5 s" in flat
    # consequences say whose they are, not the root's story again
    assert "SKIP   fp16                 0.0 s  not judged: a consequence of determinism" in text


def test_a_clean_run_has_no_table() -> None:
    text = drive(TerminalReporter(stream=io.StringIO(), color=False, width=80), items()[:1])
    assert "status" not in text and "fix " not in text and "1 passed in 7.5 s" in text


def test_shared_work_is_shown_on_the_line_of_the_check_that_paid() -> None:
    text = drive(TerminalReporter(stream=io.StringIO(), color=False, width=120), items())
    line = next(line for line in text.splitlines() if "FAIL" in line)
    assert "  FAIL   determinism          1.9 s  " in line, "own time: 3.1 s less 1.2 s shared"
    assert "(+1.2 s shared: fp64 reference, fp32 reference)" in " ".join(text.split())
    assert "shared" not in next(line for line in text.splitlines() if "eval_mode" in line)


def test_quiet_is_one_line_per_check_cut_to_the_width_on_a_terminal() -> None:
    out = drive(TerminalReporter(stream=FakeTTY(), color=False, quiet=True, width=60), items(), {"onnx": ["case 1/2"]})
    lines = out.splitlines()
    assert len(lines) == len(items()) and all(len(line) <= 60 for line in lines)
    assert lines[1].startswith("FAIL   determinism        outputs change") and lines[1].endswith("…")
    assert "running" not in out and "\r" not in out
    log = drive(TerminalReporter(stream=io.StringIO(), color=False, quiet=True, width=60), items())
    assert len(log.splitlines()) == len(items()) and " ".join(LONG.split()) in log, "a log keeps the full line"


def test_progress_on_a_terminal_is_one_transient_line() -> None:
    tty = FakeTTY()
    text = drive(TerminalReporter(stream=tty, color=False, width=60), items()[:2],
                 {"determinism": ["sweep case 3/12: x.dim2=9", "building the fp64 reference " + "y" * 80]})
    assert "  running determinism ... sweep case 3/12: x.dim2=9" in text
    assert ERASE in text and text.count("running determinism") >= 2
    for chunk in text.split("\r"):  # every drawn status line fits on one row
        assert len(ANSI.sub("", chunk.split("\n")[0])) <= 60
    assert text.splitlines()[-1] == "1 failed, 1 passed in 7.5 s"


def test_no_transient_line_on_a_log_or_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    log = drive(TerminalReporter(stream=io.StringIO(), color=False, width=80), items()[:2], {"determinism": ["case 1/2"]})
    assert "running" not in log and "\r" not in log and "case 1/2" not in log, "short phases leave no trace in a log"
    monkeypatch.setenv("CI", "true")
    tty = drive(TerminalReporter(stream=FakeTTY(), color=False, width=80), items()[:2], {"determinism": ["case 1/2"]})
    assert "running" not in tty and "\r" not in tty


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_live_status_in_place_and_on_a_log() -> None:
    clock, out = Clock(), []
    live = LiveStatus(out.append, lambda: 80, transient=True, clock=clock, threaded=False)
    live.begin("onnx")
    live.update("sweep case 3/12: x.dim2=9")
    clock.now += 12
    live.tick()
    assert out[-1] == ERASE + "  running onnx ... sweep case 3/12: x.dim2=9 (12 s)"
    live.end()
    assert out[-1] == ERASE and not live.shown
    clock.now += 5
    live.tick()
    assert out[-1] == ERASE, "nothing is drawn between checks"

    out.clear()
    log = LiveStatus(out.append, lambda: 80, transient=False, clock=clock, threaded=False, slow_s=10)
    log.begin("onnx")
    log.update("building the ONNX export")
    clock.now += 9
    log.tick()
    assert out == [], "a phase shorter than slow_s leaves no line"
    clock.now += 2
    log.tick()
    log.tick()
    assert out == ["  ... onnx: building the ONNX export, running for 11 s\n"], "one line per long phase"
    log.update("sweep case 1/9")
    clock.now += 10
    log.tick()
    assert len(out) == 2 and "sweep case 1/9, running for 10 s" in out[-1]
    log.close()


def test_the_status_line_ticks_by_itself() -> None:
    import time

    tty = FakeTTY()
    reporter = TerminalReporter(stream=tty, color=False, width=80)
    reporter.live.tick_s = 0.01
    reporter.check_started(CheckSpec(id="slow", family="t", title="slow", func=lambda ctx, opts: None))
    time.sleep(0.2)
    reporter.live.close()
    assert tty.getvalue().count("running slow ...") >= 3
