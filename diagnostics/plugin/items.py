"""Generated items: `pytest --diagnose-model SPEC` adds one test per selected check, named by its id."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from ..errors import UsageError
from .outcome import conclude
from .session import GOLDEN, state


class DiagnoseCollector(pytest.Collector):
    """The parent of the generated check items (`diagnose[SPEC]`); it has no file behind it."""

    def collect(self) -> list[pytest.Item]:  # pragma: no cover - items are made in modifyitems
        return []

    def reportinfo(self) -> tuple[Any, int | None, str]:
        return self.path, None, self.name


class CheckItem(pytest.Item):
    """One check on the --diagnose-model target; the test's name is the check id."""

    def __init__(self, *, check_id: str, spec: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.check_id = check_id
        self.spec = spec

    def runtest(self) -> None:
        session = state(self.config)
        options = session.options
        try:
            target = session.coerce(session.load(self.spec, options), options)
        except UsageError as exc:
            pytest.fail(f"torch-diagnose cannot load target {self.spec!r}: {exc}", pytrace=False)
        given = options.check_options(self.check_id)
        if self.check_id == GOLDEN:
            given.setdefault("record_command", session.record_command(None))
            if not os.path.isabs(given.get("dir", "__golden__")):
                given["dir"] = str(Path(self.config.invocation_params.dir) / given.get("dir", "__golden__"))
        try:
            result = session.run(self.check_id, target, options, given, self, generated=True)
        except UsageError as exc:
            pytest.fail(f"torch-diagnose: {exc}", pytrace=False)
        conclude(session, result, options)

    def reportinfo(self) -> tuple[Any, int | None, str]:
        return self.path, 0, f"diagnose {self.spec} :: {self.check_id}"


def add_generated_items(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    """Put one CheckItem per selected check in front of `items` (only when no test paths are named:
    `pytest tests/test_model.py --diagnose-model SPEC` runs those tests with SPEC as their target;
    xdist workers receive the controller's arguments, so they decide the same)."""
    current = state(config)
    if not current.spec or config.args_source == pytest.Config.ArgsSource.ARGS:
        return
    from ..registry import select_checks

    try:
        specs = select_checks(current.options.checks or None, current.options.skip or None)
    except UsageError as exc:
        raise pytest.UsageError(f"torch-diagnose: {exc}") from None
    name = f"diagnose[{current.spec}]"
    parent = DiagnoseCollector.from_parent(session, name=name, path=current.spec_path(), nodeid=name)
    generated = [CheckItem.from_parent(parent, name=spec.id, check_id=spec.id, spec=current.spec) for spec in specs]
    items[:0] = generated
    # Report them as collected, so the terminal's "collected N items" counts them.
    config.hook.pytest_collectreport(report=pytest.CollectReport(parent.nodeid, "passed", None, list(generated)))
