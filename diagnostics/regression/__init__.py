"""Regression machinery: did the model change since it was recorded, and do its weights load right?

* `fingerprints` — weight digests and per-module-call fingerprints; the first module whose output moved.
* `changes`      — what changed since a recording: weights, environment, inputs, outputs.
* `state`        — state_dict round trips: a fresh model from the factory, key problems, state kept
  outside the state_dict, and the module culprit for a module path or state_dict key.

Recordings themselves are named, written and read by `torch_diagnose.golden` (torch-free at import).
"""
