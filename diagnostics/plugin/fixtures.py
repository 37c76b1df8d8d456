"""The fixtures: `diagnose_target`, `diagnose`, `golden`, and one `check_<id>` per registered check.

The `check_<id>` fixtures are made from the checks' *source* (see `discovery`), so `pytest --fixtures`
documents them without importing torch; torch is imported when a check actually runs.
"""
from __future__ import annotations

import collections
import os
import types
from pathlib import Path
from typing import Any, Callable

import pytest

from ..errors import UsageError
from ..options import OPTION_DEFS
from ..results import CheckResult
from .discovery import discover_checks
from .outcome import conclude
from .session import GOLDEN, GOLDEN_CALLS, state


def marker_settings(node: pytest.Item) -> tuple[str | None, dict[str, Any], dict[str, dict[str, Any]]]:
    """(model spec, run options, check options) from @pytest.mark.diagnose, the closest marker winning."""
    model: str | None = None
    run: dict[str, Any] = {}
    checks: dict[str, dict[str, Any]] = {}
    run_names = {d.name for d in OPTION_DEFS}
    for mark in reversed(list(node.iter_markers("diagnose"))):
        if mark.args:
            model = mark.args[0]
        for key, value in mark.kwargs.items():
            name = key.replace("-", "_")
            if name == "model":
                model = value
            elif name in run_names:
                run[name] = value
            elif isinstance(value, dict):
                checks.setdefault(name, {}).update(value)
            else:
                raise UsageError(f"@pytest.mark.diagnose: {key}={value!r} is neither a run option ({', '.join(sorted(run_names))}) "
                                 f"nor a check id with a dict of its options")
    if checks:
        from ..registry import get_check

        for check_id in checks:
            get_check(check_id)  # unknown ids are a usage error naming the known ones
    return model, run, checks


class _Diagnoser:
    """What the `diagnose`, `golden` and `check_<id>` fixtures hand to a test."""

    def __init__(self, request: pytest.FixtureRequest) -> None:
        self.request = request
        self.state = state(request.config)

    def run(self, check_id: str, target: Any = None, **options: Any) -> CheckResult:
        node = self.request.node
        try:
            model, run_overrides, check_overrides = marker_settings(node)
            opts = self.state.options_for(run_overrides, check_overrides)
            if target is None and model is not None:
                target = model
            if target is None:
                target = self.request.getfixturevalue("diagnose_target")
            target = self.state.coerce(target, opts)
            given = {**opts.check_options(check_id), **options}
            if check_id == GOLDEN:
                given = self._golden_options(node, given)
            result = self.state.run(check_id, target, opts, given, node)
        except UsageError as exc:
            pytest.fail(f"torch-diagnose: {exc}", pytrace=False)
        return conclude(self.state, result, opts, skip_on_skip=check_id == GOLDEN)

    def _golden_options(self, node: pytest.Item, given: dict[str, Any]) -> dict[str, Any]:
        """One recording per test and call: `<test dir>/__golden__/<module>/<test>[.<name>][.<n>].pt`."""
        from ..golden import golden_key

        given = dict(given)
        calls = node.stash.setdefault(GOLDEN_CALLS, collections.Counter())
        label = given.pop("name", "") or ""
        calls[label] += 1
        path = Path(node.path)
        test_part = node.nodeid.partition("::")[2] or node.name
        given["name"] = golden_key(test_part, label, calls[label])
        directory = given.get("dir") or "__golden__"
        if not os.path.isabs(directory):
            directory = str(path.parent / directory / path.stem)
        given["dir"] = directory
        given.setdefault("record_command", self.state.record_command(node))
        return given


class _Diagnose(_Diagnoser):
    def __call__(self, check_id: str, target: Any = None, **options: Any) -> CheckResult:
        """Run check `check_id` on the target (default: the diagnose_target fixture); fail the test
        with the full explanation on fail/error, return the CheckResult otherwise."""
        return self.run(check_id, target, **options)


