"""`torch_export`: the torch.export program equals eager at swept shapes and values."""
from __future__ import annotations

from torch_diagnose.context import Context
from torch_diagnose.export.findings import dimension_culprit
from torch_diagnose.export.guards import site_hints, site_text
from torch_diagnose.export.messages import library_hint
from torch_diagnose.export.pipeline import COMMON_OPTIONS, Exporter, counterexample, failed_build, finish, get_sweep, review
from torch_diagnose.export.program import export_program
from torch_diagnose.registry import CheckOptions, register
from torch_diagnose.results import CheckResult

PROGRAM = Exporter("torch_export", "torch.export", "program", "torch.export program", "torch.export program vs eager",
                   "torch.export")

_FAILED_HINTS = {
    "data-dependent": "replace Python `if`/`while` on tensor values with torch.where, torch.cond or masking; "
                      "values that are really constants should be Python numbers, not tensors",
    "numpy": "keep the computation in torch ops (torch.tanh instead of np.tanh ...); NumPy calls cannot be captured",
}


@register("torch_export", family="export", title="torch.export program equals eager at swept shapes and values",
          options=COMMON_OPTIONS, order=61)
def torch_export(ctx: Context, opts: CheckOptions) -> CheckResult:
    """`torch.export.export` with the dynamic dimensions the sweep found (batch and declared dims as
    `Dim.DYNAMIC`, every other dimension eager accepts at other sizes as `Dim.AUTO`), then the exported
    program against eager over the sweep. Guard and specialisation errors are explained in plain
    words with the source line and the dimension (a required dimension the code pins to a constant
    fails; another one kept static warns); data-dependent control flow fails with its line.
    """
    sweep = get_sweep(ctx)
    built = export_program(ctx, sweep, float(opts.optional_dims_budget_s))
    if not built.ok:
        hint = _FAILED_HINTS.get(built.error_kind or "", "read the exporter's message in details.export_notes; "
                                 "torch.export.draft_export lists every problem at once")
        return failed_build(ctx, PROGRAM, built, sweep, library_hint(built.frame, "torch.export") or hint, "torch.export")
    rv = review(ctx, PROGRAM, sweep, built, built.extra.get("sites", {}))
    pinned = built.extra.get("pinned", {})
    for name in pinned:  # required dimensions the code specialises: exported static, so the sweep cannot see it
        g, site = sweep.group(name), rv.sites.get(name)
        if not any(g.label in f for f in rv.findings.failures):
            rv.findings.failures.append(f"{g.label} ({g.role}) cannot be exported dynamic: the code specialises it to {g.size}{site_text(site)}")
        rv.findings.blame(dimension_culprit(g, site.frame if site else None))
    rv.details["static_in_program"] = built.extra.get("static_in_program", [])
    rv.details["strict"] = built.extra.get("strict", False)
    rv.metrics["strict"] = bool(built.extra.get("strict", False))
    failing = [gv.group.name for gv in rv.outcome.groups if gv.verdict in ("static", "partial", "wrong")]
    rv.hints.extend(site_hints(sweep, list(pinned) + failing, rv.sites))
    if rv.findings.failures:
        _, folder = counterexample(ctx, opts, rv)
        if folder:
            rv.hints.append(f"repro bundle: {folder}")
    if built.extra.get("strict"):
        rv.hints.append("non-strict export failed; strict=True (TorchDynamo) captured it: export with strict=True")
    return finish(ctx, rv)
