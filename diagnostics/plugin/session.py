"""Per-session (per-process) state of the pytest plugin: options, targets, shared Contexts, results."""
from __future__ import annotations

import collections
import json
import os
import shlex
import weakref
from pathlib import Path
from typing import Any

import pytest

from ..errors import UsageError
from ..options import OPTION_DEFS, RunOptions, pyproject_defaults, pyproject_names
from ..results import SEVERITY, SKIP, CheckResult

#: Run options whose values do not change what a Context computes (kept out of its cache key).
NOT_CONTEXT = ("checks", "skip", "option", "report_dir", "format", "fail_on", "debug", "isolate", "timeout", "compare")
GOLDEN = "golden"

STATE = pytest.StashKey["SessionState"]()
#: Results of one test item waiting to travel with its report.
PENDING = pytest.StashKey[list]()
#: Golden calls per test and label, so each call gets its own recording.
GOLDEN_CALLS = pytest.StashKey[collections.Counter]()


def state(config: pytest.Config) -> "SessionState":
    return config.stash[STATE]


class SessionState:
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
        #: The report files the controller (or the single process) wrote at the end of the session.
        self.report_paths: list[str] = []

    # -- options ------------------------------------------------------------------------------
    def raw_options(self) -> dict[str, Any]:
        return self._raw_and_names()[0]

    def _raw_and_names(self) -> tuple[dict[str, Any], dict[str, str]]:
        """[tool.diagnose] overlaid with --diagnose-* flags, and how an error names each (the flag typed)."""
        if self._pyproject is None:
            self._pyproject = dict(pyproject_defaults(self.config.rootpath))
        raw: dict[str, Any] = dict(self._pyproject)
        names = pyproject_names(raw)
        for d in OPTION_DEFS:
            value = self.config.getoption("diagnose_" + d.name)
            if value is not None:
                raw[d.name], names[d.name] = value, d.pytest_flag
        return raw, names

    def flags_given(self) -> bool:
        """Whether any --diagnose-* run option was given (then a malformed one is a usage error at start-up)."""
        return any(self.config.getoption("diagnose_" + d.name) is not None for d in OPTION_DEFS)

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
        raw, names = self._raw_and_names()
        names.update({key: f"@pytest.mark.diagnose({key}=...)" for key in run_overrides})
        options = RunOptions.from_mapping({**raw, **run_overrides}, names)
        for key in ("checks", "skip"):
            check_names(getattr(options, key), names.get(key, f"--diagnose-{key}"), include=key == "checks")
        merged = {k: dict(v) for k, v in options.option.items()}
        if self.config.getoption("golden_update"):
            merged.setdefault(GOLDEN, {})["update"] = True
        for check_id, values in check_overrides.items():
            merged.setdefault(check_id, {}).update(values)
        options.option = merged
        return options

    # -- targets and contexts -----------------------------------------------------------------
    def load(self, spec: str, options: RunOptions) -> Any:
        """Load a spec once per process (seeded, so every xdist worker builds the same weights)."""
        key = (spec, options.input_shape, options.input_dtype, options.trust_pickle, options.seed)
        if key not in self._targets:
            from ..target import load_target_for

            try:
                self._targets[key] = ("ok", load_target_for(self._resolve(spec), options))
            except UsageError as exc:
                self._targets[key] = ("error", exc)
        status, value = self._targets[key]
        if status == "error":
            raise value
        return value

    def spec_path(self) -> Path:
        """The file behind --diagnose-model (for test locations), or the rootdir for other specs."""
        from ..target import split_factory

        path = Path(self._resolve(self.spec or "")).expanduser()
        file = Path(split_factory(str(path))[0])
        return file if file.is_file() else self.config.rootpath

    def _resolve(self, spec: str) -> str:
        """A relative file spec is relative to where pytest was started (workers agree on it)."""
        from ..target import split_factory

        path, sep, factory = split_factory(spec)
        candidate = Path(self.config.invocation_params.dir) / path
        if path and not os.path.isabs(path) and candidate.is_file():
            return str(candidate) + (sep + factory if sep else "")
        return spec

    def coerce(self, target: Any, options: RunOptions) -> Any:
        from ..target import Target, coerce_target, finish_target

        if isinstance(target, str):
            target = self.load(target, options)
        elif not isinstance(target, Target):
            target = coerce_target(target, source="<pytest fixture>")
        if target.example_inputs is None:  # synthesise inputs the way spec loading does (--diagnose-input-shape)
            target = finish_target(target, target.source or target.name, options.input_shape, options.input_dtype)
        if options.dynamic_dims and not target.dynamic_dims:
            target.dynamic_dims = options.dynamic_dims
        return target

    def context(self, target: Any, options: RunOptions) -> Any:
        """One Context per (model, options that matter to it) and process, so the fp32 reference,
        fp64 copy and exports are built once however many tests and checks use them. Contexts of
        --diagnose-model / spec targets live for the session; those of models a test builds itself
        are kept a few at a time (least recently used dropped) so per-test models do not pile up."""
        from ..context import Context

        fingerprint = tuple((k, repr(v)) for k, v in sorted(options.as_dict().items()) if k not in NOT_CONTEXT)
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
            from ..environment import environment
            from ..results import jsonable

            entry = (weakref.ref(ctx), jsonable(ctx.target.describe()), jsonable(environment(ctx.device)))
            self._described[id(ctx)] = entry
        return entry[1], entry[2]

    # -- running ------------------------------------------------------------------------------
    def run(self, check_id: str, target: Any, options: RunOptions, given: dict[str, Any], node: pytest.Item,
            generated: bool = False) -> CheckResult:
        from ..registry import get_check
        from ..runner import run_one

        spec = get_check(check_id)
        ctx = self.context(target, options)
        if options.isolate and not (spec.needs_cuda and ctx.device.type != "cuda"):
            from ..isolation import run_isolated

            opts = RunOptions(**{**options.as_dict(), "option": {**options.option, check_id: given}})
            from ..runner import VERDICTS_KEY

            result = run_isolated(spec, target, opts, ctx.cached(VERDICTS_KEY, dict))
        else:
            if not generated:  # a fixture call names its check: it runs as if selected
                options = RunOptions(**{**options.as_dict(), "checks": [check_id]})
            result = run_one(check_id, target, options, context=ctx, **given)
        described_target, env = self.describe(ctx)
        payload = {"result": result.to_dict(), "order": spec.order, "title": spec.title, "nodeid": node.nodeid,
                   "generated": generated, "target": described_target, "environment": env,
                   "worker": os.environ.get("PYTEST_XDIST_WORKER"), "variants": published(ctx, check_id)}
        payload = json.loads(json.dumps(payload, default=str))  # plain types only: xdist's execnet sends it
        node.stash.setdefault(PENDING, []).append(payload)
        node.user_properties.extend(properties(result))
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
            value = self.config.getoption("diagnose_" + d.name)
            if d.name in leave_out or value is None:
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
        """The command that records the golden outputs: of one test, or (node None) of the generated check."""
        if node is None:
            args = self.option_args() + ["--diagnose-checks", GOLDEN, "--golden-update"]
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


