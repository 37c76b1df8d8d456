"""The check registry: ids, families, typed options, and discovery of the built-in checks.

A check is one function registered with `@register(...)`. The registry never imports `checks`
by name at module import time; `load_checks()` discovers them through the
`torch_diagnose.checks` entry point group (the built-in one is the `checks` package), so the
arrow goes one way: checks import diagnostics.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable

from .errors import UsageError


@dataclass(frozen=True)
class Option:
    """A typed option of one check, settable as `-o CHECK.NAME=VALUE` or by keyword in the API."""

    name: str
    type: type
    default: Any
    help: str = ""

    def parse(self, raw: Any) -> Any:
        if raw is None or isinstance(raw, self.type) and not (self.type is int and isinstance(raw, bool)):
            return raw
        if self.type is bool:
            text = str(raw).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise UsageError(f"option {self.name}: expected true/false, got {raw!r}")
        if self.type in (list, tuple):
            if isinstance(raw, (list, tuple)):
                return list(raw)
            return [item.strip() for item in str(raw).split(",") if item.strip()]
        try:
            return self.type(raw)
        except (TypeError, ValueError):
            raise UsageError(f"option {self.name}: expected {self.type.__name__}, got {raw!r}") from None


class CheckOptions(dict):
    """Resolved options of one check; read them as attributes (`opts.repeats`)."""

    def __getattribute__(self, name: str) -> Any:
        # Option names win over dict methods: an option called `update` or `items` must read as its value.
        if not name.startswith("_") and dict.__contains__(self, name):
            return dict.__getitem__(self, name)
        return super().__getattribute__(name)

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(f"no option {name!r}; options: {', '.join(self)}")


@dataclass
class CheckSpec:
    id: str
    family: str
    title: str
    func: Callable[..., Any]
    options: tuple[Option, ...] = ()
    default: bool = True
    order: int = 50
    needs_cuda: bool = False
    doc: str = ""
    tags: tuple[str, ...] = field(default_factory=tuple)

    def resolve_options(self, given: dict[str, Any] | None = None) -> CheckOptions:
        given = dict(given or {})
        known = {o.name: o for o in self.options}
        unknown = sorted(set(given) - set(known))
        if unknown:
            names = ", ".join(known) or "none"
            raise UsageError(f"check {self.id!r} has no option {unknown[0]!r} (its options: {names})")
        return CheckOptions({name: opt.parse(given.get(name, opt.default)) for name, opt in known.items()})


_REGISTRY: dict[str, CheckSpec] = {}
_loaded = False


def register(
    id: str,
    *,
    family: str,
    title: str,
    options: tuple[Option, ...] | list[Option] = (),
    default: bool = True,
    order: int = 50,
    needs_cuda: bool = False,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register `func(ctx, opts) -> CheckResult` as check `id`.

    order: lower runs earlier (cheap checks and those that must see the untouched model first).
    default: False for opt-in checks that are slow (they run only when named).
    """

    def wrap(func: Callable[..., Any]) -> Callable[..., Any]:
        doc = (func.__doc__ or title).strip()
        _REGISTRY[id] = CheckSpec(
            id=id, family=family, title=title, func=func, options=tuple(options),
            default=default, order=order, needs_cuda=needs_cuda, doc=doc,
        )
        return func

    return wrap


def load_checks() -> dict[str, CheckSpec]:
    """Import every check provider once: built-ins, `torch_diagnose.checks` entry points, and the
    comma-separated modules in $TORCH_DIAGNOSE_CHECKS (a project's own checks, no packaging needed)."""
    global _loaded
    if not _loaded:
        _loaded = True
        providers = ["torch_diagnose.checks"]
        try:
            from importlib.metadata import entry_points

            for ep in entry_points(group="torch_diagnose.checks"):
                if ep.value not in providers:
                    providers.append(ep.value)
        except Exception:  # metadata can be missing when running from a source tree
            pass
        import os

        extra = [m.strip() for m in os.environ.get("TORCH_DIAGNOSE_CHECKS", "").split(",") if m.strip()]
        providers += [m for m in extra if m not in providers]
        for name in providers:
            importlib.import_module(name)
    return dict(sorted(_REGISTRY.items(), key=lambda kv: (kv[1].order, kv[0])))


def get_check(check_id: str) -> CheckSpec:
    checks = load_checks()
    if check_id not in checks:
        raise UsageError(f"unknown check {check_id!r}; known checks: {', '.join(checks)} (see --list-checks)")
    return checks[check_id]


def select_checks(include: list[str] | None = None, skip: list[str] | None = None) -> list[CheckSpec]:
    """Resolve ids or family names into an ordered list of checks.

    With no `include`, every default (non opt-in) check is selected. A family name selects its
    default checks; an opt-in check (slow: torch_compile, quantization) runs when named by id or
    with `all`. Unknown names are a usage error.
    """
    checks = load_checks()
    families = {spec.family for spec in checks.values()}

    def expand(names: list[str], *, for_include: bool) -> set[str]:
        chosen: set[str] = set()
        for name in names:
            name = name.strip()
            if not name:
                continue
            if name in ("all", "default") and for_include:
                chosen |= {cid for cid, spec in checks.items() if name == "all" or spec.default}
            elif name in checks:
                chosen.add(name)
            elif name in families:  # a family brings its default checks; opt-in ones are named by id or `all`
                chosen |= {cid for cid, spec in checks.items() if spec.family == name and (spec.default or not for_include)}
            else:
                raise UsageError(
                    f"unknown check or family {name!r}; checks: {', '.join(checks)}; families: {', '.join(sorted(families))}"
                )
        return chosen

    chosen = expand(include, for_include=True) if include else {cid for cid, s in checks.items() if s.default}
    chosen -= expand(skip or [], for_include=False)
    return [spec for cid, spec in checks.items() if cid in chosen]
