"""What `memory_growth` measures: bytes still alive after each forward call, and who holds them.

`growth_run` calls the model repeatedly under the live-bytes tracker; `find_holders` walks the
model's attributes (and the module-level containers of the model's own source files) for the
tensors that survived, and `store_site` finds the line that stores into the holder.
"""
from __future__ import annotations

import gc
import inspect
import re
import sys
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch

from .. import inputs as inp
from ..context import Context
from ..locate.code import LIBRARY, USER, Frame, owner
from ..locate.culprit import STATE, Culprit, module_label
from .tracker import LiveBytesTracker

#: Module attributes that are torch's own bookkeeping, never a user's store.
_SKIP_ATTRS = frozenset({"_parameters", "_modules", "_forward_hooks", "_forward_pre_hooks", "_backward_hooks",
                         "_backward_pre_hooks", "_state_dict_hooks", "_load_state_dict_pre_hooks",
                         "_load_state_dict_post_hooks", "_state_dict_pre_hooks", "_forward_hooks_with_kwargs",
                         "_forward_pre_hooks_with_kwargs", "_forward_hooks_always_called", "_non_persistent_buffers_set"})


def _is_model_code(obj: Any) -> bool:
    """A class or Python module written by the user or a model library (not torch, not the stdlib)."""
    module = obj if inspect.ismodule(obj) else sys.modules.get(getattr(obj, "__module__", "") or "")
    return owner(getattr(module, "__file__", None)) in (USER, LIBRARY)


def walk_tensors(value: Any, depth: int = 0, seen: set[int] | None = None) -> Iterator[torch.Tensor]:
    """Tensors reachable from `value` through containers and plain objects (not modules), a few levels deep."""
    seen = set() if seen is None else seen
    if id(value) in seen or depth > 4:
        return
    seen.add(id(value))
    if isinstance(value, torch.Tensor):
        yield value
        return
    if isinstance(value, torch.nn.Module) or inspect.ismodule(value) or inspect.isclass(value) or callable(value) and not hasattr(value, "__dict__"):
        return
    if isinstance(value, dict):
        items: Any = list(value.values())
    elif isinstance(value, (list, tuple, set, frozenset)) or type(value).__name__ == "deque":
        items = list(value)
    elif hasattr(value, "__dict__") and not inspect.isroutine(value) and depth < 3:
        items = list(vars(value).values())
    else:
        return
    for item in items[:100_000]:
        yield from walk_tensors(item, depth + 1, seen)


@dataclass
class Holder:
    """A module attribute or module-level global that holds tensors surviving the calls."""

    path: str  # `trace.saved`, `tests.models.cuda_models._FEATURE_CACHE`
    bytes: int
    tensors: int
    container: str  # `list`, `Tensor`, ...
    owner: str  # the module's type, or `module <python module>`
    holds_autograd_graph: bool
    site: Frame | None  # the line that stores into it
    produced_by: list[str] = field(default_factory=list)
    hook: str = ""  # `forward hook keep (model.py:12) registered on body.0 (Linear)` when a hook fills it

    @property
    def culprit(self) -> Culprit:
        return Culprit.named(f"{self.path} ({self.container} in {self.owner})", STATE, self.site)

    def as_row(self) -> dict[str, Any]:
        return {"path": self.path, "bytes": self.bytes, "tensors": self.tensors, "container": self.container,
                "owner": self.owner, "holds_autograd_graph": self.holds_autograd_graph,
                "location": self.site.location if self.site else None, "produced_by": self.produced_by,
                **({"hook": self.hook} if self.hook else {})}


def _holder(path: str, value: Any, owner_name: str, owner_obj: Any, attr: str,
            live: dict[int, int], sites: dict[int, str], site: Any = "find") -> Holder | None:
    """The tracked live tensors `value` holds, as a Holder (None: none); `site` given, or found with `store_site`."""
    storages: dict[int, int] = {}
    grad_graph = False
    count = 0
    for t in walk_tensors(value):
        try:
            sid = id(t.untyped_storage())
        except Exception:
            continue
        if sid in live:
            storages[sid] = live[sid]
            count += 1
            grad_graph = grad_graph or t.grad_fn is not None
    if not storages:
        return None
    made_by = sorted({sites[sid] for sid in storages if sid in sites})
    return Holder(path, sum(storages.values()), count, type(value).__name__, owner_name, grad_graph,
                  store_site(owner_obj, attr) if site == "find" else site, made_by[:5])


