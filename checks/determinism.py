"""Determinism family: is the model the same function in serving as it was in testing?

Checks here, in the order they run:

* `eval_mode`: no module is left in training mode, and `.eval()` reaches every module.
* `state_mutation`: a forward pass changes no parameter, buffer or stateful attribute.
* `determinism`: the same input gives the same output across repeats and RNG seeds (bitwise),
  and across grad modes, thread counts and input memory layouts (bitwise, or within a tolerance
  calibrated from the model's own fp32-vs-fp64 error where kernels legitimately reorder sums).
* `batch_invariance`: each sample's output does not depend on the other samples in its batch.

Culprits are localised only after a check fails (hooks, operator spies, profilers), so a clean
model pays for none of it. The family shares work through the Context: the reference outputs,
the calibrated tolerances, and the repeat run that `state_mutation` makes for `determinism`.
"""
from __future__ import annotations

import collections
import inspect
import itertools
import math
import os
import re
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from torch_diagnose import fingerprint as fp
from torch_diagnose import inputs as inp
from torch_diagnose.compare import Comparison, Tolerance, compare, default_tolerance, eps
from torch_diagnose.context import Context, num_threads
from torch_diagnose.errors import UsageError
from torch_diagnose.probe import ModuleRecorder, OpSpy, first_divergence, is_random_op, user_frame
from torch_diagnose.registry import CheckOptions, Option, register
from torch_diagnose.results import FAIL, PASS, WARN, CheckResult, SkipCheck
from torch_diagnose.tree import flatten, map_leaves

from ._hints import short_location

#: Module types whose forward behaves differently in training mode.
_MODE_SENSITIVE = (
    torch.nn.modules.dropout._DropoutNd,
    torch.nn.modules.batchnorm._BatchNorm,
    torch.nn.modules.instancenorm._InstanceNorm,
    torch.nn.RReLU,
    torch.nn.MultiheadAttention,
    torch.nn.TransformerEncoderLayer,
    torch.nn.TransformerDecoderLayer,
    torch.nn.RNNBase,
)


def mode_sensitive(module: torch.nn.Module) -> bool:
    """True when the module's output depends on its `training` flag."""
    if isinstance(module, _MODE_SENSITIVE):
        if isinstance(module, torch.nn.RNNBase):
            return module.dropout > 0
        return True
    forward = type(module).forward
    if forward is torch.nn.Module.forward:
        return False
    try:
        source = inspect.getsource(forward)
    except (OSError, TypeError):
        return False
    return "self.training" in source


def _overrides_train(module: torch.nn.Module) -> bool:
    return type(module).train is not torch.nn.Module.train


def _owner_with_bad_train(model: torch.nn.Module, name: str) -> tuple[str, torch.nn.Module] | None:
    """The nearest ancestor of `name` (or itself) whose class overrides `train()`."""
    parts = name.split(".") if name else []
    for depth in range(len(parts), -1, -1):
        ancestor_name = ".".join(parts[:depth])
        ancestor = model.get_submodule(ancestor_name) if ancestor_name else model
        if _overrides_train(ancestor):
            return ancestor_name, ancestor
    return None


@register("eval_mode", family="determinism", title="no module is left in training mode", order=0)
def eval_mode(ctx: Context, opts: CheckOptions) -> CheckResult:
    """Every module's `training` flag must be off for inference, and `.eval()` must reach every module.

    Looks at the model as it was handed over (before the tool calls `.eval()`), then calls
    `.eval()` and looks again: a module still training then has a `train()` override that does
    not propagate. Mode-sensitive modules (Dropout, BatchNorm, anything reading `self.training`)
    are listed first.
    """
    model = ctx.original_model
    handed_over = [name for name, training in ctx.initial_training.items() if training]
    modules = dict(model.named_modules())
    ctx.model  # switches to eval mode through the model's own train()
    after_eval = [name for name, module in model.named_modules() if module.training]
    metrics: dict[str, Any] = {
        "modules": len(modules),
        "training_at_handover": len(handed_over),
        "training_after_eval": len(after_eval),
    }

    def ordered(names: list[str]) -> list[str]:
        sensitive = [n for n in names if mode_sensitive(modules[n])]
        return sensitive + [n for n in names if n not in sensitive]

    def label(name: str) -> str:
        return f"{name or '<root>'} ({type(modules[name]).__name__})"

    if after_eval:
        names = ordered(after_eval)
        first = names[0]
        owner = _owner_with_bad_train(model, first)
        owner_text = f"`{type(owner[1]).__name__}.train()` (module `{owner[0] or '<root>'}`)" if owner else "a `train()` override"
        file = line = None
        if owner:
            try:
                file = inspect.getsourcefile(type(owner[1]).train)
                line = inspect.getsourcelines(type(owner[1]).train)[1]
            except (OSError, TypeError):
                pass
        return CheckResult(
            status=FAIL,
            summary=f"{len(after_eval)} module(s) stay in training mode even after model.eval(): "
            + ", ".join(label(n) for n in names[:5]) + (" ..." if len(names) > 5 else ""),
            culprit=f"{owner[0] or '<root>'} ({type(owner[1]).__name__}).train" if owner else label(first),
            location=short_location(file, line) or None,
            hint=f"{owner_text} does not propagate the mode to its children: call `super().train(mode)` "
            f"(or `for m in self.children(): m.train(mode)`) and return self",
            metrics=metrics,
            details={"still_training_after_eval": [label(n) for n in names], "training_at_handover": [label(n) for n in ordered(handed_over)]},
        )
    if handed_over:
        names = ordered(handed_over)
        sensitive = [n for n in names if mode_sensitive(modules[n])]
        first = names[0]
        kinds = collections.Counter(type(modules[n]).__name__ for n in sensitive)
        kind_text = ", ".join(f"{count} {name}" for name, count in kinds.most_common(4)) or "none changes behaviour"
        details = {"training_modules": [label(n) for n in names], "mode_sensitive": [label(n) for n in sensitive]}
        if "" in handed_over:  # the whole model: one cause, one fix
            return CheckResult(
                status=FAIL,
                summary=f"the model was handed over in training mode: {len(handed_over)} of {len(modules)} modules train "
                f"(mode-sensitive: {kind_text})",
                culprit=label(""),
                hint="call `model.eval()` after loading the model and before serving it; torchvision builders and "
                "freshly constructed modules start in training mode",
                metrics=metrics, details=details,
            )
        return CheckResult(
            status=FAIL,
            summary=f"{len(handed_over)} of {len(modules)} modules are in training mode (mode-sensitive: {kind_text}): "
            + ", ".join(label(n) for n in names[:5]) + (" ..." if len(names) > 5 else ""),
            culprit=label(first),
            hint=f"module `{first}` ({type(modules[first]).__name__}) is in training mode although the model is not: a `.train()` "
            "call on a submodule set it back; call `model.eval()` last, after any such call",
            metrics=metrics, details=details,
        )
    return CheckResult(status=PASS, summary=f"all {len(modules)} module(s) are in eval mode", metrics=metrics)


# ---------------------------------------------------------------------------------------------


def localise_randomness(ctx: Context, seeds: tuple[int, int]) -> tuple[str | None, str | None, str | None, dict[str, Any]]:
    """Find what makes two runs differ: (culprit, location, hint, details).

    First an operator spy names random ops (dropout, randn_like, ...) with the module and line
    that called them; then two hooked runs name the first module whose output differs although
    its input did not (catches randomness that no random op reveals, e.g. numpy or Python RNG).
    """
    model = ctx.model
    with torch.inference_mode(), OpSpy(model, is_random_op) as spy:
        torch.manual_seed(seeds[0])
        ctx.forward()
    recs = []
    for seed in seeds:
        torch.manual_seed(seed)
        with ModuleRecorder(model) as rec:
            ctx.forward()
        recs.append(rec)
    div = first_divergence(recs[0], recs[1])
    details: dict[str, Any] = {"random_ops": [
        {"op": e.op, "module": e.module or "<root>", "module_type": e.module_type, "location": short_location(e.file, e.line), "code": e.code}
        for e in spy.events
    ]}
    if div is not None:
        details["first_divergent_module"] = div.label
    event = None
    if spy.events:
        # Prefer the random op raised inside the divergent module (or its children).
        if div is not None:
            event = next((e for e in spy.events if e.module == div.name or e.module.startswith(div.name + ".") or not div.name), None)
        event = event or spy.events[0]
    if event is not None:
        module = model.get_submodule(event.module) if event.module else model
        culprit = f"{event.module or '<root>'} ({type(module).__name__})"
        location = short_location(event.file, event.line) or None
        op = event.op.replace("aten.", "")
        if isinstance(module, torch.nn.modules.dropout._DropoutNd) or (module.training and "dropout" in op):
            hint = (f"module `{event.module or '<root>'}` ({type(module).__name__}) is in training mode during inference: call `.eval()` "
                    f"after loading, or fix the `train()` override that keeps it training")
        elif "dropout" in op:
            fn = event.function or "forward"
            hint = (f"`{event.module or '<root>'}.{fn}` calls dropout with training=True"
                    + (f" (`{event.code}`)" if event.code else "") + "; pass `training=self.training`")
        else:
            hint = (f"`{event.module or '<root>'}.{event.function or 'forward'}` draws random numbers with `{op}`"
                    + (f" (`{event.code}`)" if event.code else "") + ": guard it with `if self.training:` or remove it from inference")
        return culprit, location, hint, details
    if div is not None:
        return div.label, None, (f"module `{div.name or '<root>'}` ({div.module_type}) gives different outputs for the same input: "
                                 "look for Python/NumPy randomness, uninitialised memory (torch.empty) or state kept between calls"), details
    return None, None, "the difference appears outside any module's forward hooks: check code around the model call", details




