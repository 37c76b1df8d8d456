"""`determinism`: the same input gives the same output in every way serving may run the model."""
from __future__ import annotations

import itertools
from typing import Any

import torch

from torch_diagnose.compare import compare
from torch_diagnose.context import Context
from torch_diagnose.degenerate import RAISED, not_localised
from torch_diagnose.determinism import REPEAT_KEY
from torch_diagnose.determinism.batch import sample_zero
from torch_diagnose.determinism.branching import localise_config
from torch_diagnose.determinism.configs import (LAYOUTS, Config, RunError, explain_error, named_inputs, other_thread_count,
                                                relayout, run)
from torch_diagnose.determinism.judge import Row, judge, tolerances
from torch_diagnose.determinism.randomness import localise_randomness
from torch_diagnose.determinism.state import state_change_culprit
from torch_diagnose.registry import CheckOptions, Option, register
from torch_diagnose.results import CheckResult
from torch_diagnose.text import one_line

#: One single-setting pass: (label, configuration, the parts a combined pass splits into).
Probe = tuple[str, Config, list[tuple[str, Config]]]


def _layout_list(raw: Any) -> list[str]:
    """`-o determinism.layouts=channels_last,strided`; empty, `none` and `off` skip the layout passes."""
    items = raw if isinstance(raw, (list, tuple)) else str(raw).split(",")
    return [str(m).strip() for m in items if str(m).strip() and str(m).strip().lower() not in ("none", "off")]


@register(
    "determinism",
    family="determinism",
    title="same input, same output: across repeats, RNG seeds, grad modes, threads and memory layouts",
    order=10,
    options=(
        Option("repeats", int, 1, "extra repeat runs compared bitwise (the seeded runs are repeats too)"),
        Option("seeds", list, [1, 2], "two global RNG seeds to run under; outputs must not depend on them"),
        Option("grad_modes", bool, True, "run the seeded runs under no_grad and with grad enabled; compare with inference_mode"),
        Option("threads", int, 1, "compare a run at this many intra-op threads with torch's current count (0 skips)"),
        Option("layouts", list, ["auto"], "input layouts to compare with contiguous inputs: auto (channels_last for 4-D/5-D, "
               "strided otherwise), channels_last, strided; empty skips", choices=LAYOUTS, parse=_layout_list),
        Option("combine", bool, True, "compare threads and the first layout in one pass (split only when it does not match)"),
        Option("one_sample", bool, True, "run the seed, grad-mode, thread and layout comparisons on sample 0 of the batch alone "
               "(a 1-thread pass of a whole batch costs about cores x a forward); false uses the whole example batch"),
    ),
)
def determinism(ctx: Context, opts: CheckOptions) -> CheckResult:
    """The same input must give the same output in every way serving may run the model.

    Bitwise: repeat runs, and runs under two global RNG seeds (no random op may run at inference).
    Bitwise or within tolerance: `torch.no_grad()` and grad-enabled runs against `inference_mode`
    (run as the seeded runs, split only when they differ), 1 thread against torch's thread count,
    and channels_last / strided inputs against contiguous ones (one pass with the thread change,
    split only when it does not match). Repeats use the whole example batch against the reference;
    the other comparisons run on sample 0 alone (shared with batch_invariance), which keeps the
    1-thread pass cheap on many-core machines (`one_sample=false` uses the whole batch). Where kernels reorder sums the
    tolerance is calibrated from the model's own fp32-vs-fp64 error; details["comparisons"] says
    which comparisons were bitwise and which within tolerance. A random op is named with its
    module and line; a grad/thread/layout difference with the module and the line that branches on
    `torch.is_grad_enabled()`, `torch.get_num_threads()` or `x.is_contiguous()`.
    """
    seeds = tuple(int(s) for s in opts.seeds)[:2]
    seeds = seeds if len(seeds) == 2 else (1, 2)
    rows = _repeats(ctx, max(0, int(opts.repeats)))
    # Grad modes, seeds, threads and layouts are compared on sample 0 alone (against sample 0 alone in
    # the default settings, a run batch_invariance reuses): a 1-thread pass of the whole batch costs
    # ~cores forwards, one sample of it ~cores/batch.
    sample = sample_zero(ctx) if opts.one_sample else None
    probe_inputs, base_out = (sample[2], sample[3]) if sample is not None else (ctx.inputs, ctx.reference)
    seeded, grad_errors = _seeded_runs(ctx, seeds, bool(opts.grad_modes), probe_inputs, base_out)
    rows += seeded
    # intra-op threads only matter for CPU kernels
    other = other_thread_count(int(opts.threads)) if ctx.device is None or ctx.device.type == "cpu" else None
    probes = _probes(ctx, other, list(opts.layouts), bool(opts.combine), probe_inputs)
    probed, run_errors = _run_probes(ctx, probes, probe_inputs, base_out)
    rows += probed
    scope = (f"sample 0 of the batch run alone (batch dim {sample[0]}), against sample 0 alone under inference_mode"
             if sample is not None else "the example inputs, against the reference")
    return _result(ctx, rows, run_errors, grad_errors, seeds, probe_inputs, scope)


