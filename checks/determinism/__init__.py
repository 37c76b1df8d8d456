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
The shared machinery lives in `torch_diagnose.determinism`.
"""
