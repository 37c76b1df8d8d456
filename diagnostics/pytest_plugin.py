"""pytest plugin (entry point `pytest11`): the checks inside a user's own test suite and CI.

Faces, all thin over the runner (`run_one`) and one shared Context per target and process:
* `pytest --diagnose-model SPEC` (no test paths named) adds one test item per selected check,
  named after its id (`-k onnx` selects it); each fails with the check's summary, culprit, hint,
  metrics and details. With test paths named (`pytest tests/test_model.py --diagnose-model SPEC`)
  SPEC only feeds the fixtures. The run options are the CLI's (`OPTION_DEFS`), as `--diagnose-<name>`.
* Fixtures: `diagnose_target` (from --diagnose-model or `@pytest.mark.diagnose(model=SPEC)`;
  override it in conftest.py), `diagnose` (`diagnose("onnx", **options)`), `golden`
  (`golden(target=None, name=None, **options)`) and one `check_<id>` per registered check.
* Marker `@pytest.mark.diagnose(SPEC?, model=SPEC, <run option>=..., <check id>={...})`.
* Golden recordings go one file per test and call under `<test dir>/__golden__/<test module>/`;
  `--golden-update` records; a run with nothing recorded skips and prints the command that records.
* pytest-xdist: each worker collects the same items and loads the target lazily on its first
  check, once per worker; its Context (fp32/fp64 references, exports) is shared by every check and
  test in that worker, and nothing is shared between workers through files. Results travel to the controller on the test reports (a
  `diagnose_results` attribute that xdist serialises with the report); only the controller, or
  the single process without xdist, writes `reports/`. Metrics become JUnit XML properties.

Importing this module must not import torch: pytest starts in projects that never use it. The
`check_<id>` fixtures are therefore generated from the check modules' *source* (their `@register`
decorators and docstrings, read with `ast`), without importing them; `pytest --fixtures` documents
them, and torch is imported only when a check actually runs or --diagnose-model is given.
"""
from __future__ import annotations

import ast
import collections
import json
import os
import re
import shlex
import sys
import types
import weakref
from pathlib import Path
from typing import Any, Callable

import pytest

from .errors import UsageError
from .options import OPTION_DEFS, RunOptions, pyproject_defaults
from .results import ERROR, SEVERITY, SKIP, CheckResult

#: Run options whose values do not change what a Context computes (kept out of its cache key).
_NOT_CONTEXT = ("checks", "skip", "option", "report_dir", "format", "fail_on", "debug", "isolate", "timeout")
_GOLDEN = "golden"


# ---------------------------------------------------------------------------------------------
# Options, hooks, configuration


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


_STATE = pytest.StashKey["_State"]()
_PENDING = pytest.StashKey[list]()
_GOLDEN_CALLS = pytest.StashKey[collections.Counter]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "diagnose(SPEC=None, *, model=None, **options): torch-diagnose settings for this test: the target spec, "
        "run options (atol=, device=, seed=, ...) and check options as dicts (determinism={'repeats': 3})",
    )
    state = _State(config)
    config.stash[_STATE] = state
    if state.spec:
        try:
            state.options  # surface a malformed --diagnose-* option as a usage error now
        except UsageError as exc:
            raise pytest.UsageError(f"torch-diagnose: {exc}") from None
    config.pluginmanager.register(check_fixtures(), "torch_diagnose_check_fixtures")
    config.pluginmanager.register(_ResultCollector(state), "torch_diagnose_results")


def _state(config: pytest.Config) -> "_State":
    return config.stash[_STATE]


