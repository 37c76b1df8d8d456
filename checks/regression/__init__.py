"""Regression family: did this model change since it was recorded, and do its weights load right?

* `golden`: the model's outputs on recorded inputs must match a recording (`__golden__/...`).
* `weights_roundtrip`: the saved state_dict, loaded strictly into a fresh model from
  `Target.factory`, must give bitwise identical outputs.

They are two checks, not one: they answer different questions, need different things (a recording
vs a factory) and fail for different reasons; either runs without the other. The machinery lives
in `torch_diagnose.golden` (recordings) and `torch_diagnose.regression`.
"""