def _repeats(ctx: Context, repeats: int) -> list[Row]:
    """Repeat runs of the example inputs against the reference, bitwise (the first one made by state_mutation)."""
    cached = ctx.peek(REPEAT_KEY)
    rows = []
    for i in range(repeats):
        out = cached if i == 0 and cached is not None else ctx.forward()
        rows.append(judge(ctx, f"repeat {i + 1}", out, ctx.reference, bitwise_only=True))
    return rows


def _seeded_runs(ctx: Context, seeds: tuple[int, ...], grad_modes: bool, probe_inputs: Any, base_out: Any) -> tuple[list[Row], list[str]]:
    """A run per seed, the seeds taking turns at no_grad and grad enabled: one equal run covers both;
    a differing one is split into the seed alone (bitwise) and the grad mode (within tolerance)."""
    rows: list[Row] = []
    grad_errors: list[str] = []
    modes = ("no_grad", "grad") if grad_modes else ("inference_mode",)
    for seed, mode in zip(seeds, itertools.cycle(modes)):
        cfg = Config(grad_mode=mode, seed=seed)
        mode_text = "grad enabled" if mode == "grad" else mode
        out, error = None, None
        try:
            out = run(ctx, cfg, probe_inputs)
        except Exception as exc:
            if mode == "inference_mode":
                raise
            error = one_line(exc)
        if out is not None and compare(out, base_out, rtol=0.0, atol=0.0).passed:
            rows.append(Row(f"seed {seed} {cfg.describe()}", "bitwise", True, True, 0.0,
                            covers=[f"seed {seed}"] + ([f"{mode_text} vs inference_mode"] if mode != "inference_mode" else [])))
            continue
        pure = out if mode == "inference_mode" else run(ctx, Config(seed=seed), probe_inputs)
        row = judge(ctx, f"seed {seed}", pure, base_out, bitwise_only=True)
        rows.append(row)
        if error is not None:
            grad_errors.append(f"{mode}: {error}")
        elif mode != "inference_mode":
            rows.append(_with_configs(judge(ctx, f"{mode_text} vs inference_mode (seed {seed})", out, base_out if row.bitwise else pure),
                                      Config(seed=seed), cfg))
    return rows, grad_errors


def _probes(ctx: Context, other: int | None, layouts: list[str], combine: bool, probe_inputs: Any) -> list[Probe]:
    """Thread and layout passes: the thread change and the first layout in one pass when `combine`."""
    layout_probes = [(m, named_inputs(relayout(probe_inputs, m)[1], probe_inputs, ctx.model)) for m in layouts]
    layout_probes = [(m, changed) for m, changed in layout_probes if changed]
    probes: list[Probe] = []
    thread_label = f"threads {other} vs {torch.get_num_threads()}" if other else ""
    if combine and other and layout_probes:
        mode, changed = layout_probes.pop(0)
        layout_label = f"{', '.join(changed)} vs contiguous"
        probes.append((f"{thread_label} + {layout_label}", Config(threads=other, layout=mode),
                       [(thread_label, Config(threads=other)), (layout_label, Config(layout=mode))]))
    elif other:
        probes.append((thread_label, Config(threads=other), []))
    for mode, changed in layout_probes:
        probes.append((f"{', '.join(changed)} vs contiguous", Config(layout=mode), []))
    return probes


