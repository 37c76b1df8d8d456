"""Which checks exist, read from the check modules' *source* without importing them (so without
torch): every `@register("id", ...)` decorator, its function's docstring and its options.

This runs at every pytest start-up, so only each decorator and its function's head are parsed.
Check modules may sit in sub-folders (`checks/<family>/<check>.py`): packages are read recursively.
"""
from __future__ import annotations

import ast
import importlib.util
import re
from pathlib import Path
from typing import Any, Callable

from ..registry import check_providers, registered_checks

_DECORATOR = re.compile(r"^@(?:\w+\.)*register\(", re.M)
_DEF = re.compile(r"^(?:async[ \t]+)?def[ \t]+\w+", re.M)
_DOCSTRING = re.compile(r"[ \t]+[rRuU]?(\"\"\"|\'\'\')")


def discover_checks() -> dict[str, str]:
    """check id -> documentation, read from `@register("id", ...)` decorators in the providers'
    source without importing them. Checks already imported are taken from the registry as well
    (those registered dynamically included)."""
    return {check_id: doc for check_id, (doc, _family) in _discover().items()}


def known_names() -> set[str]:
    """Every check id and family name found, torch-free: `--diagnose-checks` is checked against
    these at start-up (the registry, which imports torch, decides only about names not found here)."""
    found = _discover()
    return set(found) | {family for _doc, family in found.values() if family}


def _discover() -> dict[str, tuple[str, str]]:
    """check id -> (documentation, family), from the providers' source and the registry."""
    found: dict[str, tuple[str, str]] = {}
    for provider in check_providers():
        for path in _module_files(provider):
            try:
                text = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                continue
            for check_id, doc, family in _checks_in_source(text):
                found.setdefault(check_id, (doc, family))
    for check_id, spec in registered_checks().items():
        options = [(o.name, o.type.__name__, repr(o.default), o.help) for o in spec.options]
        found.setdefault(check_id, (_doc_with_options(spec.doc, options), spec.family))
    return found


def _package_sources(base: Path) -> list[Path]:
    """Every public source file of a package folder, sub-packages included."""
    return sorted(p for p in base.rglob("*.py") if not p.name.startswith("_") or p.name == "__init__.py")


def _spec_files(spec: Any) -> list[Path]:
    if spec is None:
        return []
    if spec.submodule_search_locations:
        return [p for loc in spec.submodule_search_locations for p in _package_sources(Path(loc))]
    return [Path(spec.origin)] if spec.origin and spec.origin.endswith(".py") else []


def _find_spec(name: str) -> Any:
    try:
        return importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None


def _module_files(name: str) -> list[Path]:
    """The source files of a module or package, found without importing it where possible: the
    top-level package is located without importing it; a package installed under another folder
    name (package-dir mapping, as `torch_diagnose.checks`) is found through its own spec, which
    imports only its parents (torch-free for the built-in checks)."""
    parts = name.split(".")
    top = _find_spec(parts[0])
    if top is None or len(parts) == 1:
        return _spec_files(top)
    for loc in top.submodule_search_locations or []:
        base = Path(loc, *parts[1:])
        if base.is_dir():
            return _package_sources(base)
        if base.with_suffix(".py").is_file():
            return [base.with_suffix(".py")]
    return _spec_files(_find_spec(name))


def _checks_in_source(text: str) -> list[tuple[str, str, str]]:
    """Parse only each `@register(...)` decorator with its function's signature and docstring: a
    whole check module takes ~10x longer to parse. A snippet that does not parse falls back to
    parsing the whole file."""
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


def _checks_in_tree(text: str) -> list[tuple[str, str, str]]:
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return []
    return _registered(ast.walk(tree), text)


def _registered(nodes: Any, text: str) -> list[tuple[str, str, str]]:
    """The (check id, documentation, family) of every `@register(...)`-decorated function among `nodes`."""
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
                   constant: Callable[[str], ast.expr | None]) -> tuple[str, str, str] | None:
    if not isinstance(dec, ast.Call) or not dec.args:
        return None
    callee = dec.func
    name = callee.id if isinstance(callee, ast.Name) else callee.attr if isinstance(callee, ast.Attribute) else ""
    first = dec.args[0]
    if name != "register" or not isinstance(first, ast.Constant) or not isinstance(first.value, str):
        return None
    title = _keyword(dec, "title")
    doc = ast.get_docstring(func) or str(title)
    options = []
    for kw in dec.keywords:
        if kw.arg == "options" and isinstance(kw.value, (ast.Tuple, ast.List)):
            options += [_option(opt, constant) for opt in kw.value.elts if isinstance(opt, ast.Call) and len(opt.args) >= 3]
    return first.value, _doc_with_options(doc, options), _keyword(dec, "family")


def _keyword(dec: ast.Call, name: str) -> str:
    """A string keyword of the decorator (`title=`, `family=`), or "" when absent or not a literal."""
    return next((str(kw.value.value) for kw in dec.keywords if kw.arg == name and isinstance(kw.value, ast.Constant)), "")


def _option(opt: ast.Call, constant: Callable[[str], ast.expr | None]) -> tuple[str, str, str, str]:
    """(name, type, default, help) of an `Option(...)` call, as source text."""
    args = [ast.unparse((constant(a.id) or a) if isinstance(a, ast.Name) else a) for a in opt.args[:4]]
    help_text = opt.args[3].value if len(opt.args) > 3 and isinstance(opt.args[3], ast.Constant) else ""
    return args[0].strip("'\""), args[1], args[2], str(help_text)


def _doc_with_options(doc: str, options: list[tuple[str, str, str, str]]) -> str:
    if not options:
        return doc
    lines = [f"  {name} ({kind}, default {default}): {help_text}" for name, kind, default, help_text in options]
    return doc + "\n\nOptions:\n" + "\n".join(lines)