def find_holders(model: torch.nn.Module, live: dict[int, int], sites: dict[int, str] | None = None) -> list[Holder]:
    """Module attributes (and module-level globals of the model's source files) holding tracked live tensors,
    largest first, with the modules whose forward produced them (`sites`: storage id -> module label)."""
    sites = sites or {}
    found: list[Holder | None] = []
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        for attr, value in vars(module).items():
            if attr in _SKIP_ATTRS:
                continue
            if attr == "_buffers":
                found += [_holder(f"{prefix}{b}", buf, type(module).__name__, module, b, live, sites) for b, buf in value.items()]
            else:
                found.append(_holder(f"{prefix}{attr}", value, type(module).__name__, module, attr, live, sites))
    for mod_name in sorted({type(m).__module__ for m in model.modules()}):
        pymod = sys.modules.get(mod_name)
        if pymod is None or not _is_model_code(pymod):
            continue
        for attr, value in vars(pymod).items():
            if isinstance(value, (list, dict, set, tuple)) or type(value).__name__ in ("deque", "OrderedDict") or isinstance(value, torch.Tensor):
                found.append(_holder(f"{mod_name}.{attr}", value, f"module {mod_name}", pymod, attr, live, sites))
    found += hook_holders(model, live, sites)
    return sorted((h for h in found if h is not None), key=lambda h: -h.bytes)


def _hook_stores(hook: Any) -> tuple[Any, list[tuple[str, Any, bool]]]:
    """(the hook's function, [(name, value, is_attribute)]): what a hook can store into — its object's
    attributes (a Grad-CAM helper's bound method), its closure variables and the globals it names."""
    func = getattr(hook, "__func__", None) or getattr(hook, "func", None) or hook
    stores: list[tuple[str, Any, bool]] = []
    owner_obj = getattr(hook, "__self__", None)
    if owner_obj is not None and not isinstance(owner_obj, torch.nn.Module) and hasattr(owner_obj, "__dict__"):
        stores += [(f"{type(owner_obj).__name__}.{attr}", value, True) for attr, value in vars(owner_obj).items()]
    code = getattr(func, "__code__", None)
    if code is not None:
        cells = getattr(func, "__closure__", None) or ()
        for name, cell in zip(code.co_freevars, cells):
            try:
                stores.append((name, cell.cell_contents, False))
            except ValueError:  # an empty cell
                continue
        glob = getattr(func, "__globals__", {})
        stores += [(name, glob[name], False) for name in code.co_names if name in glob and
                   (isinstance(glob[name], (list, dict, set, torch.Tensor)) or type(glob[name]).__name__ == "deque")]
    return func, stores


def _hook_site(func: Any, name: str) -> Frame | None:
    """The line of the hook that stores into `name` (`self.activations.append(...)`, `feats.append(...)`),
    else the hook's `def` line."""
    try:
        lines, start = inspect.getsourcelines(func)
        file = inspect.getsourcefile(func) or ""
    except (OSError, TypeError):
        return None
    target = (r"self\." if "." in name else "") + re.escape(name.rsplit(".", 1)[-1])
    store = re.compile(rf"(?<![\w.]){target}\s*(\.(append|extend|insert|add|update|setdefault|appendleft)\(|\[[^\]]*\]\s*=[^=]|\+=)")
    for offset, line in enumerate(lines):
        if store.search(line.split("#", 1)[0]):
            return Frame(file, start + offset, getattr(func, "__name__", ""), line.strip())
    return Frame(file, start, getattr(func, "__name__", ""), lines[0].strip() if lines else "")


def hook_holders(model: torch.nn.Module, live: dict[int, int], sites: dict[int, str]) -> list[Holder]:
    """Containers filled by forward (pre-)hooks on the model's modules: a leftover Grad-CAM hook appending
    every activation to a list is named with the hook, where it is written and the module it is on."""
    found: list[Holder] = []
    for mod_name, module in model.named_modules():
        for kind, hooks in (("forward hook", module._forward_hooks), ("forward pre-hook", module._forward_pre_hooks)):
            for hook in list(hooks.values()):
                func, stores = _hook_stores(hook)
                for name, value, _is_attr in stores:
                    holder = _holder(name, value, "", None, "", live, sites, site=None)
                    if holder is None:
                        continue
                    holder.site = _hook_site(func, name)
                    where = f" ({holder.site.location})" if holder.site else ""
                    holder.hook = f"{kind} {getattr(func, '__qualname__', func)}{where} registered on {module_label(mod_name, module)}"
                    holder.owner = f"{kind} {getattr(func, '__name__', func)} on {module_label(mod_name, module)}"
                    found.append(holder)
    return found