class _State:
    """Per-session (per-process) state: options, loaded targets, shared Contexts, collected results."""

    CONTEXTS_KEPT = 4

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.spec: str | None = config.getoption("diagnose_model")
        self.is_worker = hasattr(config, "workerinput")
        self._options: RunOptions | None = None
        self._pyproject: dict[str, Any] | None = None
        self._targets: dict[tuple[Any, ...], Any] = {}
        self._contexts: collections.OrderedDict[tuple[Any, ...], Any] = collections.OrderedDict()
        self._pinned: dict[tuple[Any, ...], Any] = {}
        #: Training flags of each model as first seen (weak keys: no model is kept alive by this).
        self._initial_training: weakref.WeakKeyDictionary[Any, dict[str, bool]] = weakref.WeakKeyDictionary()
        self._described: dict[int, tuple[Any, dict[str, Any], dict[str, Any]]] = {}
        self.payloads: list[dict[str, Any]] = []

    # -- options ------------------------------------------------------------------------------
    def raw_options(self) -> dict[str, Any]:
        if self._pyproject is None:
            self._pyproject = dict(pyproject_defaults(self.config.rootpath))
        raw: dict[str, Any] = dict(self._pyproject)
        for d in OPTION_DEFS:
            value = self.config.getoption("diagnose_" + d.name)
            if value is not None:
                raw[d.name] = value
        return raw

    @property
    def options(self) -> RunOptions:
        """The session's RunOptions: [tool.diagnose] defaults, then --diagnose-* flags, then --golden-update."""
        if self._options is None:
            self._options = self._build({}, {})
        return self._options

    def options_for(self, run_overrides: dict[str, Any], check_overrides: dict[str, dict[str, Any]]) -> RunOptions:
        """Session options with a test's marker applied on top."""
        if not run_overrides and not check_overrides:
            return self.options
        return self._build(run_overrides, check_overrides)

    def _build(self, run_overrides: dict[str, Any], check_overrides: dict[str, dict[str, Any]]) -> RunOptions:
        options = RunOptions.from_mapping({**self.raw_options(), **run_overrides})
        merged = {k: dict(v) for k, v in options.option.items()}
        if self.config.getoption("golden_update"):
            merged.setdefault(_GOLDEN, {})["update"] = True
        for check_id, values in check_overrides.items():
            merged.setdefault(check_id, {}).update(values)
        options.option = merged
        return options

    # -- targets and contexts -----------------------------------------------------------------
    def load(self, spec: str, options: RunOptions) -> Any:
        """Load a spec once per process (seeded, so every xdist worker builds the same weights)."""
        key = (spec, options.input_shape, options.input_dtype, options.trust_pickle, options.seed)
        if key not in self._targets:
            import torch

            from .target import load_target

            path = self._resolve(spec)
            try:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(options.seed)
                    target = load_target(path, trust_pickle=options.trust_pickle, input_shape=options.input_shape,
                                         input_dtype=options.input_dtype)
                self._targets[key] = ("ok", target)
            except UsageError as exc:
                self._targets[key] = ("error", exc)
        state, value = self._targets[key]
        if state == "error":
            raise value
        return value

    def spec_path(self) -> Path:
        """The file behind --diagnose-model (for test locations), or the rootdir for other specs."""
        from .target import _split_factory

        path = Path(self._resolve(self.spec or "")).expanduser()
        file = Path(_split_factory(str(path))[0])
        return file if file.is_file() else self.config.rootpath

    def _resolve(self, spec: str) -> str:
        """A relative file spec is relative to where pytest was started (workers agree on it)."""
        from .target import _split_factory

        path, sep, factory = _split_factory(spec)
        candidate = Path(self.config.invocation_params.dir) / path
        if path and not os.path.isabs(path) and candidate.is_file():
            return str(candidate) + (sep + factory if sep else "")
        return spec

    def coerce(self, target: Any, options: RunOptions) -> Any:
        from .target import Target, coerce_target

        if isinstance(target, str):
            target = self.load(target, options)
        elif not isinstance(target, Target):
            target = coerce_target(target, source="<pytest fixture>")
        if target.example_inputs is None:
            from .target import _finish  # synthesise inputs the way spec loading does (--diagnose-input-shape)

            target = _finish(target, target.source or target.name, options.input_shape, options.input_dtype)
        if options.dynamic_dims and not target.dynamic_dims:
            target.dynamic_dims = options.dynamic_dims
        return target

    def context(self, target: Any, options: RunOptions) -> Any:
        """One Context per (model, options that matter to it) and process, so the fp32 reference,
        fp64 copy and exports are built once however many tests and checks use them. Contexts of
        --diagnose-model / spec targets live for the session; those of models a test builds itself
        are kept a few at a time (least recently used dropped) so per-test models do not pile up."""
        from .context import Context

        fingerprint = tuple((k, repr(v)) for k, v in sorted(options.as_dict().items()) if k not in _NOT_CONTEXT)
        key = (id(target.model), fingerprint)
        pinned = any(t[1].model is target.model for t in self._targets.values() if t[0] == "ok")
        store = self._pinned if pinned else self._contexts
        ctx = store.get(key)
        if ctx is not None and ctx.target.model is target.model:
            if not pinned:
                self._contexts.move_to_end(key)
            return ctx
        initial = self._initial_training.get(target.model)
        ctx = Context(target, options)
        if initial is None:
            self._initial_training[target.model] = dict(ctx.initial_training)
        else:  # the model as handed over, before an earlier Context called eval(): eval_mode judges that
            ctx.initial_training = dict(initial)
        store[key] = ctx
        while len(self._contexts) > self.CONTEXTS_KEPT:
            self._contexts.popitem(last=False)
        return ctx

    def describe(self, ctx: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        """The target's description and the environment, once per Context (sent with each result)."""
        entry = self._described.get(id(ctx))
        if entry is None or entry[0]() is not ctx:
            from .environment import environment
            from .results import jsonable

            entry = (weakref.ref(ctx), jsonable(ctx.target.describe()), jsonable(environment(ctx.device)))
            self._described[id(ctx)] = entry
        return entry[1], entry[2]

    # -- running ------------------------------------------------------------------------------
    def run(self, check_id: str, target: Any, options: RunOptions, given: dict[str, Any], node: pytest.Item,
            generated: bool = False) -> CheckResult:
        from .registry import get_check
        from .runner import run_one

        spec = get_check(check_id)
        ctx = self.context(target, options)
        if options.isolate and not (spec.needs_cuda and ctx.device.type != "cuda"):
            from .isolation import run_isolated

            opts = RunOptions(**{**options.as_dict(), "option": {**options.option, check_id: given}})
            result = run_isolated(spec, target, opts)
        else:
            result = run_one(check_id, target, options, context=ctx, **given)
        described_target, env = self.describe(ctx)
        payload = {"result": result.to_dict(), "order": spec.order, "title": spec.title, "nodeid": node.nodeid,
                   "generated": generated, "target": described_target, "environment": env}
        payload = json.loads(json.dumps(payload, default=str))  # plain types only: xdist's execnet sends it
        node.stash.setdefault(_PENDING, []).append(payload)
        for name, value in _properties(result):
            node.user_properties.append((name, value))
        return result

    def failing(self, result: CheckResult, options: RunOptions | None = None) -> bool:
        fail_on = (options or self.options).fail_on
        return result.status != SKIP and SEVERITY[result.status] >= SEVERITY[fail_on]

    # -- commands shown to the user -----------------------------------------------------------
    def option_args(self, *, leave_out: tuple[str, ...] = ("checks", "skip", "report_dir", "format")) -> list[str]:
        args: list[str] = []
        if self.spec:
            args += ["--diagnose-model", self.spec]
        for d in OPTION_DEFS:
            if d.name in leave_out:
                continue
            value = self.config.getoption("diagnose_" + d.name)
            if value is None:
                continue
            if d.flag:
                args.append(d.pytest_flag)
            elif d.repeatable:
                for v in value:
                    args += [d.pytest_flag, str(v)]
            else:
                args += [d.pytest_flag, str(value)]
        return args

    def record_command(self, node: pytest.Item | None) -> str:
        if node is None or isinstance(node, CheckItem):
            args = self.option_args() + ["--diagnose-checks", _GOLDEN, "--golden-update"]
        else:
            args = [self._relative_nodeid(node)] + self.option_args() + ["--golden-update"]
        return "pytest " + " ".join(shlex.quote(a) for a in args)

    def _relative_nodeid(self, node: pytest.Item) -> str:
        file_part, sep, rest = node.nodeid.partition("::")
        try:
            rel = os.path.relpath(self.config.rootpath / file_part, self.config.invocation_params.dir)
        except ValueError:
            rel = file_part
        return rel + sep + rest


def _properties(result: CheckResult) -> list[tuple[str, Any]]:
    """JUnit properties of one result: status, summary, culprit and every metric, prefixed by the check id."""
    props: list[tuple[str, Any]] = [(f"{result.check}.status", result.status), (f"{result.check}.summary", result.summary)]
    if result.culprit:
        props.append((f"{result.check}.culprit", result.culprit_label))
    props += [(f"{result.check}.{name}", value) for name, value in result.metrics.items()]
    return props


def explain(result: CheckResult) -> str:
    """The full explanation of a result: explain() plus every metric and the details, compactly."""
    text = result.explain()
    if len(result.metrics) > 16:
        from .results import format_value

        rest = ", ".join(f"{k}={format_value(v)}" for k, v in list(result.metrics.items())[16:])
        text += f"\n  more metrics: {rest}"
    lines = []
    for key, value in result.details.items():
        if key == "plot" or (key == "traceback" and result.status != ERROR) or value in (None, [], {}, ""):
            continue
        if isinstance(value, list):
            lines.append(f"  {key}:")
            for row in value[:10]:
                shown = ", ".join(f"{k}={_short(v)}" for k, v in row.items()) if isinstance(row, dict) else _short(row)
                lines.append(f"    - {shown}")
            if len(value) > 10:
                lines.append(f"    ... {len(value) - 10} more")
        elif isinstance(value, dict):
            lines.append(f"  {key}: " + ", ".join(f"{k}={_short(v)}" for k, v in value.items()))
        elif key == "traceback":
            lines.append("  traceback:\n" + "\n".join("    " + ln for ln in str(value).rstrip().splitlines()[-20:]))
        else:
            lines.append(f"  {key}: {_short(value)}")
    if lines:
        text += "\n  details:\n" + "\n".join("  " + ln for ln in lines)
    return text


def _short(value: Any, limit: int = 240) -> str:
    from .results import format_value

    text = format_value(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---------------------------------------------------------------------------------------------
# Generated items: `pytest --diagnose-model SPEC`


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
        state = _state(self.config)
        options = state.options
        try:
            target = state.coerce(state.load(self.spec, options), options)
        except UsageError as exc:
            pytest.fail(f"torch-diagnose cannot load target {self.spec!r}: {exc}", pytrace=False)
        given = options.check_options(self.check_id)
        if self.check_id == _GOLDEN:
            given.setdefault("record_command", state.record_command(self))
            if not os.path.isabs(given.get("dir", "__golden__")):
                given["dir"] = str(Path(self.config.invocation_params.dir) / given.get("dir", "__golden__"))
        try:
            result = state.run(self.check_id, target, options, given, self, generated=True)
        except UsageError as exc:
            pytest.fail(f"torch-diagnose: {exc}", pytrace=False)
        _conclude(state, result, options)

    def reportinfo(self) -> tuple[Any, int | None, str]:
        return self.path, 0, f"diagnose {self.spec} :: {self.check_id}"


def _skip(reason: str) -> None:
    """Skip, reported at the test's location rather than at this line of the plugin."""
    try:
        raise pytest.skip.Exception(reason, _use_item_location=True)
    except TypeError:  # pragma: no cover - a pytest without the keyword
        pytest.skip(reason)


def _conclude(state: _State, result: CheckResult, options: RunOptions, *, skip_on_skip: bool = True) -> CheckResult:
    """Turn a result into the test's outcome: skip, fail with the full explanation, or pass."""
    if result.status == SKIP and skip_on_skip:
        _skip(f"{result.check}: {result.summary}")
    if state.failing(result, options):
        pytest.fail(explain(result), pytrace=False)
    return result


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    """Add the generated items first, before -k/-m deselection sees the list (tryfirst).

    Only when no test paths are named on the command line: `pytest --diagnose-model SPEC` runs the
    checks; `pytest tests/test_model.py --diagnose-model SPEC` runs those tests with SPEC as their
    diagnose_target. xdist workers receive the controller's arguments, so they decide the same.
    """
    state = _state(config)
    if not state.spec or config.args_source == pytest.Config.ArgsSource.ARGS:
        return
    from .registry import select_checks

    try:
        specs = select_checks(state.options.checks or None, state.options.skip or None)
    except UsageError as exc:
        raise pytest.UsageError(f"torch-diagnose: {exc}") from None
    name = f"diagnose[{state.spec}]"
    parent = DiagnoseCollector.from_parent(session, name=name, path=state.spec_path(), nodeid=name)
    generated = [CheckItem.from_parent(parent, name=spec.id, check_id=spec.id, spec=state.spec) for spec in specs]
    items[:0] = generated
    # Report them as collected, so the terminal's "collected N items" counts them.
    config.hook.pytest_collectreport(report=pytest.CollectReport(parent.nodeid, "passed", None, list(generated)))


# ---------------------------------------------------------------------------------------------
# Fixtures


def _marker_settings(node: pytest.Item) -> tuple[str | None, dict[str, Any], dict[str, dict[str, Any]]]:
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
        from .registry import get_check

        for check_id in checks:
            get_check(check_id)  # unknown ids are a usage error naming the known ones
    return model, run, checks


class _Diagnoser:
    """What the `diagnose`, `golden` and `check_<id>` fixtures hand to a test."""

    def __init__(self, request: pytest.FixtureRequest) -> None:
        self.request = request
        self.state = _state(request.config)

    def run(self, check_id: str, target: Any = None, **options: Any) -> CheckResult:
        node = self.request.node
        try:
            model, run_overrides, check_overrides = _marker_settings(node)
            opts = self.state.options_for(run_overrides, check_overrides)
            if target is None and model is not None:
                target = model
            if target is None:
                target = self.request.getfixturevalue("diagnose_target")
            target = self.state.coerce(target, opts)
            given = {**opts.check_options(check_id), **options}
            if check_id == _GOLDEN:
                given = self._golden_options(node, given)
            result = self.state.run(check_id, target, opts, given, node)
        except UsageError as exc:
            pytest.fail(f"torch-diagnose: {exc}", pytrace=False)
        return _conclude(self.state, result, opts, skip_on_skip=check_id == _GOLDEN)

    def _golden_options(self, node: pytest.Item, given: dict[str, Any]) -> dict[str, Any]:
        """One recording per test and call: `<test dir>/__golden__/<module>/<test>[.<name>][.<n>].pt`."""
        from .golden import golden_key

        given = dict(given)
        calls = node.stash.setdefault(_GOLDEN_CALLS, collections.Counter())
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
        return self.run(_GOLDEN, target, **options)


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

    Override it in your conftest.py to return a `diagnostics.Target`, an `nn.Module` (with
    --diagnose-input-shape) or `(module, example_inputs)`; give the Target a `factory` for the
    weights round trip. Skips the test when no target is given.
    """
    state = _state(request.config)
    try:
        model, run_overrides, check_overrides = _marker_settings(request.node)
        spec = model or state.spec
        if not spec:
            pytest.skip("no target to diagnose: pass --diagnose-model SPEC, mark the test "
                        "@pytest.mark.diagnose(model=SPEC), or override the diagnose_target fixture in conftest.py")
        return state.load(spec, state.options_for(run_overrides, check_overrides))
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


# ---------------------------------------------------------------------------------------------
# `check_<id>` fixtures, documented without importing torch


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


def _providers() -> list[str]:
    """Check provider modules, in the registry's order (built-in, entry points, $TORCH_DIAGNOSE_CHECKS)."""
    providers = ["torch_diagnose.checks"]
    try:
        from importlib.metadata import entry_points

        for ep in entry_points(group="torch_diagnose.checks"):
            if ep.value not in providers:
                providers.append(ep.value)
    except Exception:  # pragma: no cover - broken metadata
        pass
    extra = [m.strip() for m in os.environ.get("TORCH_DIAGNOSE_CHECKS", "").split(",") if m.strip()]
    return providers + [m for m in extra if m not in providers]


def _package_sources(base: Path) -> list[Path]:
    """Every public source file of a package folder, sub-packages included."""
    return sorted(p for p in base.rglob("*.py") if not p.name.startswith("_") or p.name == "__init__.py")


def _module_files(name: str) -> list[Path]:
    """The source files of a module or package, found without importing it where possible: the
    top-level package is located without importing it; a package installed under another folder
    name (package-dir mapping, as `torch_diagnose.checks`) is found through its own spec, which
    imports only its parents (torch-free for the built-in checks)."""
    import importlib.util

    parts = name.split(".")
    try:
        spec = importlib.util.find_spec(parts[0])
    except (ImportError, ValueError):
        return []
    if spec is None:
        return []
    locations = list(spec.submodule_search_locations or [])
    if len(parts) == 1:
        if locations:
            return [p for loc in locations for p in _package_sources(Path(loc))]
        return [Path(spec.origin)] if spec.origin and spec.origin.endswith(".py") else []
    for loc in locations:
        base = Path(loc, *parts[1:])
        if base.is_dir():
            return _package_sources(base)
        if base.with_suffix(".py").is_file():
            return [base.with_suffix(".py")]
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return []
    if spec is None:
        return []
    if spec.submodule_search_locations:
        return [p for loc in spec.submodule_search_locations for p in _package_sources(Path(loc))]
    return [Path(spec.origin)] if spec.origin and spec.origin.endswith(".py") else []


_DECORATOR = re.compile(r"^@(?:\w+\.)*register\(", re.M)
_DEF = re.compile(r"^(?:async[ \t]+)?def[ \t]+\w+", re.M)
_DOCSTRING = re.compile(r"[ \t]+[rRuU]?(\"\"\"|\'\'\')")


def discover_checks() -> dict[str, str]:
    """check id -> documentation, read from `@register("id", ...)` decorators in the providers'
    source without importing them (so without torch). Checks already imported are taken from the
    registry as well (those registered dynamically included)."""
    found: dict[str, str] = {}
    for provider in _providers():
        for path in _module_files(provider):
            try:
                text = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                continue
            for check_id, doc in _checks_in_source(text):
                found.setdefault(check_id, doc)
    registry = sys.modules.get("torch_diagnose.registry")
    if registry is not None:
        for check_id, spec in getattr(registry, "_REGISTRY", {}).items():
            found.setdefault(check_id, _doc_with_options(spec.doc, [(o.name, o.type.__name__, repr(o.default), o.help) for o in spec.options]))
    return found


def _checks_in_source(text: str) -> list[tuple[str, str]]:
    """Parse only each `@register(...)` decorator with its function's signature and docstring: a
    whole check module takes ~10x longer to parse, and this runs at every pytest start-up. A
    snippet that does not parse falls back to parsing the whole file."""
    entries = []
    for match in _DECORATOR.finditer(text):
        func_def = _DEF.search(text, match.end())
        if func_def is None:
            continue
        quote = _DOCSTRING.search(text, func_def.end())
        end = text.find(quote.group(1), quote.end()) + 3 if quote else -1
        snippet = text[match.start():end] if end > 2 else text[match.start():func_def.end()]
        try:
            tree = ast.parse(snippet if end > 2 else snippet + "(): pass")
        except SyntaxError:
            return _checks_in_tree(text)
        entries += _registered(tree.body[:1], text)
    return entries


def _checks_in_tree(text: str) -> list[tuple[str, str]]:
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return []
    return _registered(ast.walk(tree), text)


def _registered(nodes: Any, text: str) -> list[tuple[str, str]]:
    """The (check id, documentation) of every `@register(...)`-decorated function among `nodes`."""
    entries = []
    for node in nodes:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for dec in node.decorator_list:
                entry = _register_call(dec, node, lambda name: _constant(text, name))
                if entry:
                    entries.append(entry)
    return entries


def _constant(text: str, name: str) -> ast.expr | None:
    """A module-level `NAME = literal` of the source, for option defaults given by name."""
    match = re.search(rf"^{re.escape(name)}[ \t]*(?::[^=\n]+)?=[ \t]*(.+)$", text, re.M)
    if not match:
        return None
    try:
        return ast.parse(match.group(1).strip(), mode="eval").body
    except SyntaxError:
        return None


def _register_call(dec: ast.expr, func: ast.FunctionDef | ast.AsyncFunctionDef,
                   constant: Callable[[str], ast.expr | None]) -> tuple[str, str] | None:
    if not isinstance(dec, ast.Call) or not dec.args:
        return None
    callee = dec.func
    name = callee.id if isinstance(callee, ast.Name) else callee.attr if isinstance(callee, ast.Attribute) else ""
    first = dec.args[0]
    if name != "register" or not isinstance(first, ast.Constant) or not isinstance(first.value, str):
        return None
    title = next((kw.value.value for kw in dec.keywords if kw.arg == "title" and isinstance(kw.value, ast.Constant)), "")
    doc = ast.get_docstring(func) or str(title)
    options = []
    for kw in dec.keywords:
        if kw.arg == "options" and isinstance(kw.value, (ast.Tuple, ast.List)):
            for opt in kw.value.elts:
                if isinstance(opt, ast.Call) and len(opt.args) >= 3:
                    args = [ast.unparse((constant(a.id) or a) if isinstance(a, ast.Name) else a) for a in opt.args[:4]]
                    help_text = opt.args[3].value if len(opt.args) > 3 and isinstance(opt.args[3], ast.Constant) else ""
                    options.append((args[0].strip("'\""), args[1], args[2], str(help_text)))
    return first.value, _doc_with_options(doc, options)


def _doc_with_options(doc: str, options: list[tuple[str, str, str, str]]) -> str:
    if not options:
        return doc
    lines = [f"  {name} ({kind}, default {default}): {help_text}" for name, kind, default, help_text in options]
    return doc + "\n\nOptions:\n" + "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Results travel with the test reports; the controller writes reports/


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    pending = item.stash.get(_PENDING, None)
    if pending:
        report.diagnose_results = list(pending)  # plain dicts: xdist serialises them with the report
        pending.clear()
    return report


class _ResultCollector:
    """Gathers the results that arrive with test reports (from xdist workers too); one per config,
    registered in pytest_configure, so nested sessions (pytester) keep their results apart."""

    def __init__(self, state: _State) -> None:
        self.state = state

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        payloads = getattr(report, "diagnose_results", None)
        if payloads and not self.state.is_worker:
            self.state.payloads.extend(payloads)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    state = _state(session.config)
    if state.is_worker or not state.payloads:
        return
    explicit_dir = session.config.getoption("diagnose_report_dir") is not None
    if not (state.spec or explicit_dir or _has_reporter_hooks(session.config)):
        return
    try:
        _write_reports(session.config, state, write_files=bool(state.spec or explicit_dir))
    except Exception as exc:  # a report writer must not turn a green run red; say what happened
        tr = session.config.pluginmanager.get_plugin("terminalreporter")
        if tr is not None:
            tr.write_line(f"torch-diagnose: writing reports failed: {type(exc).__name__}: {exc}", red=True)


def _has_reporter_hooks(config: pytest.Config) -> bool:
    return bool(config.pluginmanager.hook.pytest_diagnose_reporters.get_hookimpls())


def _write_reports(config: pytest.Config, state: _State, *, write_files: bool) -> None:
    from .registry import CheckSpec
    from .results import jsonable
    from .runner import RunReport

    options = state.options
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
    reporters: list[Any] = []
    if write_files:
        reporters += _file_reporters(options)
    config.pluginmanager.hook.pytest_diagnose_reporters(config=config, options=options, reporters=reporters)
    for rep in reporters:
        rep.start(report, list(specs.values()))
    for p in payloads:
        result = CheckResult.from_dict(p["result"])
        for rep in reporters:
            rep.check_started(specs[result.check])
        report.results.append(result)
        report.duration_s += result.duration_s
        for rep in reporters:
            rep.check_finished(result, report)
    for rep in reporters:
        rep.finish(report)


def _ordered(payloads: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Generated checks first in the registry's order, then fixture results by test: the same order
    however xdist distributed the work."""
    return sorted(payloads, key=lambda p: (not p["generated"], p["order"] if p["generated"] else 0, p["nodeid"], p["order"]))


def _file_reporters(options: RunOptions) -> list[Any]:
    try:
        from .report import file_reporters
    except ImportError:
        return []
    return list(file_reporters(options))


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    state = _state(config)
    if state.is_worker or not state.payloads:
        return
    tr = terminalreporter
    tr.section("torch-diagnose")
    for p in _ordered(state.payloads):
        r = p["result"]
        where = "" if p["generated"] else f" ({p['nodeid']})"
        tr.write_line(f"{r['status'].upper():5} {r['check']}{where}: {r['summary']}"[:400])
    unrecorded = [p for p in state.payloads if p["result"]["check"] == _GOLDEN and p["result"]["status"] == SKIP]
    if unrecorded:
        tr.write_line(f"{len(unrecorded)} golden recording(s) missing; record with --golden-update, e.g.:")
        tr.write_line("  " + unrecorded[0]["result"]["summary"].rpartition("record with: ")[2])
