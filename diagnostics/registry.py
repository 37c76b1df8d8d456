"""The check registry: ids, families, typed options, and discovery of the built-in checks.

A check is one function registered with `@register(...)`. The registry never imports `checks`
by name at module import time; `load_checks()` discovers them through the
`torch_diagnose.checks` entry point group (the built-in one is the `checks` package), so the
arrow goes one way: checks import diagnostics.
"""
from __future__ import annotations

import difflib
import importlib
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from .errors import UsageError
from .text import one_line


@dataclass(frozen=True)
class Option:
    """A typed option of one check, settable as `-o CHECK.NAME=VALUE` or by keyword in the API.

    choices: the closed set of values allowed (each item, for a list option); anything else is a
             one-line usage error that offers the closest match.
    parse:   a custom converter `raw -> value` used instead of `type` for given values (raise
             UsageError or ValueError with what is wrong).
    The default is trusted as written (converted to `type` only), so it may lie outside `choices`
    to mean "not set".
    Checks never validate their options themselves: the registry does it here, before a check runs.
    """

    name: str
    type: type
    default: Any
    help: str = ""
    choices: tuple[Any, ...] | None = None
    parse: Callable[[Any], Any] | None = None

    def value(self, raw: Any, *, given: bool = True) -> Any:
        """The option's value from a raw one (a command-line string, or a value given in Python);
        `given=False` for the default, which a custom `parse` does not see."""
        if raw is None:
            return raw
        if not given:  # the check's own default: trusted as written (only typed)
            return raw if self.parse is not None else self._typed(raw)
        if self.parse is None:
            value = self._typed(raw)
        else:
            try:
                value = self.parse(raw)
            except (UsageError, TypeError, ValueError) as exc:
                raise UsageError(f"option {self.name}: {one_line(exc, with_type=False) or f'cannot read {raw!r}'}") from None
        if self.choices is not None:
            for item in value if isinstance(value, (list, tuple)) and self.type in (list, tuple) else [value]:
                if item not in self.choices:
                    raise UsageError(f"option {self.name}: {item!r} is not one of {', '.join(map(str, self.choices))}"
                                     + did_you_mean(str(item), [str(c) for c in self.choices]))
        return value

    def _typed(self, raw: Any) -> Any:
        if isinstance(raw, self.type) and not (self.type is int and isinstance(raw, bool)):
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


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """`; did you mean 'determinism'?` for a misspelt name, or "" when nothing is close."""
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


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
    #: Foundations the check's verdict relies on (see rootcause.py); None: the built-in table's entry.
    requires: tuple[str, ...] | None = None
    #: Whether the verdict compares model outputs (degenerate outputs then make it a warning); None: the table's.
    compares_outputs: bool | None = None

    def resolve_options(self, given: dict[str, Any] | None = None) -> CheckOptions:
        given = dict(given or {})
        known = {o.name: o for o in self.options}
        unknown = sorted(set(given) - set(known))
        if unknown:
            names = ", ".join(known) or "none"
            raise UsageError(f"check {self.id!r} has no option {unknown[0]!r} (its options: {names})"
                             + did_you_mean(unknown[0], known))
        return CheckOptions({name: opt.value(given[name]) if name in given else opt.value(opt.default, given=False)
                             for name, opt in known.items()})


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
    requires: Iterable[str] | None = None,
    compares_outputs: bool | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register `func(ctx, opts) -> CheckResult` as check `id`.

    order: lower runs earlier (cheap checks and those that must see the untouched model first).
    default: False for opt-in checks that are slow (they run only when named).
    requires: foundations the verdict relies on ("eval", "deterministic", "stateless"): when one failed,
              the check is not run and ends as a skipped consequence of it (see rootcause.py). Default:
              the built-in table `rootcause.REQUIRES`, which knows only the built-in checks.
    compares_outputs: the verdict compares model outputs, so degenerate outputs (all zero, tied,
              empty, tiny) turn its pass into a warning. Default: `rootcause.COMPARES_OUTPUTS`.
    """
    from .rootcause import check_requires

    needs = check_requires(requires) if requires is not None else None

    def wrap(func: Callable[..., Any]) -> Callable[..., Any]:
        doc = (func.__doc__ or title).strip()
        _REGISTRY[id] = CheckSpec(
            id=id, family=family, title=title, func=func, options=tuple(options),
            default=default, order=order, needs_cuda=needs_cuda, doc=doc, requires=needs,
            compares_outputs=compares_outputs,
        )
        return func

    return wrap


def check_providers() -> list[str]:
    """Check provider modules, in order: built-ins, `torch_diagnose.checks` entry points, and the
    comma-separated modules in $TORCH_DIAGNOSE_CHECKS (a project's own checks, no packaging needed)."""
    providers = ["torch_diagnose.checks"]
    try:
        from importlib.metadata import entry_points

        for ep in entry_points(group="torch_diagnose.checks"):
            if ep.value not in providers:
                providers.append(ep.value)
    except Exception:  # metadata can be missing when running from a source tree
        pass
    extra = [m.strip() for m in os.environ.get("TORCH_DIAGNOSE_CHECKS", "").split(",") if m.strip()]
    return providers + [m for m in extra if m not in providers]


def registered_checks() -> dict[str, CheckSpec]:
    """The checks registered so far, without importing any provider."""
    return dict(_REGISTRY)


def load_checks() -> dict[str, CheckSpec]:
    """Import every check provider once (see `check_providers`); the checks in run order."""
    global _loaded
    if not _loaded:
        _loaded = True
        for name in check_providers():
            importlib.import_module(name)
    return dict(sorted(_REGISTRY.items(), key=lambda kv: (kv[1].order, kv[0])))


def get_check(check_id: str) -> CheckSpec:
    checks = load_checks()
    if check_id not in checks:
        raise UsageError(f"unknown check {check_id!r}{did_you_mean(check_id, checks)} "
                         f"(known checks: {', '.join(checks)}; see --list-checks)")
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
                    f"unknown check or family {name!r}{did_you_mean(name, [*checks, *families])} "
                    f"(checks: {', '.join(checks)}; families: {', '.join(sorted(families))})"
                )
        return chosen

    chosen = expand(include, for_include=True) if include else {cid for cid, s in checks.items() if s.default}
    chosen -= expand(skip or [], for_include=False)
    return [spec for cid, spec in checks.items() if cid in chosen]