# =============================================================================================
# Shared machinery of the family: tolerances, run configurations, localisation helpers

#: Runs `state_mutation` makes and the family reuses: a repeat on the example inputs (a repeat for
#: `determinism`), and the example batch rolled by one (new content for state_mutation, the
#: reordered batch for `batch_invariance`).
_REPEAT_KEY = "determinism:repeat-output"
_ROLLED_KEY = "determinism:rolled-batch-output"
#: Sample 0 of the example batch run alone: `determinism` compares its other settings on it,
#: `batch_invariance` reuses it as its first sample-alone run.
_SAMPLE_KEY = "determinism:sample-0-output"
_HERE = os.path.dirname(os.path.abspath(__file__))
_DIAG_DIR = os.path.dirname(os.path.abspath(fp.__file__))
_TORCH_DIR = os.path.dirname(os.path.abspath(torch.__file__))
_STDLIB_DIR = os.path.dirname(os.path.abspath(os.__file__))


def _is_user_file(filename: str | None) -> bool:
    """True for the user's code: not torch, not this tool, not the standard library."""
    if not filename or filename.startswith("<"):
        return False
    path = os.path.abspath(filename)
    if path.startswith((_TORCH_DIR, _HERE, _DIAG_DIR)):
        return False
    return not (path.startswith(_STDLIB_DIR) and "site-packages" not in path)


def _label(name: str, module: torch.nn.Module | None) -> str:
    return f"{name or '<root>'} ({type(module).__name__})" if module is not None else (name or "<root>")


def _submodule(model: torch.nn.Module, name: str) -> torch.nn.Module | None:
    base = name.split("#")[0]
    try:
        return model.get_submodule(base) if base else model
    except AttributeError:
        return None


def _is_user_class(module: torch.nn.Module | None) -> bool:
    return module is not None and not type(module).__module__.startswith(("torch.", "torchvision."))


@dataclass
class _Tol:
    """Per-leaf tolerances for fp32-vs-fp32 comparisons, and where they came from."""

    leaves: dict[str, Tolerance]
    source: str


#: fp32 arithmetic is off from fp64 by ~1e-7..1e-5 of the output's scale; an fp32-vs-fp64 difference
#: above this fraction means the fp64 copy computed something else (state changed between the runs,
#: randomness), so its "calibration" would excuse real differences.
_IMPLAUSIBLE_FP32_ERROR = 1e-3


def _fallback_tolerances(reference: Any) -> dict[str, Tolerance]:
    out: dict[str, Tolerance] = {}
    for name, t in flatten(reference).items():
        if isinstance(t, torch.Tensor) and t.is_floating_point() and t.numel():
            finite = t[torch.isfinite(t)]
            scale = float(finite.abs().max()) if finite.numel() else 0.0
            base = default_tolerance(t.dtype)
            out[name] = Tolerance(max(base.rtol, 16 * eps(t.dtype)), max(base.atol, 64 * eps(t.dtype) * scale))
    return out


def _implausible_calibration(reference: Any, fp64: Any) -> list[str]:
    """Leaves whose fp32-vs-fp64 difference is far beyond what rounding in their dtype produces."""
    found = []
    f64 = flatten(fp64) if fp64 is not None else {}
    for name, t in flatten(reference).items():
        r = f64.get(name)
        if not (isinstance(t, torch.Tensor) and isinstance(r, torch.Tensor)) or not t.is_floating_point() or t.shape != r.shape or not t.numel():
            continue
        d = (t.detach().double() - r.detach().double()).abs()
        d = d[torch.isfinite(d)]
        finite = r[torch.isfinite(r)].double()
        scale = float(finite.abs().max()) if finite.numel() else 0.0
        limit = min(0.1, _IMPLAUSIBLE_FP32_ERROR * eps(t.dtype) / eps(torch.float32))
        if d.numel() and scale > 0 and float(d.max()) > limit * scale:
            found.append(f"`{name}` {float(d.max()):.3g} of max {scale:.3g}")
    return found


def _tolerances(ctx: Context) -> _Tol:
    """ctx.tolerances() (fp32-vs-fp64 calibration), built once and only when a comparison is not bitwise.

    Falls back to dtype-derived tolerances scaled by the output when there is no fp64 reference,
    or when the fp32-vs-fp64 difference is too large to be rounding (then the calibration is void).
    """

    def build() -> _Tol:
        error = None
        try:
            leaves = ctx.tolerances()
        except Exception as exc:  # the fp64 copy could not be built or run
            leaves, error = {}, f"{type(exc).__name__}: {exc}"
        if ctx.options.atol is not None or ctx.options.rtol is not None:
            return _Tol(leaves, "fixed by --atol/--rtol")
        fallback = _fallback_tolerances(ctx.reference)
        if leaves:
            implausible = _implausible_calibration(ctx.reference, ctx.fp64.outputs)
            if not implausible:
                return _Tol(leaves, "calibrated from the model's own fp32-vs-fp64 error (ctx.tolerances())")
            error = ("the fp32-vs-fp64 difference is too large to be rounding (" + ", ".join(implausible[:3])
                     + "): the fp64 copy computed something else (state changed between runs? randomness?)")
        error = error or ctx.fp64.error or "no floating-point outputs"
        return _Tol(fallback, f"fallback, no usable fp64 calibration ({error}): rtol 16 eps, atol 64 eps x max|output|")

    return ctx.cached("determinism:tolerances", build)


@dataclass
class _Row:
    """One comparison of a run with its expected output, as shown in details["comparisons"]."""

    comparison: str
    expected: str  # "bitwise" or "within tolerance"
    bitwise: bool
    within_tolerance: bool | None
    max_abs: float
    tolerance: str | None = None
    message: str = ""
    comp: Comparison | None = None
    configs: tuple[Any, Any] | None = None  # (base, other) run configurations, for localisation
    covers: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.bitwise or (self.expected != "bitwise" and bool(self.within_tolerance))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "comparison": self.comparison, "expected": self.expected, "bitwise": self.bitwise,
            "within_tolerance": self.within_tolerance, "max_abs": self.max_abs,
        }
        if self.tolerance:
            out["tolerance"] = self.tolerance
        if self.covers:
            out["covers"] = self.covers
        if self.message:
            out["message"] = self.message
        return out


def _judge(ctx: Context, label: str, actual: Any, expected: Any, *, bitwise_only: bool = False) -> _Row:
    """Bitwise first (free); the calibrated tolerance is asked for only when that fails."""
    exact = compare(actual, expected, rtol=0.0, atol=0.0)
    kind = "bitwise" if bitwise_only else "within tolerance"
    if exact.passed:
        return _Row(label, kind, True, True, exact.max_abs, comp=exact)
    if bitwise_only:
        return _Row(label, kind, False, False, exact.max_abs, message=exact.describe(), comp=exact)
    tol = _tolerances(ctx)
    comp = compare(actual, expected, leaf_tolerances=tol.leaves)
    worst = comp.worst
    text = f"rtol={worst.rtol:.3g}, atol={worst.atol:.3g}" if worst is not None and worst.kind == "tensor" else None
    return _Row(label, kind, False, comp.passed, comp.max_abs, text, "" if comp.passed else comp.describe(), comp)


@dataclass(frozen=True)
class _Config:
    """How one run is made: grad mode, intra-op threads, input memory layout, global RNG seed."""

    grad_mode: str = "inference_mode"  # inference_mode | no_grad | grad
    threads: int | None = None
    layout: str | None = None  # auto | channels_last | strided
    seed: int | None = None

    def describe(self) -> str:
        parts = {"inference_mode": "under inference_mode", "no_grad": "under no_grad", "grad": "with grad enabled"}[self.grad_mode]
        if self.threads:
            parts += f" at {self.threads} thread{'s' if self.threads > 1 else ''}"
        if self.layout:
            parts += f" with {self.layout} inputs"
        return parts


