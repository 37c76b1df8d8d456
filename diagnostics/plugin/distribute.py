"""pytest-xdist: the generated check items of one `--diagnose-model` run go to ONE worker.

The benchmark's deployment matrix times the variants other checks published in the same Context
(fp16/bf16, int8, TorchScript, torch.export, ONNX). Each xdist worker has its own Context, so under
the default `--dist load` a benchmark would see only what its own worker built. Keeping the
generated items together (in registry order, benchmark last) makes the matrix complete, and the
checks share one fp32 reference, fp64 copy and export sweep instead of building them per worker.

`--dist load` and `--dist loadgroup` get a scheduler that keeps xdist's load-group behaviour for
every other test and treats `diagnose[SPEC]::*` as one group; `loadscope` and `loadfile` group them
already (their scope is `diagnose[SPEC]`). Under `worksteal` they may still be split: the
controller then lists the variants the benchmark never saw (`reports.complete_matrix`).
"""
from __future__ import annotations

from typing import Any

import pytest

from .session import SessionState

#: --dist modes whose scheduler is replaced (the others group the generated items or never split them).
GROUPED_MODES = ("load", "loadgroup")


def generated_prefix(config: pytest.Config, state: SessionState) -> str | None:
    """`diagnose[SPEC]::` when this run generates check items (the same test as `add_generated_items`)."""
    if not state.spec or config.args_source == pytest.Config.ArgsSource.ARGS:
        return None
    return f"diagnose[{state.spec}]::"


def make_scheduler(config: pytest.Config, log: Any, state: SessionState) -> Any:
    """A LoadGroupScheduling that also groups the generated items, or None (xdist's own choice)."""
    prefix = generated_prefix(config, state)
    if prefix is None or config.getvalue("dist") not in GROUPED_MODES:
        return None
    from xdist.scheduler import LoadGroupScheduling

    class DiagnoseScheduling(LoadGroupScheduling):
        """Load-group scheduling, with every `diagnose[SPEC]::<check>` item in one work unit."""

        def _split_scope(self, nodeid: str) -> str:
            if nodeid.startswith(prefix):
                return prefix[:-2]
            return super()._split_scope(nodeid)

    return DiagnoseScheduling(config, log)
