"""pytest plugin (entry point `pytest11`): the checks inside a user's own test suite and CI.

This module holds the hooks only; the work is in `torch_diagnose.plugin` (session state, generated
items, fixtures, check discovery, reports). Faces, all thin over the runner (`run_one`) and one
shared Context per target and process:

* `pytest --diagnose-model SPEC` (no test paths named) adds one test item per selected check,
  named after its id (`-k onnx` selects it); each fails with the check's summary, culprit, hint,
  metrics and details. With test paths named, SPEC only feeds the fixtures. The run options are
  the CLI's (`OPTION_DEFS`), as `--diagnose-<name>`.
* Fixtures: `diagnose_target`, `diagnose("onnx", **options)`, `golden(target=None, name=None)`,
  `compare(candidate, target=None)` and one `check_<id>` per registered check.
* `--diagnose-compare CANDIDATE` adds the `compare` check (alone, unless --diagnose-checks names others).
* Marker `@pytest.mark.diagnose(SPEC?, model=SPEC, <run option>=..., <check id>={...})`.
* pytest-xdist: each worker loads the target lazily, once; results travel to the controller on
  the test reports, and only the controller (or the single process) writes `reports/`.

Importing this module must not import torch: pytest starts in projects that never use it.
"""
from __future__ import annotations

from typing import Any

import pytest

from .errors import UsageError
from .options import OPTION_DEFS
from .plugin import reports
from .plugin.compare import compare  # noqa: F401 - a fixture pytest collects here
from .plugin.fixtures import check_fixtures, diagnose, diagnose_target, golden  # noqa: F401 - fixtures pytest collects here
from .plugin.items import add_generated_items
from .plugin.session import STATE, SessionState, state


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("diagnose", "torch-diagnose: model checks")
    group.addoption("--diagnose-model", action="store", default=None, metavar="SPEC",
                    help="target to diagnose: adds one test per selected check (demo, file.py:factory, "
                         "module:factory, torchvision:NAME, model file)")
    for d in OPTION_DEFS:
        kwargs: dict[str, Any] = {"dest": "diagnose_" + d.name, "help": d.help, "default": None}
        if d.flag:
            kwargs["action"] = "store_true"
        elif d.repeatable:
            kwargs.update(action="append", metavar=d.metavar)
        else:
            kwargs.update(action="store", metavar=d.metavar or d.name.upper())
        group.addoption(d.pytest_flag, **kwargs)
    group.addoption("--golden-update", action="store_true", default=False, dest="golden_update",
                    help="record golden outputs (the golden check and fixture) instead of comparing with them")


class _HookSpecs:
    """Hooks this plugin adds (a conftest.py may implement them)."""

    @staticmethod
    @pytest.hookspec
    def pytest_diagnose_reporters(config: pytest.Config, options: Any, reporters: list[Any]) -> None:
        """Append reporters (start/check_started/check_finished/finish) for the session's check results.

        Called once, in the xdist controller or the single process, after the tests ran.
        """


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    pluginmanager.add_hookspecs(_HookSpecs)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "diagnose(SPEC=None, *, model=None, **options): torch-diagnose settings for this test: the target spec, "
        "run options (atol=, device=, seed=, ...) and check options as dicts (determinism={'repeats': 3})",
    )
    session = SessionState(config)
    config.stash[STATE] = session
    if session.spec or session.flags_given():
        try:
            session.options  # surface a malformed --diagnose-* option as a usage error now, naming that flag
        except UsageError as exc:
            raise pytest.UsageError(f"torch-diagnose: {exc}") from None
    config.pluginmanager.register(check_fixtures(), "torch_diagnose_check_fixtures")
    config.pluginmanager.register(reports.ResultCollector(session), "torch_diagnose_results")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    """Add the generated items first, before -k/-m deselection sees the list (tryfirst)."""
    add_generated_items(session, config, items)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    reports.attach_results(item, report)
    return report


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    reports.finish_session(session.config, state(session.config))


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    reports.terminal_summary(terminalreporter, state(config))