def _difference(base: _Config, other: _Config) -> str:
    """`with grad enabled than under inference_mode`: only the settings that differ."""
    modes = {"inference_mode": "under inference_mode", "no_grad": "under no_grad", "grad": "with grad enabled"}
    this, that = [], []
    if base.grad_mode != other.grad_mode:
        this.append(modes[other.grad_mode])
        that.append(modes[base.grad_mode])
    if base.threads != other.threads:
        current = torch.get_num_threads()
        this.append(f"at {other.threads or current} thread{'s' if (other.threads or current) > 1 else ''}")
        that.append(f"at {base.threads or current} thread{'s' if (base.threads or current) > 1 else ''}")
    if base.layout != other.layout:
        this.append(f"with {'channels_last/strided' if other.layout == 'auto' else other.layout} inputs")
        that.append("with contiguous ones" if not base.layout else f"with {base.layout} inputs")
    return f"{' and '.join(this) or 'in this run'} than {' and '.join(that) or 'in the reference run'}"


class _NoGrad:
    """The model called under no_grad outside inference_mode (ctx.forward runs inside inference_mode)."""

    def __init__(self, model: Callable[..., Any]) -> None:
        self.model = model

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with torch.inference_mode(False), torch.no_grad():
            return self.model(*args, **kwargs)


def _run(ctx: Context, cfg: _Config, inputs: Any | None = None) -> Any:
    """One forward pass of the eval model in configuration `cfg` (counted by ctx.forward)."""
    inputs = ctx.inputs if inputs is None else inputs
    if cfg.layout:
        inputs = _relayout(inputs, cfg.layout)[0]
    threads = num_threads(cfg.threads) if cfg.threads else _nullcontext()
    with threads:
        if cfg.seed is not None:
            torch.manual_seed(cfg.seed)
        try:
            if cfg.grad_mode == "grad":
                return ctx.forward(inputs, grad=True)
            if cfg.grad_mode == "no_grad":
                return ctx.forward(inputs, _NoGrad(ctx.model))
            return ctx.forward(inputs)
        finally:
            if cfg.seed is not None:
                torch.manual_seed(ctx.options.seed)


class _nullcontext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


def _relayout(inputs: Any, mode: str) -> tuple[Any, list[str]]:
    """The same values in another memory layout: channels_last for 4-D/5-D floats, a strided view otherwise.

    Returns the new inputs and what changed (e.g. ["channels_last `x`"]); nothing changes for
    scalars and one-element tensors.
    """
    names = iter(flatten(inputs, root="x"))
    changed: list[str] = []

    def change(t: Any) -> Any:
        name = next(names)
        if not isinstance(t, torch.Tensor) or t.dim() == 0 or t.numel() <= 1 or getattr(t, "is_nested", False):
            return t
        if mode in ("auto", "channels_last") and t.dim() in (4, 5) and t.is_floating_point():
            new = t.contiguous(memory_format=torch.channels_last if t.dim() == 4 else torch.channels_last_3d)
            if not new.is_contiguous():
                changed.append(f"channels_last `{name}`")
                return new
        if mode in ("auto", "strided"):
            buf = torch.empty((*t.shape[:-1], 2 * t.shape[-1]), dtype=t.dtype, device=t.device)
            new = buf[..., ::2]
            new.copy_(t)
            changed.append(f"strided `{name}`")
            return new
        return t

    return map_leaves(inputs, change), changed


def _named_inputs(changed: list[str], inputs: Any, model: torch.nn.Module) -> list[str]:
    """`strided `[1]`` -> `strided `mask`` for tuple inputs, using forward's parameter names."""
    if not isinstance(inputs, tuple):
        return changed
    names = inp.input_names(inputs, model)

    def rename(match: re.Match) -> str:
        i = int(match.group(1))
        return f"`{names[i]}" if i < len(names) else match.group(0)

    return [re.sub(r"`\[(\d+)\]", rename, text) for text in changed]


class _ModuleStack:
    """Which module is running (forward pre/post hooks). Post hooks do not run when forward
    raises, so after an exception the top of the stack is the innermost module that raised."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.stack: list[tuple[str, torch.nn.Module]] = []
        self._handles: list[Any] = []

    def __enter__(self) -> "_ModuleStack":
        for name, module in self.model.named_modules():
            self._handles.append(module.register_forward_pre_hook(self._push(name)))
            self._handles.append(module.register_forward_hook(self._pop))
        return self

    def __exit__(self, *exc: Any) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _push(self, name: str) -> Callable[..., None]:
        def hook(module: torch.nn.Module, args: Any) -> None:
            self.stack.append((name, module))

        return hook

    def _pop(self, module: torch.nn.Module, args: Any, output: Any) -> None:
        if self.stack:
            self.stack.pop()

    @property
    def current(self) -> tuple[str, torch.nn.Module]:
        return self.stack[-1] if self.stack else ("", self.model)


@dataclass
class _RunError:
    """A run that raised, with the innermost module that raised and the user's line."""

    message: str
    module_name: str
    module: torch.nn.Module
    location: str | None
    code: str | None

    @property
    def label(self) -> str:
        return _label(self.module_name, self.module)


def _user_line_of(exc: BaseException) -> tuple[str | None, int | None, str | None]:
    import traceback

    found = (None, None, None)
    for frame in traceback.extract_tb(exc.__traceback__):
        if _is_user_file(frame.filename):
            found = (frame.filename, frame.lineno, frame.line)
    return found


def _explain_error(ctx: Context, run: Callable[[], Any], exc: BaseException) -> _RunError:
    """Run the failing call again under a module stack to name the module that raised."""
    name, module = "", ctx.model
    with _ModuleStack(ctx.model) as stack:
        try:
            run()
        except Exception as again:
            exc = again
            name, module = stack.current
    file, line, code = _user_line_of(exc)
    message = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"[:400]
    return _RunError(message, name, module, short_location(file, line) or None, code)


# -- comparing recordings with a scale-aware tolerance ----------------------------------------


def _comparable(t: torch.Tensor) -> bool:
    return isinstance(t, torch.Tensor) and not getattr(t, "is_nested", False) and t.layout == torch.strided


def _close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], rel: float) -> bool:
    """Equal up to `rel` x the tensor's largest magnitude (integer tensors: exactly)."""
    for key, tb in b.items():
        ta = a.get(key)
        if ta is None:
            return False
        if not (_comparable(ta) and _comparable(tb)):
            continue
        if ta.shape != tb.shape:
            return False
        if ta.is_floating_point() or tb.is_floating_point() or ta.is_complex():
            da, db = ta.detach().double() if not ta.is_complex() else ta.abs().double(), tb.detach().double() if not tb.is_complex() else tb.abs().double()
            both_nan = torch.isnan(da) & torch.isnan(db)
            diff = torch.where(both_nan, torch.zeros_like(da), (da - db).abs())
            finite = db[torch.isfinite(db)]
            scale = float(finite.abs().max()) if finite.numel() else 0.0
            worst = float(diff.max()) if diff.numel() else 0.0
            if not worst <= rel * scale + 1e-12:
                return False
        elif not torch.equal(ta, tb):
            return False
    return True


