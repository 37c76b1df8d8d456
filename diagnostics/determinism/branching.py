"""A forward that branches on its environment: the user's calls to `torch.is_grad_enabled()`,
`torch.get_num_threads()`, `x.is_contiguous()` and the like, caught by a profiler with the running
module and the line; and the first module that computes a different function in another setting."""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

from ..context import Context
from ..locate import Culprit, Frame, owner
from ..locate.code import LIBRARY, USER, frame_of
from ..locate.divergence import Divergence
from ..locate.divergence import recorded_divergence
from ..locate.hooks import ModuleStack
from ..locate.source import submodule
from .configs import Config, difference, run
from .divergence import scaled_divergence
from .judge import Row, rel_for
from .source import model_forward_frame

#: Environment queries a forward may branch on, by what they sense.
QUERIES = {
    "grad": frozenset({"is_grad_enabled", "is_inference_mode_enabled", "is_inference"}),
    "threads": frozenset({"get_num_threads", "get_num_interop_threads", "cpu_count", "sched_getaffinity"}),
    "layout": frozenset({"is_contiguous", "stride", "is_non_overlapping_and_dense", "data_ptr"}),
}
_TOPIC = {
    "grad": "make both branches compute the same function (the no-grad branch must not use other weights or ops)",
    "threads": "serving machines differ in cores: do not choose the computation by thread count",
    "layout": "a channels_last or sliced input takes the other branch: call `.contiguous()` before branching or fix that branch",
}
_MODEL_CODE = (USER, LIBRARY)


@dataclass
class Query:
    """One environment query: what was asked, in which module, on which line."""

    name: str
    module: str
    module_type: str
    frame: Frame

    @property
    def culprit(self) -> Culprit:
        return Culprit.module(self.module, self.module_type, self.frame)


class ConditionSpy:
    """A profiler catching the model's calls to environment queries (used only to localise)."""

    def __init__(self, model: Any, names: frozenset[str]) -> None:
        self.names = names
        self.events: list[Query] = []
        self._stack = ModuleStack(model)
        self._seen: set[tuple[str, int, str]] = set()
        self._old: Any = None

    def __enter__(self) -> "ConditionSpy":
        self._stack.__enter__()
        self._old = sys.getprofile()
        sys.setprofile(self._profile)
        return self

    def __exit__(self, *exc: Any) -> None:
        sys.setprofile(self._old)
        self._stack.__exit__(*exc)

    def _profile(self, frame: Any, event: str, arg: Any) -> None:
        if event == "c_call":
            name, caller = getattr(arg, "__name__", None), frame
        elif event == "call" and frame.f_code.co_name in self.names and owner(frame.f_code.co_filename) not in _MODEL_CODE:
            name, caller = frame.f_code.co_name, frame.f_back
        else:
            return
        if name not in self.names or caller is None or owner(caller.f_code.co_filename) not in _MODEL_CODE:
            return
        key = (caller.f_code.co_filename, caller.f_lineno, name)
        if key not in self._seen:
            self._seen.add(key)
            module, module_type = self._stack.current
            self.events.append(Query(name, module, module_type, frame_of(caller)))


def query_names(base: Config, other: Config) -> frozenset[str]:
    """The queries that sense the settings `other` changes."""
    names: set[str] = set()
    if base.grad_mode != other.grad_mode:
        names |= QUERIES["grad"]
    if base.threads != other.threads:
        names |= QUERIES["threads"]
    if base.layout != other.layout:
        names |= QUERIES["layout"]
    return frozenset(names)


def _user_first(events: list[Query]) -> list[Query]:
    return [e for e in events if e.frame.owner == USER] or events


def pick_event(events: list[Query], found: Divergence | None) -> Query | None:
    """The innermost query inside the divergent module, else the first one; the user's over a library's."""
    if not events:
        return None
    if found is not None:
        base = found.name.split("#")[0]
        inside = [e for e in events if not base or e.module == base or e.module.startswith(base + ".")]
        if inside:
            return _user_first(inside)[-1]
    return _user_first(events)[0]


def localise_config(ctx: Context, base: Config, other: Config, row: Row, inputs: Any | None = None) -> tuple[Culprit | None, str, dict[str, Any]]:
    """Name what makes `other` compute a different function from `base`: (culprit, hint, details).

    Two hooked runs find the first module whose output differs although its input does not; a
    profiler catches the model's calls to environment queries and gives the branching line.
    """
    model = ctx.model
    spy = ConditionSpy(model, query_names(base, other))
    rel = rel_for(row, ctx.reference)
    found, unrecorded = recorded_divergence(model, lambda: run(ctx, base, inputs), lambda: run(ctx, other, inputs),
                                            lambda a, b: scaled_divergence(a, b, rel), wrap_b=lambda: spy)
    event = pick_event(spy.events, found)
    details: dict[str, Any] = {"queries": [f"{e.module or '<root>'}: {e.name}() at {e.frame.location}" for e in spy.events]}
    if unrecorded:
        details["localisation"] = unrecorded
    if found is not None:
        details["first_divergent_module"] = found.label
        details["first_divergent_max_rel"] = found.max_abs
    what = difference(base, other)
    size = f"max abs diff {row.max_abs:.3g}" + (f", outside {row.tolerance}" if row.tolerance else "")
    if event is not None:
        kind = next((k for k, names in QUERIES.items() if event.name in names), "grad")
        code = event.frame.code.split("  #")[0].strip()
        return event.culprit, (f"`{event.module or '<root>'}.{event.frame.function}` branches on `{event.name}()` (`{code}`): it "
                               f"computes a different function {what} ({size}); {_TOPIC[kind]}"), details
    if found is not None:
        frame = model_forward_frame(submodule(model, found.name))
        return found.culprit.with_frame(frame), (
            f"module `{found.name or '<root>'}` ({found.module_type}) gives different outputs {what} for the same input ({size}): "
            "look in its forward for code that depends on the grad mode, the thread count or the input's strides"), details
    return None, f"outputs differ {what} ({size}) but no module's output differs alone: check code around the model call", details
