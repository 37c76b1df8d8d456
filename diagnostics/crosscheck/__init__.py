"""Comparing the target with the user's own artifacts (`diagnose compare REFERENCE CANDIDATE`).

A candidate is an ONNX file (run under ONNX Runtime), a TorchScript archive, a `.pt2` program,
another target spec (the same factory with another checkpoint) or a recording of inputs and
outputs (`.npz`/`.pt`, see `recording`). It is run over the export sweep (only the sizes it
declares dynamic move) and judged against the reference as the export checks judge their own
artifacts; the first difference is then localised back to a PyTorch module.

* `candidate` — what the candidate is, loading it (memoised), declared dynamic dims, running it.
* `recording` — `record(model, inputs, path)` and reading recordings back.
* `localise_onnx` — the first diverging ONNX node, and the module it belongs to.
* `localise_params` — parameters that differ between two models, the first module whose output moves,
  the first diverging node of a `.pt2` program.
"""