def _max_rel(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    worst = 0.0
    for key, tb in b.items():
        ta = a.get(key)
        if ta is None or not (_comparable(ta) and _comparable(tb)) or ta.shape != tb.shape or not tb.numel():
            continue
        da, db = ta.detach().double(), tb.detach().double()
        scale = float(db.abs().max())
        worst = max(worst, float((da - db).abs().max()) / scale if scale > 0 else math.inf)
    return worst


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    return a, b


@dataclass
class _Found:
    """The module that introduces a difference between two recordings."""

    name: str
    module_type: str
    max_rel: float
    inputs_equal: bool

    def label(self) -> str:
        return f"{self.name or '<root>'} ({self.module_type})"


def _first_divergent(calls_a: list[Any], calls_b: list[Any], rel: float,
                     align: Callable[[dict, dict], tuple[dict, dict]] = _same) -> _Found | None:
    """First module (finishing order of `calls_b`) whose outputs differ while its inputs agree.

    Falls back to the first module whose outputs differ at all. `align(a, b)` maps a's tensors
    onto b's (e.g. picks one sample's rows of a batched recording).
    """
    by_name = {c.name: c for c in calls_a}
    first_any: _Found | None = None
    for cb in calls_b:
        ca = by_name.get(cb.name)
        if ca is None:
            continue
        out_a, out_b = align(ca.outputs, cb.outputs)
        if not out_b or _close(out_a, out_b, rel):
            continue
        in_a, in_b = align(ca.inputs, cb.inputs)
        found = _Found(cb.name, cb.module_type, _max_rel(out_a, out_b), _close(in_a, in_b, rel))
        if found.inputs_equal:
            return found
        first_any = first_any or found
    return first_any


def _rel_for(row: _Row, reference: Any) -> float:
    """The relative tolerance for comparing intermediate tensors: a tenth of the observed output error."""
    scale = max((float(t.detach().abs().max()) for t in flatten(reference).values()
                 if isinstance(t, torch.Tensor) and t.is_floating_point() and t.numel() and torch.isfinite(t).all()), default=1.0)
    observed = row.max_abs / scale if scale > 0 and math.isfinite(row.max_abs) else 1.0
    return min(1e-4, max(50 * eps(torch.float32), 0.1 * observed))


# -- what the model asks about its environment ------------------------------------------------

#: Environment queries a forward may branch on, by what they sense.
_QUERIES = {
    "grad": frozenset({"is_grad_enabled", "is_inference_mode_enabled", "is_inference"}),
    "threads": frozenset({"get_num_threads", "get_num_interop_threads", "cpu_count", "sched_getaffinity"}),
    "layout": frozenset({"is_contiguous", "stride", "is_non_overlapping_and_dense", "data_ptr"}),
}


@dataclass
class _Query:
    name: str
    module: str
    module_type: str
    file: str
    line: int
    function: str
    code: str


class _ConditionSpy:
    """A profiler that catches the user's calls to `torch.is_grad_enabled()`, `torch.get_num_threads()`,
    `x.is_contiguous()` and the like, with the running module and the source line: a forward that
    branches on its environment computes a different function in serving. Used only to localise."""

    def __init__(self, model: torch.nn.Module, names: frozenset[str]) -> None:
        self.names = names
        self.events: list[_Query] = []
        self._stack = _ModuleStack(model)
        self._seen: set[tuple[str, int, str]] = set()
        self._old: Any = None

    def __enter__(self) -> "_ConditionSpy":
        self._stack.__enter__()
        self._old = sys.getprofile()
        sys.setprofile(self._profile)
        return self

    def __exit__(self, *exc: Any) -> None:
        sys.setprofile(self._old)
        self._stack.__exit__(*exc)

    def _profile(self, frame: Any, event: str, arg: Any) -> None:
        if event == "c_call":
            name = getattr(arg, "__name__", None)
            caller = frame
        elif event == "call" and frame.f_code.co_name in self.names and not _is_user_file(frame.f_code.co_filename):
            name, caller = frame.f_code.co_name, frame.f_back
        else:
            return
        if name not in self.names or caller is None or not _is_user_file(caller.f_code.co_filename):
            return
        key = (caller.f_code.co_filename, caller.f_lineno, name)
        if key in self._seen:
            return
        self._seen.add(key)
        import linecache

        mod, module = self._stack.current
        self.events.append(_Query(name, mod, type(module).__name__, caller.f_code.co_filename, caller.f_lineno,
                                  caller.f_code.co_name, linecache.getline(caller.f_code.co_filename, caller.f_lineno).strip()))


def _query_names(base: _Config, other: _Config) -> frozenset[str]:
    names: set[str] = set()
    if base.grad_mode != other.grad_mode:
        names |= _QUERIES["grad"]
    if base.threads != other.threads:
        names |= _QUERIES["threads"]
    if base.layout != other.layout:
        names |= _QUERIES["layout"]
    return frozenset(names)


def _pick_event(events: list[_Query], found: _Found | None) -> _Query | None:
    if not events:
        return None
    if found is not None:
        base = found.name.split("#")[0]
        inside = [e for e in events if not base or e.module == base or e.module.startswith(base + ".")]
        if inside:
            return inside[-1]  # the innermost module's query
    return events[0]


# =============================================================================================
# state_mutation


_BN_STATS = ("running_mean", "running_var", "num_batches_tracked")
#: What follows `self.<attr>` on a line that mutates it: a mutating method call, an item assignment, an (augmented) assignment.
_MUTATION = (r"(?:\.(?:append|extend|insert|add|update|setdefault|pop|popitem|clear|remove|discard|appendleft|\w+_)\("
             r"|\[[^\]]*\]\s*[-+*/|&@]?=(?!=)|\s*[-+*/|&@]?=(?!=))")
_SKIP_METHODS = {"__init__", "train", "eval", "reset_parameters", "extra_repr", "_load_from_state_dict", "__repr__"}


def _mutation_site(model: torch.nn.Module, owner: str, attr: str) -> tuple[str, int, str, str] | None:
    """The line of the user's code that mutates `attr` (file, line, code, Class.method), if it can be read."""
    pattern = re.compile(rf"\bself(?:\.\w+)*\.{re.escape(attr)}\b{_MUTATION}")
    parts = owner.split(".") if owner else []
    chain = [(".".join(parts[:depth])) for depth in range(len(parts), -1, -1)]
    classes: list[type] = []
    for name in chain:
        module = _submodule(model, name)
        if module is not None and type(module) not in classes:
            classes.append(type(module))
    for _, module in model.named_modules():
        if type(module) not in classes:
            classes.append(type(module))
    for cls in classes:
        if cls.__module__.startswith(("torch.", "torchvision.")):
            continue
        methods = [(n, f) for n, f in vars(cls).items() if inspect.isfunction(f) and n not in _SKIP_METHODS]
        methods.sort(key=lambda item: item[0] != "forward")
        for name, func in methods:
            try:
                lines, start = inspect.getsourcelines(func)
                file = inspect.getsourcefile(func)
            except (OSError, TypeError):
                continue
            for offset, text in enumerate(lines):
                code = text.split("  #")[0].strip()
                if pattern.search(code) and not code.startswith("#"):
                    return file or "", start + offset, code, f"{cls.__name__}.{name}"
    return None


@dataclass
class _Finding:
    """One mutated piece of state, as the user should read it."""

    path: str
    culprit: str
    description: str
    per_call: bool
    hint: str
    location: str | None = None
    kind: str = ""
    type_name: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "culprit": self.culprit, "kind": self.kind, "type": self.type_name,
                "change": self.description, "every_call": self.per_call, "location": self.location, "hint": self.hint}


def _bn_training_hint(model: torch.nn.Module, name: str, module: torch.nn.Module, effect: str) -> tuple[str, str | None]:
    """Hint (and location of a bad train() override) for a BatchNorm left in training mode."""
    owner = _owner_with_bad_train(model, name)
    location = None
    fix = "call `.eval()` after loading"
    if owner is not None:
        fix += f" or fix the `train()` override of `{owner[0] or '<root>'}` ({type(owner[1]).__name__}), which does not pass the mode on to its children"
        try:
            location = short_location(inspect.getsourcefile(type(owner[1]).train), inspect.getsourcelines(type(owner[1]).train)[1]) or None
        except (OSError, TypeError):
            pass
    else:
        fix += " (something calls `.train()` on it after `model.eval()`)"
    return f"module `{name or '<root>'}` ({type(module).__name__}) is in training mode: {effect}; {fix}", location


