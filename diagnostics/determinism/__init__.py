"""Machinery shared by the determinism family (`eval_mode`, `state_mutation`, `determinism`,
`batch_invariance`): judging runs against each other, making runs in other settings, and naming
the culprit once a comparison fails.

* `judge`      — bitwise first, then the tolerance calibrated from the model's fp32-vs-fp64 error.
* `configs`    — how one run is made (grad mode, threads, input layout, seed) and run errors.
* `batch`      — the batch dimension, picking and aligning samples, sample 0 run alone.
* `divergence` — the first module (or op) whose output differs, at a scale-aware tolerance.
* `randomness`, `branching`, `mixing`, `state`, `modes` — localisation, one kind of fault each.

The family shares runs through the Context under the keys below (other families may read them).
"""
from __future__ import annotations

#: The repeat on the example inputs that `state_mutation` makes; `determinism` uses it as its first repeat.
REPEAT_KEY = "determinism:repeat-output"
#: (dim, n, perm, output) of the example batch rolled by one: new content for `state_mutation`,
#: the reordered batch for `batch_invariance`.
ROLLED_KEY = "determinism:rolled-batch-output"
#: (dim, n, inputs, output) of sample 0 run alone: `determinism` compares its other settings on it,
#: `batch_invariance` reuses it as its first sample-alone run.
SAMPLE_KEY = "determinism:sample-0-output"
#: The family's tolerances (`judge.Tol`), built once and only when a comparison is not bitwise.
TOLERANCE_KEY = "determinism:tolerances"
#: [snapshot before, snapshot after, ctx.stats.calls after] of the model's first call (the reference), taken by
#: `eval_mode` (which watches that call for unregistered modules) for `state_mutation`, which empties the list.
FIRST_CALL_KEY = "determinism:first-call-snapshots"
