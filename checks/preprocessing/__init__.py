"""Preprocessing family: does serving feed the model what training did?

* `preprocessing`: serving vs reference pipeline on the same samples, compared in tensor space and
  through the model, with the cause of any skew named.
* `input_audit`: what the example inputs alone say (range, per-channel statistics, layout).

The machinery lives in `torch_diagnose.preprocess`; sample images in `torch_diagnose.images`.
"""