def _findings(model: torch.nn.Module, changes: list[fp.Change], per_call: bool, calls: int) -> list[_Finding]:
    """Turn raw fingerprint changes into findings: BatchNorm statistics grouped per module, hints in words."""
    out: list[_Finding] = []
    bn_done: set[str] = set()
    for ch in changes:
        owner = _submodule(model, ch.owner)
        if isinstance(owner, torch.nn.modules.batchnorm._BatchNorm) and ch.attr in _BN_STATS:
            if ch.owner in bn_done:
                continue
            bn_done.add(ch.owner)
            parts = [f"{c.attr} {c.description}" for c in changes if c.owner == ch.owner and c.attr in _BN_STATS]
            desc = "running statistics updated: " + "; ".join(parts)
            if owner.training:
                effect = "every forward updates its running statistics and normalises with the batch's own statistics"
                hint, location = _bn_training_hint(model, ch.owner, owner, effect)
            else:
                hint, location = (f"module `{ch.owner}` ({type(owner).__name__}) updates its running statistics although it is in eval mode: "
                                  "its forward (or a caller) uses F.batch_norm(..., training=True) or momentum tricks; pass `training=self.training`"), None
            out.append(_Finding(ch.owner, _label(ch.owner, owner), desc, per_call, hint, location, "buffer", type(owner).__name__))
            continue
        site = _mutation_site(model, ch.owner, ch.attr) if _is_user_class(owner) or ch.kind == "attribute" else None
        location = short_location(site[0], site[1]) if site else None
        where = f"`{site[3]}` (`{site[2]}`)" if site else "forward"
        what = ch.kind if ch.kind in ("parameter", "buffer") else ch.type_name or "attribute"
        culprit = f"{ch.path} ({what})"
        desc = ch.description + (f" over {calls} calls" if ch.change in ("grew", "shrank") else "")
        if not per_call:
            hint = (f"`{ch.path}` was filled on the first call and left alone afterwards ({desc}): a lazily built cache is fine if it depends "
                    f"only on shapes or constants, not on input values; build it in `__init__` to make the model stateless")
        elif ch.change in ("grew", "items", "added") and ch.kind == "attribute":
            hint = (f"{where} adds to `{ch.path}` on every call ({desc}): memory grows without bound in serving and any result read "
                    "back from it depends on call history; keep per-call values in local variables, or bound the cache and clear it outside forward")
        elif ch.kind == "parameter":
            hint = (f"{where} modifies parameter `{ch.path}` in place on every call ({desc}): weights drift with traffic; "
                    "compute the modified weight in a local variable instead")
        else:
            hint = (f"{where} changes {what} `{ch.path}` on every call ({desc}): outputs that read it drift with traffic and replicas "
                    "disagree; compute it per call instead of storing it on the module (or move the counter out of the model)")
        out.append(_Finding(ch.path, culprit, desc, per_call, hint, location, ch.kind, ch.type_name))
    return out


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
    model = ctx.model
    n_calls = max(2, int(opts.calls))
    first_call_watched = not ctx.has_cached("reference") and ctx.stats.calls == 0
    snaps = [fp.snapshot(model)]
    if ctx.has_cached("reference"):
        ctx.forward()
    else:
        ctx.reference
    snaps.append(fp.snapshot(model))
    dim, _ = _batch_dim(ctx, None)
    n = _batch_size(ctx.inputs, dim)
    for i in range(1, n_calls):
        if i == 1:
            out = ctx.forward()
            ctx.cached(_REPEAT_KEY, lambda: out)
        elif i == 2 and n is not None and n > 1:  # new content, same shape: the batch rolled by one
            perm = [(j + 1) % n for j in range(n)]
            rolled = ctx.forward(_select(ctx.inputs, perm, dim, n))
            ctx.cached(_ROLLED_KEY, lambda: (dim, n, perm, rolled))
        else:
            ctx.forward(inp.fresh_like(ctx.inputs, seed=ctx.options.seed + 1000 + i))
    snaps.append(fp.snapshot(model))  # after the last call: state that changes on later calls differs from snaps[1]

    later = {ch.path: ch for ch in fp.diff(snaps[1], snaps[2])}
    first = {ch.path: ch for ch in fp.diff(snaps[0], snaps[1])}
    overall = {ch.path: ch for ch in fp.diff(snaps[0], snaps[2])} if later else {}
    per_call_paths = list(later) + ([p for p in first if p not in later] if not first_call_watched else [])
    lazy_paths = [p for p in first if p not in later] if first_call_watched else []
    per_call = [overall.get(p) or later.get(p) or first[p] for p in per_call_paths]
    lazy = [first[p] for p in lazy_paths]

    entries = snaps[0].entries.values()
    counts = {kind: sum(1 for e in entries if e.kind == kind) for kind in ("parameter", "buffer", "attribute")}
    metrics: dict[str, Any] = {"calls": n_calls, "entries": len(snaps[0].entries), **{f"{k}s": v for k, v in counts.items()},
                               "mutated_every_call": 0, "filled_on_first_call": 0, "snapshot_mb": round(snaps[0].cloned_bytes / 2**20, 2)}
    order = list(snaps[0].entries) + [p for p in snaps[-1].entries if p not in snaps[0].entries]
    rank = {p: i for i, p in enumerate(order)}
    per_call.sort(key=lambda c: rank.get(c.path, 0))
    findings = _findings(model, per_call, True, n_calls) + _findings(model, lazy, False, n_calls)
    metrics["mutated_every_call"] = sum(1 for f in findings if f.per_call)
    metrics["filled_on_first_call"] = sum(1 for f in findings if not f.per_call)
    details: dict[str, Any] = {"changes": [f.to_dict() for f in findings], "calls": n_calls,
                               "first_call_watched": first_call_watched}
    if snaps[0].summarized:
        details["note"] = (f"{snaps[0].summarized} large tensors were fingerprinted by a sample of {fp.SAMPLE_SIZE} elements, "
                           "and their version counter (not every element)")
    if not findings:
        return CheckResult(
            status=PASS,
            summary=f"{n_calls} forward calls left all {counts['parameter']} parameters, {counts['buffer']} buffers and "
            f"{counts['attribute']} attributes unchanged",
            metrics=metrics, details=details,
        )
    head = findings[0]
    shown = "; ".join(f"`{f.path}` {f.description}" for f in findings[:4]) + (" ..." if len(findings) > 4 else "")
    if any(f.per_call for f in findings):
        n = metrics["mutated_every_call"]
        summary = f"forward changes {n} piece{'s' if n > 1 else ''} of model state on every call: {shown}"
        status = FAIL
    else:
        summary = f"{len(findings)} entr{'ies were' if len(findings) > 1 else 'y was'} filled on the first call, then left unchanged: {shown}"
        status = WARN
    return CheckResult(status=status, summary=summary, culprit=head.culprit, location=head.location, hint=head.hint,
                       metrics=metrics, details=details)


def _state_change_culprit(ctx: Context) -> _Finding | None:
    """After a repeat-run difference: does forward change state between calls? (one extra call)"""
    model = ctx.model
    before = fp.snapshot(model)
    ctx.forward()
    changes = fp.diff(before, fp.snapshot(model))
    findings = _findings(model, changes, True, 1)
    return findings[0] if findings else None


# =============================================================================================
# determinism


def _other_thread_count(wanted: int) -> int | None:
    current = torch.get_num_threads()
    if wanted <= 0:
        return None
    if wanted != current:
        return wanted
    return 1 if current > 1 else max(2, os.cpu_count() or 2)


def localise_config(ctx: Context, base: _Config, other: _Config, row: _Row, inputs: Any | None = None) -> tuple[str | None, str | None, str, dict[str, Any]]:
    """Name what makes `other` compute a different function from `base`: (culprit, location, hint, details).

    Two hooked runs find the first module whose output differs although its input does not; a
    profiler catches the user's calls to environment queries (is_grad_enabled, get_num_threads,
    is_contiguous, ...) and gives the branching line.
    """
    model = ctx.model
    rel = _rel_for(row, ctx.reference)
    with ModuleRecorder(model) as rec_a:
        _run(ctx, base, inputs)
    with ModuleRecorder(model) as rec_b, _ConditionSpy(model, _query_names(base, other)) as spy:
        _run(ctx, other, inputs)
    found = _first_divergent(rec_a.calls, rec_b.calls, rel)
    event = _pick_event(spy.events, found)
    details: dict[str, Any] = {"queries": [f"{e.module or '<root>'}: {e.name}() at {short_location(e.file, e.line)}" for e in spy.events]}
    if found is not None:
        details["first_divergent_module"] = found.label()
        details["first_divergent_max_rel"] = found.max_rel
    what = _difference(base, other)
    size = f"max abs diff {row.max_abs:.3g}" + (f", outside {row.tolerance}" if row.tolerance else "")
    if event is not None:
        module = _submodule(model, event.module)
        culprit = _label(event.module, module)
        location = short_location(event.file, event.line) or None
        topic = {
            "grad": "make both branches compute the same function (the no-grad branch must not use other weights or ops)",
            "threads": "serving machines differ in cores: do not choose the computation by thread count",
            "layout": "a channels_last or sliced input takes the other branch: call `.contiguous()` before branching or fix that branch",
        }
        kind = next((k for k, names in _QUERIES.items() if event.name in names), "grad")
        code = event.code.split("  #")[0].strip()
        hint = (f"`{event.module or '<root>'}.{event.function}` branches on `{event.name}()` (`{code}`): it computes a different "
                f"function {what} ({size}); {topic[kind]}")
        return culprit, location, hint, details
    if found is not None:
        module = _submodule(model, found.name)
        culprit = found.label()
        hint = (f"module `{found.name or '<root>'}` ({found.module_type}) gives different outputs {what} for the same input ({size}): "
                "look in its forward for code that depends on the grad mode, the thread count or the input's strides")
        location = None
        if _is_user_class(module):
            try:
                location = short_location(inspect.getsourcefile(type(module).forward), inspect.getsourcelines(type(module).forward)[1]) or None
            except (OSError, TypeError):
                pass
        return culprit, location, hint, details
    return None, None, f"outputs differ {what} ({size}) but no module's output differs alone: check code around the model call", details


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
               "strided otherwise), channels_last, strided; empty skips"),
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
    reference = ctx.reference
    seeds = tuple(int(s) for s in opts.seeds)[:2]
    if len(seeds) < 2:
        seeds = (1, 2)
    rows: list[_Row] = []
    random_rows: list[_Row] = []  # repeats/seeds that differ: randomness
    grad_errors: list[str] = []

    cached = ctx.peek(_REPEAT_KEY)
    for i in range(max(0, int(opts.repeats))):
        out = cached if i == 0 and cached is not None else ctx.forward()
        row = _judge(ctx, f"repeat {i + 1}", out, reference, bitwise_only=True)
        rows.append(row)
        if not row.bitwise:
            random_rows.append(row)

    # Grad modes, seeds, threads and layouts are compared on sample 0 alone (against sample 0 alone in
    # the default settings, a run batch_invariance reuses): a 1-thread pass of the whole batch costs
    # ~cores forwards, one sample of it ~cores/batch.
    sample = _sample_zero(ctx) if opts.one_sample else None
    probe_inputs, base_out = (sample[2], sample[3]) if sample is not None else (ctx.inputs, reference)
    modes = ("no_grad", "grad") if opts.grad_modes else ("inference_mode",)
    base_cfg = _Config()
    for seed, mode in zip(seeds, itertools.cycle(modes)):
        cfg = _Config(grad_mode=mode, seed=seed)
        mode_text = "grad enabled" if mode == "grad" else mode
        out, error = None, None
        try:
            out = _run(ctx, cfg, probe_inputs)
        except Exception as exc:
            if mode == "inference_mode":
                raise
            error = f"{type(exc).__name__}: {exc}"
        if out is not None and compare(out, base_out, rtol=0.0, atol=0.0).passed:
            rows.append(_Row(f"seed {seed} {cfg.describe()}", "bitwise", True, True, 0.0,
                             covers=[f"seed {seed}"] + ([f"{mode_text} vs inference_mode"] if mode != "inference_mode" else [])))
            continue
        pure = out if mode == "inference_mode" else _run(ctx, _Config(seed=seed), probe_inputs)
        row = _judge(ctx, f"seed {seed}", pure, base_out, bitwise_only=True)
        rows.append(row)
        if not row.bitwise:
            random_rows.append(row)
        if error is not None:
            grad_errors.append(f"{mode}: {error}")
        elif mode != "inference_mode":
            grow = _judge(ctx, f"{mode_text} vs inference_mode (seed {seed})", out, base_out if row.bitwise else pure)
            grow.configs = (_Config(seed=seed), cfg)
            rows.append(grow)

    # threads and memory layouts: single passes, combined into one unless it does not match
    current = torch.get_num_threads()
    # intra-op threads only matter for CPU kernels
    other = _other_thread_count(int(opts.threads)) if ctx.device is None or ctx.device.type == "cpu" else None
    layouts = [str(m).strip() for m in opts.layouts if str(m).strip() and str(m).strip().lower() not in ("none", "off")]
    for mode in layouts:
        if mode not in ("auto", "channels_last", "strided"):
            raise UsageError(f"determinism: unknown layout {mode!r}; use auto, channels_last or strided")
    layout_probes = [(m, _named_inputs(_relayout(probe_inputs, m)[1], probe_inputs, ctx.model)) for m in layouts]
    layout_probes = [(m, changed) for m, changed in layout_probes if changed]
    probes: list[tuple[str, _Config, list[tuple[str, _Config]]]] = []
    thread_label = f"threads {other} vs {current}" if other else ""
    if opts.combine and other and layout_probes:
        mode, changed = layout_probes.pop(0)
        layout_label = f"{', '.join(changed)} vs contiguous"
        probes.append((f"{thread_label} + {layout_label}", _Config(threads=other, layout=mode),
                       [(thread_label, _Config(threads=other)), (layout_label, _Config(layout=mode))]))
    elif other:
        probes.append((thread_label, _Config(threads=other), []))
    for mode, changed in layout_probes:
        probes.append((f"{', '.join(changed)} vs contiguous", _Config(layout=mode), []))

    def attempt(cfg: _Config) -> Any:
        return _run(ctx, cfg, probe_inputs)

    run_errors: list[tuple[str, _RunError]] = []
    for label, cfg, parts in probes:
        try:
            out = attempt(cfg)
        except Exception as exc:
            if parts:  # find which of the combined settings breaks the model
                for part_label, part_cfg in parts:
                    try:
                        rows.append(_with_configs(_judge(ctx, part_label, attempt(part_cfg), base_out), base_cfg, part_cfg))
                    except Exception as part_exc:
                        run_errors.append((part_label, _explain_error(ctx, lambda c=part_cfg: attempt(c), part_exc)))
            else:
                run_errors.append((label, _explain_error(ctx, lambda c=cfg: attempt(c), exc)))
            continue
        row = _with_configs(_judge(ctx, label, out, base_out), base_cfg, cfg)
        row.covers = [p for p, _ in parts]
        rows.append(row)
        if row.ok or not parts:
            continue
        for part_label, part_cfg in parts:  # the combined pass did not match: split it to name the cause
            rows.append(_with_configs(_judge(ctx, part_label, attempt(part_cfg), base_out), base_cfg, part_cfg))

    scope = (f"sample 0 of the batch run alone (batch dim {sample[0]}), against sample 0 alone under inference_mode"
             if sample is not None else "the example inputs, against the reference")
    return _determinism_result(ctx, rows, random_rows, run_errors, grad_errors, seeds, probe_inputs, scope)


