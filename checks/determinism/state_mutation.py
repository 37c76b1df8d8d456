"""`state_mutation`: a forward pass changes no parameter, buffer or stateful module attribute."""
from __future__ import annotations

from typing import Any

from torch_diagnose import fingerprint as fp
from torch_diagnose import inputs as inp
from torch_diagnose.context import Context
from torch_diagnose.determinism import FIRST_CALL_KEY, REPEAT_KEY, ROLLED_KEY
from torch_diagnose.determinism.batch import batch_dim, batch_size, rolled, select
from torch_diagnose.determinism.state import Finding, findings
from torch_diagnose.locate.code import LIBRARY, library_name, owner
from torch_diagnose.registry import CheckOptions, Option, register
from torch_diagnose.results import CheckResult
from torch_diagnose.text import plural


@register(
    "state_mutation",
    family="determinism",
    title="a forward pass changes no parameter, buffer or module attribute",
    order=5,
    options=(
        Option("calls", int, 3, "forward calls to watch: the reference, a repeat, the batch rolled by one (new content, "
               "same shape), then fresh random inputs"),
    ),
)
def state_mutation(ctx: Context, opts: CheckOptions) -> CheckResult:
    """A forward pass must not change parameters, buffers, or module attributes holding state.

    Fingerprints the model (parameters, buffers, tensor attributes, lists/dicts/sets and what they
    hold, plain objects' attributes, scalars) before the first call, after it, and after a few more
    (a repeat, then the batch rolled by one: new content, same shape). Each mutated entry is named
    by dotted path with how it changed ("grew from 0 to 3 items", "changed from 0 to 3", "values
    changed by max abs X") and the line that changes it; BatchNorm running statistics are traced to
    the module left in training mode. A cache filled on the first call and unchanged after is a
    warning, not a failure.
    Runs first in its family: `determinism` reuses its repeat and `batch_invariance` its rolled batch.
    """
    n_calls = max(2, int(opts.calls))
    snaps, first_call_watched = _watch(ctx, n_calls)
    per_call, lazy = _changes(snaps, first_call_watched)
    found = findings(ctx.model, per_call, True, n_calls) + findings(ctx.model, lazy, False, n_calls)

    entries = snaps[0].entries.values()
    counts = {kind: sum(1 for e in entries if e.kind == kind) for kind in ("parameter", "buffer", "attribute")}
    metrics: dict[str, Any] = {"calls": n_calls, "entries": len(snaps[0].entries), **{f"{k}s": v for k, v in counts.items()},
                               "mutated_every_call": sum(1 for f in found if f.per_call),
                               "filled_on_first_call": sum(1 for f in found if not f.per_call),
                               "snapshot_mb": round(snaps[0].cloned_bytes / 2**20, 2)}
    details: dict[str, Any] = {"changes": [f.to_dict() for f in found], "calls": n_calls,
                               "first_call_watched": first_call_watched}
    if snaps[0].summarized:
        details["note"] = (f"{snaps[0].summarized} large tensors were fingerprinted by a sample of {fp.SAMPLE_SIZE} elements, "
                           "and their version counter (not every element)")
    if not found:
        return CheckResult.passed(
            f"{n_calls} forward calls left all {counts['parameter']} parameters, {counts['buffer']} buffers and "
            f"{counts['attribute']} attributes unchanged", metrics=metrics, details=details)
    return _mutated(found, metrics, details)


def _watch(ctx: Context, n_calls: int) -> tuple[list[fp.Snapshot], bool]:
    """Snapshots before the first call, after it, and after the last: a repeat (shared with
    `determinism`), the batch rolled by one (shared with `batch_invariance`), then fresh inputs.
    The first call is `eval_mode`'s reference run when it snapshot it and nothing ran since.
    Also returns whether the snapshots saw the model's very first call."""
    model = ctx.model
    shared = ctx.peek(FIRST_CALL_KEY)
    if shared and shared[2] == ctx.stats.calls:
        snaps, first_call_watched = list(shared[:2]), True
    else:
        first_call_watched = not ctx.has_cached("reference") and ctx.stats.calls == 0
        snaps = [fp.snapshot(model)]
        if ctx.has_cached("reference"):
            ctx.forward()
        else:
            ctx.reference  # noqa: B018 - the first call
        snaps.append(fp.snapshot(model))
    if shared:
        shared.clear()  # free the shared snapshots
    dim, _ = batch_dim(ctx, None)
    n = batch_size(ctx.inputs, dim)
    for i in range(1, n_calls):
        if i == 1:
            out = ctx.forward()
            ctx.cached(REPEAT_KEY, lambda: out)
        elif i == 2 and n is not None and n > 1:  # new content, same shape: the batch rolled by one
            perm = rolled(n)
            rolled_out = ctx.forward(select(ctx.inputs, perm, dim, n))
            ctx.cached(ROLLED_KEY, lambda: (dim, n, perm, rolled_out))
        else:
            ctx.forward(inp.fresh_like(ctx.inputs, seed=ctx.options.seed + 1000 + i))
    snaps.append(fp.snapshot(model))  # after the last call: state that changes on later calls differs from snaps[1]
    return snaps, first_call_watched


def _changes(snaps: list[fp.Snapshot], first_call_watched: bool) -> tuple[list[fp.Change], list[fp.Change]]:
    """(changed on every call, in model order; filled on the first call only). A first call not
    watched (someone ran the model before) cannot tell a lazy cache from per-call state."""
    later = {ch.path: ch for ch in fp.diff(snaps[1], snaps[2])}
    first = {ch.path: ch for ch in fp.diff(snaps[0], snaps[1])}
    overall = {ch.path: ch for ch in fp.diff(snaps[0], snaps[2])} if later else {}
    per_call_paths = list(later) + ([p for p in first if p not in later] if not first_call_watched else [])
    lazy_paths = [p for p in first if p not in later] if first_call_watched else []
    per_call = [overall.get(p) or later.get(p) or first[p] for p in per_call_paths]
    order = list(snaps[0].entries) + [p for p in snaps[-1].entries if p not in snaps[0].entries]
    rank = {p: i for i, p in enumerate(order)}
    per_call.sort(key=lambda c: rank.get(c.path, 0))
    return per_call, [first[p] for p in lazy_paths]


def _mutated(found: list[Finding], metrics: dict[str, Any], details: dict[str, Any]) -> CheckResult:
    head = found[0]
    shown = "; ".join(f"`{f.path}` {f.description}" for f in found[:4]) + (" ..." if len(found) > 4 else "")
    fields = dict(culprit=head.culprit, hint=head.hint, metrics=metrics, details=details)
    if any(f.per_call for f in found):
        n = metrics["mutated_every_call"]
        return CheckResult.failed(f"forward changes {n} piece{'s' if n > 1 else ''} of model state on every call: {shown}", **fields)
    were = "were" if len(found) > 1 else "was"
    libraries = {library_name(f.culprit.file) for f in found}
    if None not in libraries and all(owner(f.culprit.file) == LIBRARY for f in found):
        # A library's lazy cache (torchvision's RoI poolers set their scales on the first call): nothing the user
        # can change, and harmless when later calls leave it alone. Said, not warned.
        return CheckResult.passed(f"{plural(len(found), 'entry', 'entries')} {were} filled on the first call by "
                                  f"{', '.join(sorted(libraries))} library code, then left unchanged (lazy caches: harmless): "
                                  f"{shown}", metrics=metrics, details=details)
    return CheckResult.warned(f"{plural(len(found), 'entry', 'entries')} {were} filled on the first call, then left unchanged: {shown}",
                              **fields)
