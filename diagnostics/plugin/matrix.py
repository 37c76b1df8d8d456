"""The benchmark's deployment matrix under pytest-xdist, made honest by the controller.

The benchmark times the variants published in its own Context, i.e. on its own xdist worker. The
generated items are kept on one worker (`distribute`), but a scheduler that splits them (`--dist
worksteal`, a conftest's own) leaves the benchmark blind to variants built elsewhere. Every result
carries the variants its check published, so the controller adds each missing one to the matrix
as a row that says where it was built and that it was not timed, and says so in the summary.
"""
from __future__ import annotations

from typing import Any

from ..results import ERROR, SKIP
from .session import SessionState

BENCHMARK = "benchmark"


def complete_matrix(state: SessionState) -> None:
    """Add the variants the generated benchmark never saw to its matrix, once per session."""
    generated = [p for p in state.payloads if p.get("generated")]
    bench = next((p for p in generated if p["result"].get("check") == BENCHMARK), None)
    if bench is None or bench.get("matrix_completed") or bench["result"].get("status") in (SKIP, ERROR):
        return
    bench["matrix_completed"] = True
    if not state.options.check_options(BENCHMARK).get("matrix", True):
        return
    result = bench["result"]
    rows: list[dict[str, Any]] = list(result.setdefault("details", {}).get("matrix") or [])
    seen = {row.get("variant") for row in rows}
    missing: dict[str, dict[str, Any]] = {}
    for p in generated:
        for variant in p.get("variants") or []:
            if variant["name"] not in seen:
                missing.setdefault(variant["name"], {**variant, "worker": p.get("worker")})
    if not missing:
        return
    rows += [_untimed_row(variant, bench.get("worker")) for variant in missing.values()]
    result["details"]["matrix"] = rows
    names = ", ".join(missing)
    metrics = result.setdefault("metrics", {})
    metrics["not_timed_variants"] = ",".join(filter(None, [metrics.get("not_timed_variants", ""), *missing]))
    metrics["variants_built_elsewhere"] = names
    result["summary"] = (f"{result.get('summary', '')}; not timed: {names} (built on another pytest-xdist worker; "
                         "the default --dist load keeps the generated checks on one worker)")


def _untimed_row(variant: dict[str, Any], bench_worker: str | None) -> dict[str, Any]:
    """A matrix row for a variant the benchmark could not time: its verdict and error, and why."""
    worker = variant.get("worker")
    where = (f"on another pytest-xdist worker ({worker})" if worker != bench_worker
             else "after the benchmark ran")
    note = f"built by {variant.get('source_check')} {where}: not timed"
    size = variant.get("size_bytes")
    return {"variant": variant["name"], "verdict": variant.get("verdict") or "unjudged", "recommended": False,
            "size_mb": size / 1e6 if size else None, "p50_ms": None, "p99_ms": None, "speedup": None,
            "max_error": variant.get("max_error"), "source_check": variant.get("source_check"),
            "note": note, "not_timed": note}