def _run_probes(ctx: Context, probes: list[Probe], probe_inputs: Any, base_out: Any) -> tuple[list[Row], list[tuple[str, RunError]]]:
    """Each pass within tolerance of the default settings; a combined pass that fails (or raises) is split to name the cause."""
    rows: list[Row] = []
    errors: list[tuple[str, RunError]] = []

    def attempt(label: str, cfg: Config, *, explain: bool = True) -> Row | None:
        try:
            out = run(ctx, cfg, probe_inputs)
        except Exception as exc:
            if explain:
                errors.append((label, explain_error(ctx, lambda: run(ctx, cfg, probe_inputs), exc)))
            return None
        return _with_configs(judge(ctx, label, out, base_out), Config(), cfg)

    for label, cfg, parts in probes:
        row = attempt(label, cfg, explain=not parts)
        if row is not None:
            row.covers = [p for p, _ in parts]
            rows.append(row)
        if parts and (row is None or not row.ok):  # split the combined pass to name the cause
            rows += [r for r in (attempt(part_label, part_cfg) for part_label, part_cfg in parts) if r is not None]
    return rows, errors


def _with_configs(row: Row, base: Config, other: Config) -> Row:
    row.configs = (base, other)
    return row


# -- judge and explain ------------------------------------------------------------------------


def _result(ctx: Context, rows: list[Row], run_errors: list[tuple[str, RunError]], grad_errors: list[str],
            seeds: tuple[int, ...], probe_inputs: Any, scope: str) -> CheckResult:
    metrics, details = _report(ctx, rows, grad_errors, scope)
    random_rows = [r for r in rows if r.expected == "bitwise" and not r.bitwise]
    if random_rows:
        return _random_result(ctx, random_rows, seeds, metrics, details)
    if run_errors:
        return _error_result(run_errors, metrics, details)
    outside = [r for r in rows if r.expected != "bitwise" and not r.ok]
    # Combined passes that were split: judge by their parts, not twice.
    outside = [r for r in outside if not r.covers] or [r for r in outside if r.covers]
    if outside:
        return _outside_result(ctx, outside, probe_inputs, metrics, details)
    bitwise = [r for r in rows if r.bitwise]
    within = [r for r in rows if r.expected != "bitwise" and r.ok and not r.bitwise]
    summary = (f"{len(rows)} comparisons: {len(bitwise)} bitwise identical ({', '.join(r.comparison for r in bitwise)})"
               + (f"; {len(within)} within the calibrated tolerance ("
                  + ", ".join(f"{r.comparison}: max abs {r.max_abs:.2g} within {r.tolerance}" for r in within) + ")" if within else ""))
    if "sample 0" in scope:
        summary += "; seeds, grad modes, threads and layouts compared on sample 0 alone"
    if grad_errors:
        return CheckResult.warned(summary + f"; the grad-mode runs could not run: {grad_errors[0]}",
                                  hint="a forward with grad enabled failed after inference_mode runs (often an inference tensor cached on "
                                  "the module and reused under autograd): cache tensors outside inference_mode or clone them",
                                  metrics=metrics, details=details)
    return CheckResult.passed(summary, metrics=metrics, details=details)


