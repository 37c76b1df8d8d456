"""Counterexamples: shrink a mismatching input with hypothesis, and write a repro bundle.

`shrink` searches the space of shapes (sizes eager accepts for each dynamic dimension group,
never below 2) and values (seed, sign, scale) for the smallest input on which an artifact still
differs from eager; hypothesis shrinks toward small sizes, seed 0, unit scale. `write_bundle`
writes the exported file, the inputs and eager's outputs as `.npz`, and a short script that
loads the artifact, runs it on the inputs and prints the difference: what a bug report needs.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..tree import flatten
from .cases import DimGroup, Sweep, SweepCase, fill_values, named_leaves, resize, to_numpy
from .run import judge, max_abs_of


@dataclass
class Counterexample:
    """A small input on which the artifact and eager differ."""

    case: SweepCase
    actual: Any
    max_abs: float
    sizes: dict[str, int]
    values: str  # e.g. "negative x0.1, seed 3"
    evaluations: int
    shrunk: bool

    @property
    def numel(self) -> int:
        return sum(t.numel() for t in flatten(self.case.inputs).values() if isinstance(t, torch.Tensor))

    def describe(self) -> str:
        sizes = ", ".join(f"{k}={v}" for k, v in self.sizes.items())
        return f"{sizes + '; ' if sizes else ''}{self.values}: outputs differ by {self.max_abs:.3g}"


class _Found(Exception):
    pass


def _candidates(group: DimGroup, upto: int) -> list[int]:
    pool = {2, 3, 4, group.size, *group.accepted, *group.grid, max(2, group.size // 2), max(2, group.size // 4)}
    return sorted(s for s in pool if 2 <= s <= max(upto, group.size))


def _attempt(ctx: Any, sweep: Sweep, groups: list[DimGroup], run: Callable[[Any], Any], params: dict[str, Any],
             evaluations: list[int]) -> Counterexample | None:
    """One input hypothesis drew: a counterexample when eager runs on it and the artifact returns other numbers."""
    sizes = {g.name: params[g.name] for g in groups}
    kind, scale, seed = params["values"]
    resized = resize(sweep.example, sweep.names, {ref: sizes[g.name] for g in groups for ref in g.refs})
    inputs = resized if kind == "example" else fill_values(resized, kind=kind, scale=scale, seed=seed)
    evaluations[0] += 1
    try:
        expected = ctx.forward(inputs)
    except Exception:
        return None  # eager rejects it: not a counterexample
    case = SweepCase("counterexample", "shape", inputs, expected, dict(sizes))
    try:
        with torch.inference_mode():
            actual = run(inputs)
    except Exception:
        return None  # raising is not silent: shrink only wrong numbers
    cmp = judge(ctx, case, actual)
    if cmp.passed:
        return None
    label = "example values" if kind == "example" else f"{kind} values x{scale:g}, seed {seed}"
    return Counterexample(case, actual, max_abs_of(cmp), sizes, label, evaluations[0], True)


def shrink(
    ctx: Any,
    sweep: Sweep,
    failing: SweepCase,
    run: Callable[[Any], Any],
    *,
    max_examples: int = 40,
    budget_s: float = 20.0,
) -> Counterexample | None:
    """The smallest failing input hypothesis finds within the budget (None when hypothesis is missing)."""
    try:
        from hypothesis import HealthCheck, Phase, Verbosity, given, settings
        from hypothesis import strategies as st
    except ImportError:
        return None
    groups = [g for g in sweep.groups if g.dynamic]
    space = {g.name: st.sampled_from(_candidates(g, failing.sizes.get(g.name, g.size))) for g in groups}
    has_float = any(isinstance(t, torch.Tensor) and t.is_floating_point() for t in sweep.leaves.values())
    values = st.tuples(st.sampled_from(["randn", "positive", "negative", "example"]),
                       st.sampled_from([1.0, 0.1, 10.0]), st.integers(0, 1000)) if has_float else st.just(("example", 1.0, 0))
    found: list[Counterexample] = []
    deadline = time.monotonic() + budget_s
    evaluations = [0]

    @settings(max_examples=max_examples, deadline=None, database=None, derandomize=True,
              phases=(Phase.generate, Phase.shrink), suppress_health_check=list(HealthCheck),
              verbosity=Verbosity.quiet, report_multiple_bugs=False)
    @given(st.fixed_dictionaries({**space, "values": values}))
    def prop(params: dict[str, Any]) -> None:
        if time.monotonic() > deadline and found:
            return
        result = _attempt(ctx, sweep, groups, run, params, evaluations)
        if result is not None:
            found.append(result)
            raise _Found()

    try:
        prop()
    except _Found:
        pass
    except Exception:  # hypothesis gave up (flaky, unsatisfiable, budget): keep what was found
        pass
    if not found:
        return None
    best = min(found, key=lambda c: (c.numel, c.values != "example values", c.values))
    best.evaluations = evaluations[0]
    return best


# ---------------------------------------------------------------------------------------------
# Bundles


def _tensor_dict(obj: Any, names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    leaves = named_leaves(obj, names) if names is not None else flatten(obj)
    return {k: to_numpy(v) for k, v in leaves.items() if isinstance(v, torch.Tensor)}


_RUNNERS = {
    "onnx": (
        "import onnxruntime as ort\n"
        "session = ort.InferenceSession(os.path.join(HERE, {file!r}), providers=['CPUExecutionProvider'])\n"
        "feeds = {{i.name: inputs[i.name] for i in session.get_inputs()}}\n"
        "outputs = session.run(None, feeds)\n"
    ),
    "torchscript": (
        "import torch\n"
        "model = torch.jit.load(os.path.join(HERE, {file!r}))\n"
        "args = {{k: torch.from_numpy(v) for k, v in inputs.items()}}\n"
        "outputs = flat(model(**args) if KEYWORDS else model(*[args[n] for n in NAMES]))\n"
    ),
    "torch.export": (
        "import torch\n"
        "model = torch.export.load(os.path.join(HERE, {file!r})).module()\n"
        "args = {{k: torch.from_numpy(v) for k, v in inputs.items()}}\n"
        "outputs = flat(model(**args) if KEYWORDS else model(*[args[n] for n in NAMES]))\n"
    ),
}

_SCRIPT = '''"""Repro: {title}