def check_names(names: list[str] | None, flag: str, *, include: bool) -> None:
    """A misspelt check or family name is a usage error at start-up, naming the flag it came from
    and the closest match, once. Names are looked up torch-free in the checks' source; only a name
    not found there asks the registry (which imports torch and knows checks registered at run time)."""
    unknown = [n.strip() for n in names or [] if n.strip() and n.strip() not in ("all", "default")]
    if not unknown:
        return
    from .discovery import known_names

    if set(unknown) <= known_names():
        return
    from ..registry import select_checks

    try:
        select_checks(unknown, None) if include else select_checks(None, unknown)
    except UsageError as exc:
        raise UsageError(f"{flag}: {exc}") from None


def published(ctx: Any, check_id: str) -> list[dict[str, Any]]:
    """The deployment variants this check published in its Context (name, verdict, error, size), so
    the controller can tell which of them a benchmark on another xdist worker never saw."""
    return [{"name": v.name, "verdict": v.verdict, "max_error": v.max_error, "size_bytes": v.size_bytes,
             "source_check": v.source_check} for v in ctx.variants.values() if v.source_check == check_id]


def properties(result: CheckResult) -> list[tuple[str, Any]]:
    """JUnit properties of one result: status, summary, culprit and every metric, prefixed by the check id."""
    props: list[tuple[str, Any]] = [(f"{result.check}.status", result.status), (f"{result.check}.summary", result.summary)]
    if result.culprit:
        props.append((f"{result.check}.culprit", result.culprit_label))
    props += [(f"{result.check}.{name}", value) for name, value in result.metrics.items()]
    return props