def _store_sources(owner_obj: Any) -> list[tuple[str | None, list[str], int]]:
    """(file, lines, first line number) of the code that may store into the owner at run time."""
    if inspect.ismodule(owner_obj):
        lines, _zero = inspect.getsourcelines(owner_obj)  # a module's lines start at 0
        return [(inspect.getsourcefile(owner_obj), lines, 1)]
    sources = []
    for cls in type(owner_obj).__mro__:
        if not _is_model_code(cls):
            continue
        for fname, fn in vars(cls).items():
            if inspect.isfunction(fn) and fname != "__init__":
                sources.append((inspect.getsourcefile(fn), *inspect.getsourcelines(fn)))
    return sources


def store_site(owner_obj: Any, attr: str) -> Frame | None:
    """The first statement outside `__init__` (or outside top-level code, for a global) that stores
    into `self.ATTR` / the global ATTR: an append, an item assignment or a rebinding."""
    is_global = inspect.ismodule(owner_obj)
    name = re.escape(attr) if is_global else rf"self\.{re.escape(attr)}"
    store = re.compile(rf"(?<![\w.]){name}\s*(\.(append|extend|insert|add|update|setdefault|appendleft)\(|\[[^\]]*\]\s*=[^=]|\+=|=[^=])")
    try:
        sources = _store_sources(owner_obj)
    except (OSError, TypeError):
        return None
    hits = []
    for file, lines, start in sources:
        for offset, line in enumerate(lines):
            if is_global and not line[:1].isspace():
                continue  # the module-level definition, not a store at run time
            if store.search(line.split("#", 1)[0]):
                hits.append((file or "", start + offset, line.strip()))
                break
    if not hits:
        return None
    file, line, code = min(hits, key=lambda h: (h[0], h[1]))
    return Frame(file, line, "", code)


@dataclass
class GrowthRun:
    retained: list[int]  # tracked bytes still alive after each call
    holders: list[Holder]  # where the survivors are held, largest first
    device_allocated: list[int]  # torch.cuda.memory_allocated() after each call (CUDA only)

    def summary(self) -> tuple[float, bool, bool]:
        """(bytes per call, steady growth, bounded growth) from retained bytes after each call."""
        retained = self.retained
        if len(retained) < 3:
            return 0.0, False, False
        deltas = [b - a for a, b in zip(retained[1:], retained[2:])]  # call 1 is warm-up (lazy caches)
        per_call = (retained[-1] - retained[1]) / max(len(retained) - 2, 1)
        steady = bool(deltas) and all(d > 0 for d in deltas[len(deltas) // 2:])
        bounded = not steady and retained[-1] > retained[0]
        return per_call, steady, bounded


def growth_run(ctx: Context, model: torch.nn.Module, calls: int, grad: bool) -> GrowthRun:
    """Retained bytes after each call (outputs dropped), with fresh inputs each call."""
    tracker = LiveBytesTracker(model, record_sites=True)
    run = GrowthRun([], [], [])
    on_cuda = ctx.device is not None and ctx.device.type == "cuda"
    with tracker:
        for i in range(calls):
            x = inp.fresh_like(ctx.inputs, seed=ctx.options.seed + 1000 + i)
            out = _grad_forward(ctx, model, x) if grad else ctx.forward(x, model)
            del out, x
            # Young generations only (a full collection costs ~0.2 s with torch loaded); one full pass at the end.
            gc.collect(1) if i < calls - 1 else gc.collect()
            run.retained.append(tracker.retained())
            if on_cuda:
                run.device_allocated.append(torch.cuda.memory_allocated(ctx.device))
        run.holders = find_holders(model, tracker.live_storages(), tracker.sites)
    return run


def _grad_forward(ctx: Context, model: torch.nn.Module, x: Any) -> Any:
    """A forward with autograd on and outputs kept attached, as a server without no_grad runs it."""
    ctx.stats.calls += 1
    with torch.enable_grad():
        return inp.call_model(model, x)
