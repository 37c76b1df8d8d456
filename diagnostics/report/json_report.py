"""`diagnose.json`: the complete, machine-readable record of a run (exactly `RunReport.to_dict()`)."""
from __future__ import annotations

import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from ..runner import RunReport


class JsonWriter:
    """Renders the run as JSON; `to_dict()` already turned NaN/Inf into strings, so allow_nan=False holds."""

    filename = "diagnose.json"

    def render(self, run: "RunReport", *, final: bool = True) -> str:
        return json.dumps(run.to_dict(), indent=2, allow_nan=False) + "\n"