class _Golden(_Diagnoser):
    def __call__(self, target: Any = None, *, name: str | None = None, **options: Any) -> CheckResult:
        """Compare the target's outputs with this test's recording (skip when none; --golden-update records)."""
        if name:
            options["name"] = name
        return self.run(GOLDEN, target, **options)


class _CheckCaller(_Diagnoser):
    def __init__(self, request: pytest.FixtureRequest, check_id: str) -> None:
        super().__init__(request)
        self.check_id = check_id

    def __call__(self, target: Any = None, **options: Any) -> CheckResult:
        return self.run(self.check_id, target, **options)


@pytest.fixture
def diagnose_target(request: pytest.FixtureRequest) -> Any:
    """The Target the torch-diagnose fixtures check: from `--diagnose-model SPEC`, or from
    `@pytest.mark.diagnose(model=SPEC)` on the test. Loaded once per process and shared.

    Override it in your conftest.py to return a `torch_diagnose.Target`, an `nn.Module` (with
    --diagnose-input-shape) or `(module, example_inputs)`; give the Target a `factory` for the
    weights round trip. Skips the test when no target is given.
    """
    session = state(request.config)
    try:
        model, run_overrides, check_overrides = marker_settings(request.node)
        spec = model or session.spec
        if not spec:
            pytest.skip("no target to diagnose: pass --diagnose-model SPEC, mark the test "
                        "@pytest.mark.diagnose(model=SPEC), or override the diagnose_target fixture in conftest.py")
        return session.load(spec, session.options_for(run_overrides, check_overrides))
    except UsageError as exc:
        pytest.fail(f"torch-diagnose: {exc}", pytrace=False)


@pytest.fixture
def diagnose(request: pytest.FixtureRequest) -> Callable[..., CheckResult]:
    """`diagnose("onnx", **options)` runs one check on the diagnose_target (or `target=`) and
    returns its CheckResult; a `fail` or `error` fails the test with the check's summary, culprit,
    hint, metrics and details. Options: that check's own (see `diagnose --list-checks`); run options
    and per-check options also come from @pytest.mark.diagnose and --diagnose-* flags. Every
    result's metrics are recorded as JUnit properties (`<check>.<metric>`).
    """
    return _Diagnose(request)


@pytest.fixture
def golden(request: pytest.FixtureRequest) -> Callable[..., CheckResult]:
    """`golden(target=None, name=None)`: did this model change? Compares the target's outputs with
    this test's recording in `<test dir>/__golden__/<test module>/<test>.pt` (one file per test and
    call; `name=` labels a call) with the environment beside it in `.env.json`.

    Nothing recorded: the test skips and prints the command that records (`--golden-update`). A
    failure names the outputs that moved and by how much, the weights that changed, the first
    module whose output moved and what changed in the environment since recording.
    """
    return _Golden(request)


_CHECK_FIXTURES: types.ModuleType | None = None


def check_fixtures() -> types.ModuleType:
    """A module-like holder with one `check_<id>` fixture per check found in the check modules'
    source. Built once per process; registered as a plugin so pytest parses (and documents) them."""
    global _CHECK_FIXTURES
    if _CHECK_FIXTURES is None:
        holder = types.ModuleType("torch_diagnose.pytest_check_fixtures")
        for check_id, doc in discover_checks().items():
            setattr(holder, f"check_{check_id}", _make_check_fixture(check_id, doc))
        _CHECK_FIXTURES = holder
    return _CHECK_FIXTURES


def _make_check_fixture(check_id: str, doc: str) -> Any:
    def fixture(request: pytest.FixtureRequest) -> Callable[..., CheckResult]:
        return _CheckCaller(request, check_id)

    fixture.__name__ = fixture.__qualname__ = f"check_{check_id}"
    fixture.__doc__ = (f"{doc}\n\nUse: `check_{check_id}(target=None, **options)` runs the `{check_id}` check on the "
                       f"diagnose_target (or `target`); fails the test on fail/error, returns the CheckResult otherwise.")
    return pytest.fixture(name=f"check_{check_id}")(fixture)
