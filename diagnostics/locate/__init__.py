"""The locating layer: every check names its culprit through here.

* `code`     — the one user-code policy (`owner`, `pick`, `current_frame`, `raise_site`, `short_path`).
* `culprit`  — `Culprit` and `module_label`.
* `hooks`    — `ModuleRecorder` (per-module inputs/outputs) and `ModuleStack` (which module is running).
* `divergence` — `first_divergence`: the module that introduces a difference between two recordings.
* `spy`      — `OpSpy`: aten operators attributed to a module and a source line; random-op policy.
* `source`   — the module whose `forward` holds a file:line; a module class's source location.

`code` and `culprit` are torch-free and re-exported here; the rest import torch and are imported by path.
"""
from __future__ import annotations

from .code import Frame, current_frame, frames_in_text, owner, pick, raise_site, short_path, stack_frames
from .culprit import Culprit, module_label

__all__ = ["Culprit", "Frame", "module_label", "owner", "pick", "current_frame", "raise_site", "short_path",
           "stack_frames", "frames_in_text"]