def _with_configs(row: _Row, base: _Config, other: _Config) -> _Row:
    row.configs = (base, other)
    return row


def _sample_zero(ctx: Context) -> tuple[int, int, Any, Any] | None:
    """(batch dim, batch size, sample 0's inputs, its output alone), built once per run; None for a batch of 1."""
    dim, _ = _batch_dim(ctx, None)
    n = _batch_size(ctx.inputs, dim)
    if not n or n < 2:
        return None
    inputs = _select(ctx.inputs, [0], dim, n)
    try:
        return ctx.cached(_SAMPLE_KEY, lambda: (dim, n, inputs, ctx.forward(inputs)))
    except Exception:  # a model that cannot run one sample: batch_invariance reports it; compare whole batches here
        return None


def _determinism_result(ctx: Context, rows: list[_Row], random_rows: list[_Row], run_errors: list[tuple[str, _RunError]],
                        grad_errors: list[str], seeds: tuple[int, ...], probe_inputs: Any, scope: str) -> CheckResult:
    tol_rows = [r for r in rows if r.expected != "bitwise"]
    bit_rows = [r for r in rows if r.expected == "bitwise"]
    outside = [r for r in tol_rows if not r.ok]
    # Combined passes that were split: judge by their parts, not twice.
    split_combined = [r for r in outside if r.covers]
    outside = [r for r in outside if not r.covers] or split_combined
    within = [r for r in tol_rows if r.ok and not r.bitwise]
    bitwise_all = [r for r in rows if r.bitwise]
    seed_like = [r for r in bit_rows]
    metrics: dict[str, Any] = {
        "runs_compared": len(seed_like),
        "bitwise_equal_runs": sum(1 for r in seed_like if r.bitwise),
        "comparisons": len(rows),
        "bitwise_comparisons": len(bitwise_all),
        "within_tolerance_comparisons": len(within),
        "outside_tolerance_comparisons": len([r for r in tol_rows if not r.ok]),
        "max_abs_diff": max((r.max_abs for r in tol_rows), default=0.0),
    }
    details: dict[str, Any] = {
        "comparisons": [r.to_dict() for r in rows],
        "compared_on": {"repeats": "the example inputs, against the reference", "seeds, grad modes, threads, layouts": scope},
        "bitwise": [r.comparison for r in bitwise_all],
        "within_tolerance": [r.comparison for r in within],
    }
    if within or any(not r.ok for r in tol_rows):
        details["tolerance_source"] = _tolerances(ctx).source
    if tol_rows:
        details["plot"] = {"kind": "barh", "title": "largest difference from the reference, per comparison",
                           "x": [r.comparison for r in rows], "series": {"max abs diff": [r.max_abs for r in rows]},
                           "xlabel": "comparison", "ylabel": "max abs diff", "logy": False}
    if grad_errors:
        details["grad_mode_errors"] = grad_errors

    if random_rows:
        worst = max(random_rows, key=lambda r: r.max_abs)
        metrics.update(worst.comp.metrics() if worst.comp is not None else {})
        culprit, location, hint, extra = localise_randomness(ctx, seeds)
        if not extra.get("random_ops"):
            state = _state_change_culprit(ctx)
            if state is not None:
                culprit, location = state.culprit, state.location
                hint = f"the output changes between calls because the model keeps state: {state.hint}"
                extra["state_change"] = state.to_dict()
        details.update(extra)
        details["differing_runs"] = [f"{r.comparison}: {r.message}" for r in random_rows]
        return CheckResult(
            status=FAIL,
            summary=f"outputs change between runs of the same input ({len(random_rows)} of {len(bit_rows)} runs differ; worst: "
            f"{worst.comparison}, max abs diff {worst.max_abs:.3g})",
            culprit=culprit, location=location, hint=hint, metrics=metrics, details=details,
        )
    if run_errors:
        label, err = run_errors[0]
        hint = (f"the model raises with {label.split(' vs ')[0]}: {err.message}" + (f" at `{err.code}`" if err.code else "")
                + "; serving stacks hand over such tensors (e.g. channels_last images, slices): call `.contiguous()` where the model needs it, "
                "or use `.reshape()` instead of `.view()`")
        details["errors"] = [f"{lbl}: {e.message} in {e.label}" for lbl, e in run_errors]
        return CheckResult(status=FAIL, summary=f"the model fails with {label}: {err.message}", culprit=err.label,
                           location=err.location, hint=hint, metrics=metrics, details=details)
    if outside:
        worst = max(outside, key=lambda r: (r.comp.max_rms_rel if r.comp is not None else 0.0, r.max_abs))
        if worst.comp is not None:
            metrics.update(worst.comp.metrics())
        culprit, location, hint = None, None, f"outputs differ in `{worst.comparison}` beyond the calibrated tolerance"
        if worst.configs is not None:
            culprit, location, hint, extra = localise_config(ctx, worst.configs[0], worst.configs[1], worst, probe_inputs)
            details.update(extra)
        names = ", ".join(r.comparison for r in outside)
        details["differences"] = {r.comparison: r.message for r in outside}
        return CheckResult(
            status=FAIL,
            summary=f"outputs differ beyond the calibrated tolerance in {len(outside)} comparison(s): {names} "
            f"(worst max abs diff {worst.max_abs:.3g}, tolerance {worst.tolerance or 'default'})",
            culprit=culprit, location=location, hint=hint, metrics=metrics, details=details,
        )
    summary = (f"{len(rows)} comparisons: {len(bitwise_all)} bitwise identical ({', '.join(r.comparison for r in bitwise_all)})"
               + (f"; {len(within)} within the calibrated tolerance ("
                  + ", ".join(f"{r.comparison}: max abs {r.max_abs:.2g} within {r.tolerance}" for r in within) + ")" if within else ""))
    if "sample 0" in scope:
        summary += "; seeds, grad modes, threads and layouts compared on sample 0 alone"
    if grad_errors:
        return CheckResult(status=WARN, summary=summary + f"; the grad-mode runs could not run: {grad_errors[0]}",
                           hint="a forward with grad enabled failed after inference_mode runs (often an inference tensor cached on the "
                           "module and reused under autograd): cache tensors outside inference_mode or clone them",
                           metrics=metrics, details=details)
    return CheckResult(status=PASS, summary=summary, metrics=metrics, details=details)