{description}
Run: python repro.py   (needs numpy and {needs})
"""
import os

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
NAMES = {names!r}
KEYWORDS = {keywords!r}


def flat(obj):
    """Tensor leaves in order (dict values, tuple/list items), as numpy arrays."""
    if isinstance(obj, dict):
        return [a for v in obj.values() for a in flat(v)]
    if isinstance(obj, (list, tuple)):
        return [a for v in obj for a in flat(v)]
    return [obj.detach().cpu().numpy()] if hasattr(obj, "detach") else []


inputs = dict(np.load(os.path.join(HERE, "inputs.npz")))
expected = np.load(os.path.join(HERE, "expected.npz"))
{runner}
worst = 0.0
for name, out in zip(expected.files, outputs):
    ref = expected[name]
    if out.shape != ref.shape:
        print(f"{{name}}: shape {{out.shape}} vs eager {{ref.shape}}")
        worst = float("inf")
        continue
    diff = float(np.abs(out.astype(np.float64) - ref.astype(np.float64)).max()) if ref.size else 0.0
    worst = max(worst, diff)
    print(f"{{name}}: max |artifact - eager| = {{diff:.6g}}")
print("REPRODUCED" if worst > {threshold!r} else "not reproduced", "(max abs difference", worst, ")")
'''


def write_bundle(
    folder: str,
    *,
    kind: str,
    artifact_path: str | None,
    inputs: Any,
    names: Sequence[str],
    expected: Any,
    actual: Any | None,
    title: str,
    description: str,
    threshold: float,
    info: dict[str, Any] | None = None,
) -> str:
    """Write a repro bundle into `folder` (created, emptied of an older bundle) and return the folder."""
    os.makedirs(folder, exist_ok=True)
    file_name = None
    if artifact_path and os.path.exists(artifact_path):
        file_name = os.path.basename(artifact_path)
        target = os.path.join(folder, file_name)
        if os.path.abspath(target) != os.path.abspath(artifact_path):
            shutil.copyfile(artifact_path, target)
    in_arrays = _tensor_dict(inputs, names)
    np.savez(os.path.join(folder, "inputs.npz"), **in_arrays)
    exp_arrays = _tensor_dict(expected)
    np.savez(os.path.join(folder, "expected.npz"), **exp_arrays)
    if actual is not None:
        try:
            np.savez(os.path.join(folder, "actual.npz"), **_tensor_dict(actual))
        except Exception:
            pass
    runner = _RUNNERS.get(kind, "raise SystemExit('no runner for this artifact kind')\n").format(file=file_name or "?")
    needs = {"onnx": "onnxruntime", "torchscript": "torch", "torch.export": "torch"}.get(kind, "torch")
    script = _SCRIPT.format(title=title, description=description, needs=needs, names=list(names),
                            keywords=isinstance(inputs, dict), runner=runner, threshold=float(threshold))
    with open(os.path.join(folder, "repro.py"), "w") as fh:
        fh.write(script)
    meta = {"title": title, "description": description, "artifact": file_name, "inputs": {k: list(v.shape) for k, v in in_arrays.items()},
            "outputs": list(exp_arrays), **(info or {})}
    with open(os.path.join(folder, "info.json"), "w") as fh:
        json.dump(meta, fh, indent=2, default=str)
    return folder