def _report(ctx: Context, rows: list[Row], grad_errors: list[str], scope: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Metrics and details every outcome shares: which comparisons were bitwise, which within tolerance."""
    tol_rows = [r for r in rows if r.expected != "bitwise"]
    bit_rows = [r for r in rows if r.expected == "bitwise"]
    within = [r for r in tol_rows if r.ok and not r.bitwise]
    bitwise = [r for r in rows if r.bitwise]
    metrics: dict[str, Any] = {
        "runs_compared": len(bit_rows),
        "bitwise_equal_runs": sum(1 for r in bit_rows if r.bitwise),
        "comparisons": len(rows),
        "bitwise_comparisons": len(bitwise),
        "within_tolerance_comparisons": len(within),
        "outside_tolerance_comparisons": len([r for r in tol_rows if not r.ok]),
        "max_abs_diff": max((r.max_abs for r in tol_rows), default=0.0),
    }
    details: dict[str, Any] = {
        "comparisons": [r.to_dict() for r in rows],
        "compared_on": {"repeats": "the example inputs, against the reference", "seeds, grad modes, threads, layouts": scope},
        "bitwise": [r.comparison for r in bitwise],
        "within_tolerance": [r.comparison for r in within],
    }
    if within or any(not r.ok for r in tol_rows):
        details["tolerance_source"] = tolerances(ctx).source
    if tol_rows:
        details["plot"] = {"kind": "barh", "title": "largest difference from the reference, per comparison",
                           "x": [r.comparison for r in rows], "series": {"max abs diff": [r.max_abs for r in rows]},
                           "xlabel": "comparison", "ylabel": "max abs diff", "logy": False}
    if grad_errors:
        details["grad_mode_errors"] = grad_errors
    return metrics, details


def _random_result(ctx: Context, random_rows: list[Row], seeds: tuple[int, ...], metrics: dict[str, Any],
                   details: dict[str, Any]) -> CheckResult:
    """Runs of the same input differ: a random op, else state kept between calls, else the first divergent module."""
    worst = max(random_rows, key=lambda r: r.max_abs)
    metrics.update(worst.comp.metrics() if worst.comp is not None else {})
    culprit, hint, extra = localise_randomness(ctx, (seeds[0], seeds[1]))
    if not extra.get("random_ops"):
        state = state_change_culprit(ctx)
        if state is not None:
            culprit = state.culprit
            hint = f"the output changes between calls because the model keeps state: {state.hint}"
            extra["state_change"] = state.to_dict()
    details.update(extra)
    details["differing_runs"] = [f"{r.comparison}: {r.message}" for r in random_rows]
    return CheckResult.failed(
        f"outputs change between runs of the same input ({len(random_rows)} of {metrics['runs_compared']} runs differ; worst: "
        f"{worst.comparison}, max abs diff {worst.max_abs:.3g})",
        culprit=culprit, hint=hint, metrics=metrics, details=details,
    )


def _error_result(run_errors: list[tuple[str, RunError]], metrics: dict[str, Any], details: dict[str, Any]) -> CheckResult:
    label, err = run_errors[0]
    hint = (f"the model raises with {label.split(' vs ')[0]}: {err.message}" + (f" at `{err.code}`" if err.code else "")
            + "; serving stacks hand over such tensors (e.g. channels_last images, slices): call `.contiguous()` where the model needs it, "
            "or use `.reshape()` instead of `.view()`")
    details["errors"] = [f"{lbl}: {e.message} in {e.label}" for lbl, e in run_errors]
    details[RAISED] = True
    return CheckResult.failed(f"the model fails with {label}: {err.message}", culprit=err.culprit, hint=hint,
                              metrics=metrics, details=details)


def _outside_result(ctx: Context, outside: list[Row], probe_inputs: Any, metrics: dict[str, Any],
                    details: dict[str, Any]) -> CheckResult:
    """Another setting computes a different function: name the module and the line that branches on it."""
    worst = max(outside, key=lambda r: (r.comp.max_rms_rel if r.comp is not None else 0.0, r.max_abs))
    if worst.comp is not None:
        metrics.update(worst.comp.metrics())
    culprit, hint = None, f"outputs differ in `{worst.comparison}` beyond the calibrated tolerance"
    skipped = not_localised(ctx)
    if skipped:
        details["localisation"] = skipped
    elif worst.configs is not None:
        culprit, hint, extra = localise_config(ctx, worst.configs[0], worst.configs[1], worst, probe_inputs)
        details.update(extra)
    details["differences"] = {r.comparison: r.message for r in outside}
    return CheckResult.failed(
        f"outputs differ beyond the calibrated tolerance in {len(outside)} comparison(s): {', '.join(r.comparison for r in outside)} "
        f"(worst max abs diff {worst.max_abs:.3g}, tolerance {worst.tolerance or 'default'})",
        culprit=culprit, hint=hint, metrics=metrics, details=details,
    )