# =============================================================================================
# batch_invariance


def _batch_dim(ctx: Context, given: int | None) -> tuple[int, str]:
    """The inputs' batch dimension: the option, Target.batch_dim, or the first dim all inputs agree on."""
    if given is not None:
        return int(given), "given by the batch_dim option"
    if ctx.target.batch_dim != 0:
        return ctx.target.batch_dim, "Target.batch_dim"
    tensors = [t for t in inp.tensors(ctx.inputs) if t.dim() > 0]
    for d in range(max((t.dim() for t in tensors), default=0)):
        sizes = {t.shape[d] for t in tensors if t.dim() > d}
        if len(sizes) == 1:
            return d, f"found from the example inputs (every input has size {sizes.pop()} in dim {d})"
    return 0, "default (the inputs agree on no dimension)"


def _batch_size(inputs: Any, dim: int) -> int | None:
    sizes = [t.shape[dim] for t in inp.tensors(inputs) if t.dim() > dim]
    return max(set(sizes), key=sizes.count) if sizes else None


def _select(inputs: Any, index: Sequence[int], dim: int, n: int) -> Any:
    idx = torch.as_tensor(list(index), dtype=torch.long)

    def pick(t: Any) -> Any:
        if isinstance(t, torch.Tensor) and t.dim() > dim and t.shape[dim] == n:
            return t.index_select(dim, idx.to(t.device))
        return t

    return map_leaves(inputs, pick)


def _concat(parts: list[Any], dim: int, n: int) -> Any:
    flats = [list(flatten(p).values()) for p in parts]
    position = iter(range(len(flats[0])))

    def join(t: Any) -> Any:
        i = next(position)
        if isinstance(t, torch.Tensor) and t.dim() > dim and t.shape[dim] == n:
            return torch.cat([f[i] for f in flats], dim=dim)
        return t

    return map_leaves(parts[0], join)


def _leaf_batch_dim(batched: Any, single: Any, n: int) -> int | None:
    """The dim of an output leaf that is n in the batch and 1 for one sample (None: not per-sample)."""
    if not (isinstance(batched, torch.Tensor) and isinstance(single, torch.Tensor)) or batched.dim() != single.dim():
        return None
    dims = [d for d in range(batched.dim()) if batched.shape[d] != single.shape[d]]
    if len(dims) == 1 and batched.shape[dims[0]] == n and single.shape[dims[0]] == 1:
        return dims[0]
    return None


def _spread(n: int, k: int) -> list[int]:
    if k <= 0 or k >= n:
        return list(range(n))
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)}) if k > 1 else [0]


def _rows_like(batched: torch.Tensor, single: torch.Tensor, row: int, n: int) -> torch.Tensor | None:
    """Sample `row` of a batched tensor, shaped like its batch-of-1 counterpart (None: no batch dim)."""
    if batched.shape == single.shape:
        return batched  # not per-sample (e.g. a statistic over the batch): compared whole
    if batched.dim() != single.dim():
        return None
    dims = [d for d in range(batched.dim()) if batched.shape[d] != single.shape[d]]
    if len(dims) != 1:
        return None
    d = dims[0]
    b, s = batched.shape[d], single.shape[d]
    if b == n and s == 1:
        return batched.narrow(d, row, 1)
    if s > 0 and b == n * s:  # batch folded into another dim, batch-major
        return batched.narrow(d, row * s, s)
    return None


