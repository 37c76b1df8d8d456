"""`batch_invariance`: a sample's output does not depend on the rest of its batch."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from torch_diagnose import inputs as inp
from torch_diagnose.context import Context
from torch_diagnose.degenerate import not_localised
from torch_diagnose.determinism import ROLLED_KEY, SAMPLE_KEY
from torch_diagnose.determinism.batch import OutputRows, batch_dim, batch_size, concat, rolled, select, spread
from torch_diagnose.determinism.configs import explain_error
from torch_diagnose.determinism.judge import Row, judge, rel_for, tolerances
from torch_diagnose.determinism.mixing import batch_hint, localise_batch
from torch_diagnose.registry import CheckOptions, Option, register
from torch_diagnose.results import CheckResult, SkipCheck
from torch_diagnose.text import one_line
from torch_diagnose.tree import flatten


@dataclass
class _Batch:
    """The batch under test: its inputs and outputs, size, batch dim, and whether it was built from one sample."""

    inputs: Any
    reference: Any
    n: int
    dim: Any  # BatchDims: per input (a list of images is a batch along the list)
    dim_source: str
    synthesized: bool
    indices: list[int] = field(default_factory=list)  # the samples run alone
    perm: list[int] = field(default_factory=list)  # the reordered batch (empty: not run)


@register(
    "batch_invariance",
    family="determinism",
    title="a sample's output does not depend on the rest of its batch",
    order=20,
    options=(
        Option("batch_dim", int, None, "the inputs' batch dimension (default: Target.batch_dim, else found from the example inputs)"),
        Option("max_samples", int, 8, "how many samples to run alone (spread over the batch)"),
        Option("permute", bool, True, "also run the batch in another order (rolled by one)"),
    ),
)
def batch_invariance(ctx: Context, opts: CheckOptions) -> CheckResult:
    """Each sample run alone, and the batch run in another order, must match its row of the batched output.

    The batch dimension comes from the `batch_dim` option, `Target.batch_dim`, or the first dim all
    example inputs agree on; each output leaf's batch dim is found by comparing batched and
    sample-alone shapes, so tuple/dict inputs and nested outputs work. Rows are compared bitwise
    first, then within the tolerance calibrated from the model's fp32-vs-fp64 error. A batch of
    one is grown to two with a fresh random sample (and the summary says so). On failure, hooks
    name the first module whose per-sample output depends on the other samples (its input rows
    equal, its output rows not), e.g. a BatchNorm in training mode, and an op tape names the line
    inside a user-written module (e.g. `x - x.mean(0)`).
    """
    b = _the_batch(ctx, opts.batch_dim)
    b.indices = spread(b.n, int(opts.max_samples))
    singles: list[Any] = []
    shared = ctx.peek(SAMPLE_KEY) if not b.synthesized else None  # sample 0 alone, made by determinism
    for i in b.indices:
        if i == 0 and shared is not None and shared[:2] == (b.dim, b.n):
            singles.append(shared[3])
            continue
        part = select(b.inputs, [i], b.dim, b.n)
        try:
            singles.append(ctx.forward(part))
        except Exception as exc:
            return _single_error_result(ctx, exc, part, i, b)

    ref_flat = flatten(b.reference)
    split = OutputRows.of(b.reference, singles[0], b.n)
    if not split:
        raise SkipCheck(f"no output has a batch dimension of size {b.n} that becomes 1 for one sample (outputs: {', '.join(ref_flat)})")
    rows = [judge(ctx, f"sample {i} alone vs row {i} of the batch", split.alone(out), split.row(b.reference, i))
            for i, out in zip(b.indices, singles)]
    if opts.permute and b.n > 1:
        rows.append(_reordered(ctx, b, split))
    details: dict[str, Any] = {
        "batch_dim": b.dim.value, "batch_dim_source": b.dim_source, "output_batch_dims": split.dims, "samples_alone": b.indices,
        "comparisons": [r.to_dict() for r in rows],
    }
    unbatched = [name for name, t in ref_flat.items() if isinstance(t, torch.Tensor) and not split.listed and name not in split.leaf_dims]
    if unbatched:
        details["not_per_sample_outputs"] = unbatched
    return _result(ctx, b, rows, details)


def _the_batch(ctx: Context, given_dim: int | None) -> _Batch:
    """The example batch; a batch of one grown to two with a fresh random sample."""
    inputs = ctx.inputs
    dim, dim_source = batch_dim(ctx, given_dim)
    n = batch_size(inputs, dim)
    if n is None or n == 0:
        raise SkipCheck(f"no input tensor has a batch dimension {dim} ({dim_source}); give batch_dim if the inputs have one")
    if n > 1:
        return _Batch(inputs, ctx.reference, n, dim, dim_source, False)
    ctx.reference  # a model that cannot run its own example is an error, not a skip
    batch = concat([inputs, inp.fresh_like(inputs, seed=ctx.options.seed + 101)], dim, 1)
    try:
        reference = ctx.forward(batch)
    except Exception as exc:
        raise SkipCheck(f"the example batch has 1 sample and a batch of 2 built from it (fresh random sample) does not run: "
                        f"{one_line(exc)}") from None
    return _Batch(batch, reference, 2, dim, dim_source, True)


def _reordered(ctx: Context, b: _Batch, split: OutputRows) -> Row:
    """The batch rolled by one (made by state_mutation when it can), put back in order, against the batch."""
    b.perm = rolled(b.n)
    shared = ctx.peek(ROLLED_KEY) if not b.synthesized else None
    if shared is not None and shared[:3] == (b.dim, b.n, b.perm):
        permuted = shared[3]
    else:
        permuted = ctx.forward(select(b.inputs, b.perm, b.dim, b.n))
    return judge(ctx, "batch rolled by one vs the batch", split.in_order(permuted, b.perm), split.whole(b.reference))


def _result(ctx: Context, b: _Batch, rows: list[Row], details: dict[str, Any]) -> CheckResult:
    metrics: dict[str, Any] = {
        "batch_size": b.n, "batch_dim": b.dim.value, "samples_alone": len(b.indices), "synthesized_batch": b.synthesized,
        "bitwise_comparisons": sum(r.bitwise for r in rows), "within_tolerance_comparisons": sum(r.ok and not r.bitwise for r in rows),
        "max_abs_diff": max((r.max_abs for r in rows), default=0.0),
    }
    if any(not r.bitwise for r in rows):
        details["tolerance_source"] = tolerances(ctx).source
    details["synthesized_batch"] = b.synthesized
    note = "the example batch has 1 sample: built a batch of 2 from it and a fresh random sample (fresh_like); " if b.synthesized else ""
    failing = [r for r in rows if not r.ok]
    if not failing:
        kinds = "bitwise" if all(r.bitwise for r in rows) else f"within the calibrated tolerance (max abs {metrics['max_abs_diff']:.2g})"
        where = b.dim_source if b.dim.listed else f"batch dim {b.dim.value}, {b.dim_source}"
        return CheckResult.passed(
            f"{note}each of {len(b.indices)} {inp.batch_unit(b.inputs, b.dim)}s run alone matches its row of the batch of {b.n}"
            + (", and so does the batch in another order" if b.perm else "") + f" ({kinds}; {where})",
            metrics=metrics, details=details)
    worst = max(failing, key=lambda r: r.sort_abs)
    if worst.comp is not None:
        metrics.update(worst.comp.metrics())
    culprit, hint = None, "outputs differ between a sample alone and its row of the batch"
    skipped = not_localised(ctx)
    if skipped:
        details["localisation"] = skipped
    else:
        culprit, hint, extra = _localise(ctx, b, rows, rel_for(worst, b.reference))
        details.update(extra)
    return CheckResult.failed(
        f"{note}outputs depend on the other samples in the batch: {len(failing)} of {len(rows)} comparisons differ beyond the "
        f"calibrated tolerance (worst: {worst.comparison}, max abs diff {worst.max_abs:.3g})",
        culprit=culprit, hint=hint, metrics=metrics, details=details)


def _localise(ctx: Context, b: _Batch, rows: list[Row], rel: float) -> tuple[Any, str, dict[str, Any]]:
    """The worst sample alone against its row; when only the reordered batch differs, sample 0's row in it."""
    sample_rows = [(i, r) for i, r in zip(b.indices, rows) if not r.ok]
    if sample_rows:
        i = max(sample_rows, key=lambda ir: ir[1].sort_abs)[0]
        return localise_batch(ctx, b.inputs, i, select(b.inputs, [i], b.dim, b.n), b.n, rel, b.dim.value)
    i = b.indices[0]
    permuted_batch = select(b.inputs, b.perm, b.dim, b.n)
    return localise_batch(ctx, permuted_batch, b.perm.index(i), select(b.inputs, [i], b.dim, b.n), b.n, rel, b.dim.value)


def _single_error_result(ctx: Context, exc: BaseException, part: Any, i: int, b: _Batch) -> CheckResult:
    err = explain_error(ctx, lambda: ctx.forward(part), exc)
    hint, frame = batch_hint(ctx.model, err.module_name, err.module, b.dim.value)
    return CheckResult.failed(
        f"sample {i} cannot run alone (batch of 1 along dim {b.dim.value}): {err.message}",
        culprit=err.culprit.with_frame(frame),
        hint=f"a model that needs the rest of the batch to run one sample depends on it: {hint}",
        metrics={"batch_size": b.n, "batch_dim": b.dim.value},
        details={"error": err.message, "batch_dim": b.dim.value, "batch_dim_source": b.dim_source, "code": err.code},
    )
