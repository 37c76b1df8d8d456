"""Results travel with the test reports (from xdist workers too); the controller, or the single
process, writes `reports/` and the terminal summary once, after the tests ran."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ..options import RunOptions
from ..results import SKIP, CheckResult
from .matrix import complete_matrix
from .session import GOLDEN, PENDING, SessionState


def attach_results(item: pytest.Item, report: pytest.TestReport) -> None:
    """Move an item's pending results onto its test report (plain dicts: xdist serialises them)."""
    pending = item.stash.get(PENDING, None)
    if pending:
        report.diagnose_results = list(pending)
        pending.clear()


class ResultCollector:
    """Gathers the results that arrive with test reports (from xdist workers too); one per config,
    registered in pytest_configure, so nested sessions (pytester) keep their results apart. Under
    pytest-xdist it also picks the scheduler that keeps the generated check items on one worker."""

    def __init__(self, state: SessionState) -> None:
        self.state = state

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        payloads = getattr(report, "diagnose_results", None)
        if payloads and not self.state.is_worker:
            self.state.payloads.extend(payloads)

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_make_scheduler(self, config: pytest.Config, log: Any) -> Any:
        from .distribute import make_scheduler

        return make_scheduler(config, log, self.state)


def finish_session(config: pytest.Config, state: SessionState) -> None:
    """Write the reports, as the CLI does, whenever the session has results: those of the generated
    items and those of the user's own tests that called the fixtures (xdist workers included)."""
    if state.is_worker or not state.payloads:
        return
    complete_matrix(state)
    try:
        state.report_paths = _write_reports(config, state)
    except Exception as exc:  # a report writer must not turn a green run red; say what happened
        tr = config.pluginmanager.get_plugin("terminalreporter")
        if tr is not None:
            tr.write_line(f"torch-diagnose: writing reports failed: {type(exc).__name__}: {exc}", red=True)


def _write_reports(config: pytest.Config, state: SessionState) -> list[str]:
    """Feed every result to the file reporters and the conftest's reporters; the files written."""
    from ..registry import CheckSpec
    from ..results import jsonable
    from ..runner import RunReport

    options = _in_invocation_dir(config, state.options)
    payloads = _ordered(state.payloads)
    targets = {p["target"].get("name"): p["target"] for p in payloads}
    primary = payloads[0]
    report = RunReport(target=primary["target"], environment=primary["environment"], options=jsonable(options.as_dict()))
    if len(targets) > 1:
        report.notes.append(f"results for {len(targets)} targets: {', '.join(map(str, targets))}")
    specs: dict[str, CheckSpec] = {}
    for p in payloads:
        check_id = p["result"].get("check", "")
        specs.setdefault(check_id, CheckSpec(id=check_id, family=p["result"].get("family", ""), title=p["title"],
                                             func=lambda ctx, opts: None, order=p["order"]))
    files = _file_reporters(options)
    reporters: list[Any] = list(files)
    config.pluginmanager.hook.pytest_diagnose_reporters(config=config, options=options, reporters=reporters)
    for rep in reporters:
        rep.start(report, list(specs.values()))
    for p in payloads:
        result = CheckResult.from_dict(p["result"])
        if not p["generated"]:  # a fixture's result says which test produced it
            result.details.setdefault("test", p["nodeid"])
        for rep in reporters:
            rep.check_started(specs[result.check])
        report.results.append(result)
        report.duration_s += result.duration_s
        for rep in reporters:
            rep.check_finished(result, report)
    for rep in reporters:
        rep.finish(report)
    return [str(rep.path) for rep in files]


def _in_invocation_dir(config: pytest.Config, options: RunOptions) -> RunOptions:
    """A relative report folder is relative to where pytest was started (as the CLI's is to the shell's)."""
    folder = Path(options.report_dir)
    if folder.is_absolute():
        return options
    return RunOptions(**{**options.as_dict(), "report_dir": str(Path(config.invocation_params.dir) / folder)})


def _ordered(payloads: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Generated checks first in the registry's order, then fixture results by test: the same order
    however xdist distributed the work."""
    return sorted(payloads, key=lambda p: (not p["generated"], p["order"] if p["generated"] else 0, p["nodeid"], p["order"]))


def _file_reporters(options: RunOptions) -> list[Any]:
    try:
        from ..report import file_reporters
    except ImportError:
        return []
    return list(file_reporters(options))


def terminal_summary(tr: Any, state: SessionState) -> None:
    """One line per result (a root cause followed by one line naming its consequences), and how to
    record the golden outputs that are missing."""
    if state.is_worker or not state.payloads:
        return
    tr.section("torch-diagnose")
    ordered = _ordered(state.payloads)
    present = {p["result"]["check"] for p in ordered}
    follow: dict[str, list[str]] = {}
    for p in ordered:
        root = p["result"].get("caused_by")
        if root and root in present:
            follow.setdefault(root, []).append(p["result"]["check"])
    for p in ordered:
        r = p["result"]
        if r.get("caused_by") in follow:
            continue
        where = "" if p["generated"] else f" ({p['nodeid']})"
        tr.write_line(f"{r['status'].upper():5} {r['check']}{where}: {r['summary']}"[:400])
        if r["check"] in follow:
            names = follow[r["check"]]
            tr.write_line(f"      ↳ consequence{'s' if len(names) > 1 else ''} of {r['check']}: {', '.join(names)} (not judged)")
    if state.report_paths:
        tr.write_line("reports: " + ", ".join(_shown(path) for path in state.report_paths))
    unrecorded = [p for p in state.payloads if p["result"]["check"] == GOLDEN and p["result"]["status"] == SKIP]
    if unrecorded:
        tr.write_line(f"{len(unrecorded)} golden recording(s) missing; record with --golden-update, e.g.:")
        tr.write_line("  " + unrecorded[0]["result"]["summary"].rpartition("record with: ")[2])


def _shown(path: str) -> str:
    """A report path relative to the current folder when it is below it."""
    try:
        return str(Path(path).relative_to(Path.cwd()))
    except ValueError:
        return path