def _align_rows(row: int, n: int) -> Callable[[dict, dict], tuple[dict, dict]]:
    def align(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> tuple[dict, dict]:
        out_a, out_b = {}, {}
        for key, tb in b.items():
            ta = a.get(key)
            if ta is None or not (_comparable(ta) and _comparable(tb)):
                continue
            picked = _rows_like(ta, tb, row, n)
            if picked is not None:
                out_a[key], out_b[key] = picked, tb
        return out_a, out_b

    return align


@dataclass
class _Op:
    name: str
    inputs: dict[str, torch.Tensor]
    outputs: dict[str, torch.Tensor]
    file: str | None
    line: int | None
    function: str | None
    code: str | None


def _op_tape(model: torch.nn.Module, scope: str) -> Any:
    """A dispatch mode recording every aten op (tensors and user line) run inside module `scope`."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    from torch_diagnose.probe import op_base_name

    class Tape(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.ops: list[_Op] = []
            self.depth = 0 if scope else 1
            self._handles: list[Any] = []

        def __enter__(self) -> "Tape":
            if scope:
                module = _submodule(model, scope)
                if module is not None:
                    self._handles.append(module.register_forward_pre_hook(lambda m, a: self._enter()))
                    self._handles.append(module.register_forward_hook(lambda m, a, o: self._leave()))
            return super().__enter__()

        def __exit__(self, *exc: Any) -> Any:
            for handle in self._handles:
                handle.remove()
            return super().__exit__(*exc)

        def _enter(self) -> None:
            self.depth += 1

        def _leave(self) -> None:
            self.depth -= 1

        def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
            kwargs = kwargs or {}
            if self.depth <= 0:
                return func(*args, **kwargs)
            ins = {str(i): t.detach().clone() for i, t in enumerate(tree_flatten((args, kwargs))[0]) if isinstance(t, torch.Tensor) and _comparable(t)}
            out = func(*args, **kwargs)
            outs = {str(i): t.detach().clone() for i, t in enumerate(tree_flatten(out)[0]) if isinstance(t, torch.Tensor) and _comparable(t)}
            frame = user_frame(skip_dirs=(_HERE,))
            self.ops.append(_Op(op_base_name(func), ins, outs, frame.filename if frame else None, frame.lineno if frame else None,
                                frame.name if frame else None, frame.line if frame else None))
            return out

    return Tape()


def _first_divergent_op(batched: list[_Op], single: list[_Op], row: int, n: int, rel: float) -> _Op | None:
    align = _align_rows(row, n)
    for ob, os_ in zip(batched, single):
        if ob.name != os_.name:
            break
        out_b, out_s = align(ob.outputs, os_.outputs)
        if not out_s or _close(out_b, out_s, rel):
            continue
        in_b, in_s = align(ob.inputs, os_.inputs)
        if _close(in_b, in_s, rel):
            return os_
    return None


def _batch_hint(model: torch.nn.Module, name: str, module: torch.nn.Module | None, dim: int) -> tuple[str, str | None]:
    """Words for a module whose per-sample output depends on the other samples."""
    label = f"module `{name or '<root>'}` ({type(module).__name__ if module is not None else '?'})"
    if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
        if module.training:
            return _bn_training_hint(model, name, module, "it normalises each sample with the statistics of the whole batch")
        return (f"{label} has track_running_stats=False, so even in eval mode it normalises with the batch's own statistics: "
                "construct it with track_running_stats=True and load running statistics, or use GroupNorm/LayerNorm"), None
    if isinstance(module, torch.nn.MultiheadAttention) and not module.batch_first:
        return (f"{label} has batch_first=False and expects (seq, batch, dim) inputs: given a batch-first tensor, it attends across "
                "samples; construct it with batch_first=True or transpose its inputs (if the model's inputs really are "
                "sequence-first, give `Target(batch_dim=1)` or `-o batch_invariance.batch_dim=1`)"), None
    if isinstance(module, torch.nn.RNNBase) and not module.batch_first and dim == 0:
        return (f"{label} has batch_first=False, so dim 0 of its input is time, not the batch: if the model's inputs are "
                "(seq, batch, ...), give `Target(batch_dim=1)` or `-o batch_invariance.batch_dim=1`; otherwise construct it with "
                "batch_first=True"), None
    if isinstance(module, torch.nn.modules.instancenorm._InstanceNorm) and module.training:
        return f"{label} is in training mode: call `.eval()` after loading", None
    return (f"{label} mixes samples: each sample's output depends on the rest of the batch; look for reductions over dim {dim} "
            "(mean/sum/max over the batch), batch statistics, or attention across the batch axis"), None


def localise_batch(ctx: Context, batch: Any, row: int, single: Any, n: int, rel: float, dim: int) -> tuple[str | None, str | None, str, dict[str, Any]]:
    """Name the first module whose output for sample `row` depends on the other samples.

    Records the batched run and the sample-alone run, compares each module's output rows while
    its input rows agree; inside a user-written culprit an operator tape names the op and line.
    """
    model = ctx.model
    with ModuleRecorder(model) as rec_b:
        ctx.forward(batch)
    with ModuleRecorder(model) as rec_s:
        ctx.forward(single)
    found = _first_divergent(rec_b.calls, rec_s.calls, rel, _align_rows(row, n))
    details: dict[str, Any] = {}
    if found is None:
        return None, None, ("the sample-alone output differs from its row of the batch but no module's output does: "
                            "check code around the model call"), details
    module = _submodule(model, found.name)
    details["first_divergent_module"] = found.label()
    details["first_divergent_max_rel"] = found.max_rel
    hint, location = _batch_hint(model, found.name.split("#")[0], module, dim)
    if _is_user_class(module):
        try:
            scope = found.name.split("#")[0]
            with _op_tape(model, scope) as tape_b:
                ctx.forward(batch)
            with _op_tape(model, scope) as tape_s:
                ctx.forward(single)
            op = _first_divergent_op(tape_b.ops, tape_s.ops, row, n, rel)
        except Exception as exc:  # the tape is a refinement: never let it hide the module
            op = None
            details["op_tape_error"] = f"{type(exc).__name__}: {exc}"
        if op is not None:
            location = short_location(op.file, op.line) or location
            details["op"] = f"aten.{op.name} at {location}"
            code = (op.code or "").split("  #")[0].strip()
            hint = (f"`{found.name.split('#')[0] or '<root>'}.{op.function or 'forward'}` mixes samples at `{code}` (aten.{op.name}): "
                    f"it reduces or normalises over the batch dimension (dim {dim}), so each sample's output depends on the others; "
                    "reduce over the sample's own dims instead (e.g. dim=-1) or use stored statistics")
    return found.label(), location, hint, details


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
    inputs = ctx.inputs
    dim, dim_source = _batch_dim(ctx, opts.batch_dim)
    n = _batch_size(inputs, dim)
    if n is None or n == 0:
        raise SkipCheck(f"no input tensor has a batch dimension {dim} ({dim_source}); give batch_dim if the inputs have one")
    synthesized = n == 1
    if synthesized:
        ctx.reference  # a model that cannot run its own example is an error, not a skip
        batch = _concat([inputs, inp.fresh_like(inputs, seed=ctx.options.seed + 101)], dim, 1)
        try:
            reference = ctx.forward(batch)
        except Exception as exc:
            raise SkipCheck(f"the example batch has 1 sample and a batch of 2 built from it (fresh random sample) does not run: "
                            f"{type(exc).__name__}: {exc}") from None
        n = 2
    else:
        batch, reference = inputs, ctx.reference
    indices = _spread(n, int(opts.max_samples))
    singles: list[Any] = []
    shared = ctx.peek(_SAMPLE_KEY) if not synthesized else None  # sample 0 alone, made by determinism
    for i in indices:
        if i == 0 and shared is not None and shared[:2] == (dim, n):
            singles.append(shared[3])
            continue
        part = _select(batch, [i], dim, n)
        try:
            singles.append(ctx.forward(part))
        except Exception as exc:
            return _single_error_result(ctx, exc, part, i, n, dim, dim_source)

    ref_flat = flatten(reference)
    first = flatten(singles[0])
    leaf_dims = {name: d for name, t in ref_flat.items() if (d := _leaf_batch_dim(t, first.get(name), n)) is not None}
    unbatched = [name for name, t in ref_flat.items() if isinstance(t, torch.Tensor) and name not in leaf_dims]
    if not leaf_dims:
        raise SkipCheck(f"no output has a batch dimension of size {n} that becomes 1 for one sample (outputs: {', '.join(ref_flat)})")

    rows: list[_Row] = []
    for i, out in zip(indices, singles):
        flat = flatten(out)
        actual = {name: flat.get(name) for name in leaf_dims}
        expected = {name: ref_flat[name].narrow(d, i, 1) for name, d in leaf_dims.items()}
        rows.append(_judge(ctx, f"sample {i} alone vs row {i} of the batch", actual, expected))
    perm: list[int] = []
    if opts.permute and n > 1:
        perm = [(j + 1) % n for j in range(n)]
        inverse = torch.argsort(torch.tensor(perm))
        shared = ctx.peek(_ROLLED_KEY) if not synthesized else None  # made by state_mutation
        if shared is not None and shared[:3] == (dim, n, perm):
            permuted = flatten(shared[3])
        else:
            permuted = flatten(ctx.forward(_select(batch, perm, dim, n)))
        actual = {name: permuted[name].index_select(d, inverse.to(permuted[name].device)) for name, d in leaf_dims.items()
                  if isinstance(permuted.get(name), torch.Tensor) and permuted[name].dim() > d}
        expected = {name: ref_flat[name] for name in leaf_dims}
        rows.append(_judge(ctx, "batch rolled by one vs the batch", actual, expected))

    metrics: dict[str, Any] = {
        "batch_size": n, "batch_dim": dim, "samples_alone": len(indices), "synthesized_batch": synthesized,
        "bitwise_comparisons": sum(r.bitwise for r in rows), "within_tolerance_comparisons": sum(r.ok and not r.bitwise for r in rows),
        "max_abs_diff": max((r.max_abs for r in rows), default=0.0),
    }
    details: dict[str, Any] = {
        "batch_dim": dim, "batch_dim_source": dim_source, "output_batch_dims": leaf_dims, "samples_alone": indices,
        "comparisons": [r.to_dict() for r in rows],
    }
    if unbatched:
        details["not_per_sample_outputs"] = unbatched
    if any(not r.bitwise for r in rows):
        details["tolerance_source"] = _tolerances(ctx).source
    note = ("the example batch has 1 sample: built a batch of 2 from it and a fresh random sample (fresh_like); " if synthesized else "")
    details["synthesized_batch"] = bool(synthesized)
    failing = [r for r in rows if not r.ok]
    if not failing:
        kinds = "bitwise" if all(r.bitwise for r in rows) else f"within the calibrated tolerance (max abs {metrics['max_abs_diff']:.2g})"
        return CheckResult(
            status=PASS,
            summary=f"{note}each of {len(indices)} samples run alone matches its row of the batch of {n}"
            + (", and so does the batch in another order" if perm else "") + f" ({kinds}; batch dim {dim}, {dim_source})",
            metrics=metrics, details=details,
        )
    worst = max(failing, key=lambda r: (r.max_abs if math.isfinite(r.max_abs) else 1e300))
    if worst.comp is not None:
        metrics.update(worst.comp.metrics())
    rel = _rel_for(worst, reference)
    sample_rows = [(i, r) for i, r in zip(indices, rows) if not r.ok]
    if sample_rows:
        i = max(sample_rows, key=lambda ir: ir[1].max_abs if math.isfinite(ir[1].max_abs) else 1e300)[0]
        culprit, location, hint, extra = localise_batch(ctx, batch, i, _select(batch, [i], dim, n), n, rel, dim)
    else:  # only the permuted batch differs: compare its row of sample 0 with sample 0 alone
        i = indices[0]
        permuted_batch = _select(batch, perm, dim, n)
        culprit, location, hint, extra = localise_batch(ctx, permuted_batch, perm.index(i), _select(batch, [i], dim, n), n, rel, dim)
    details.update(extra)
    return CheckResult(
        status=FAIL,
        summary=f"{note}outputs depend on the other samples in the batch: {len(failing)} of {len(rows)} comparisons differ beyond the "
        f"calibrated tolerance (worst: {worst.comparison}, max abs diff {worst.max_abs:.3g})",
        culprit=culprit, location=location, hint=hint, metrics=metrics, details=details,
    )


def _single_error_result(ctx: Context, exc: BaseException, part: Any, i: int, n: int, dim: int, dim_source: str) -> CheckResult:
    err = _explain_error(ctx, lambda: ctx.forward(part), exc)
    hint, location = _batch_hint(ctx.model, err.module_name, err.module, dim)
    return CheckResult(
        status=FAIL,
        summary=f"sample {i} cannot run alone (batch of 1 along dim {dim}): {err.message}",
        culprit=err.label, location=location or err.location,
        hint=f"a model that needs the rest of the batch to run one sample depends on it: {hint}",
        metrics={"batch_size": n, "batch_dim": dim},
        details={"error": err.message, "batch_dim": dim, "batch_dim_source": dim_source, "code": err.code},
    )
