"""Where torch.export pinned a dimension: the shape guards it adds, each with the model's own line
that added it and the module running at the time, and advice in plain words per pinned dimension."""
from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass, field
from itertools import dropwhile, takewhile
from typing import Any, Iterator

import torch

from ..locate.code import TOOL, Frame, pick, stack_frames
from ..locate.culprit import Culprit
from ..locate.hooks import ModuleStack
from .cases import Sweep
from .messages import source_to_ref

_PINNING = re.compile(r"(Eq|Ne)\(\w+, -?\d+\)|(Eq|Ne)\(-?\d+, \w+\)|\w+ (<|<=|>|>=) -?\d+")
_RNN_TYPES = ("GRU", "LSTM", "RNN")


@dataclass
class Site:
    """One guard: its expression, the input sources it constrains, the line and module that added it."""

    expr: str
    frame: Frame
    sources: list[str] = field(default_factory=list)
    module: Culprit | None = None

    def text(self) -> str:
        """` (pinned by model.py:12: `code` in head (Head))`."""
        inside = f" in {self.module.label}" if self.module else ""
        return f" (pinned by {self.frame.location}: `{self.frame.code}`{inside})"


def _export_frame() -> Frame | None:
    """The model's line running now: frames below torch-diagnose's own call into the exporter."""
    frames = dropwhile(lambda f: f.owner == TOOL, stack_frames(1))
    return pick(takewhile(lambda f: f.owner != TOOL, frames), allow_torch=False)


@contextlib.contextmanager
def capture_guards(model: torch.nn.Module, *, hooks: bool = True) -> Iterator[list[Site]]:
    """Record the shape guards torch.export adds, with the model's line that added each and the
    innermost module running at the time (module hooks: non-strict export only)."""
    records: list[Site] = []
    try:
        from torch.fx.experimental.symbolic_shapes import ShapeEnv
    except ImportError:  # pragma: no cover
        yield records
        return
    original = getattr(ShapeEnv, "_log_guard", None)
    if original is None:
        yield records
        return
    modules = ModuleStack(model if hooks else None)

    def patched(self: Any, prefix: str, g: Any, forcing_spec: bool) -> Any:
        try:
            frame = _export_frame() if len(records) < 5000 else None
            if frame is not None:
                symbols = getattr(g, "free_symbols", set())
                sources = [k for k, v in getattr(self, "source_to_var", {}).items() if v in symbols]
                module = Culprit.module(*modules.current) if hooks else None
                records.append(Site(str(g), frame, sources, module))
        except Exception:
            pass
        return original(self, prefix, g, forcing_spec)

    ShapeEnv._log_guard = patched
    try:
        with modules:
            yield records
    finally:
        ShapeEnv._log_guard = original


def pinning_sites(records: list[Site], sweep: Sweep) -> dict[str, Site]:
    """Group name -> the first guard that pinned it to a constant."""
    sites: dict[str, Site] = {}
    for rec in records:
        if not _PINNING.fullmatch(rec.expr):
            continue
        for source in rec.sources:
            ref = source_to_ref(source, sweep)
            g = sweep.group_of(*ref) if ref else None
            if g is not None and rec.expr.startswith("Eq") and g.name not in sites:
                sites[g.name] = rec
    return sites


def site_text(site: Site | None) -> str:
    return site.text() if site else ""


def site_hints(sweep: Sweep, names: list[str], sites: dict[str, Site]) -> list[str]:
    """Plain-words advice for each dimension pinned to a constant, with the line and the module."""
    hints = []
    for name in dict.fromkeys(names):
        site = sites.get(name)
        if not site:
            continue
        rnn = site.module is not None and site.module.module_type in _RNN_TYPES
        advice = ("torch.export decomposes RNN layers (GRU/LSTM/RNN) step by step, which fixes the sequence length: "
                  "export one program per length bucket, pad to a fixed length, or keep the RNN out of the export"
                  if rnn else
                  "compute sizes with x.shape/x.size() arithmetic (no int(), no literals) and avoid Python loops over a dimension")
        inside = f" in {site.module.label}" if site.module else ""
        hints.append(f"{sweep.group(name).label} is pinned by {site.frame.location} `{site.frame.code}`{inside}: {advice}")
    return hints
