"""Train/serve skew machinery for the preprocessing checks, one job per module.

* `steps`     — a pipeline's steps (Compose, Sequential, a function), their source, and step culprits.
* `runs`      — running pipelines on samples: accepted input form, repeatability, batch consistency.
* `resize`    — the common resize paths (torchvision tensor, PIL, OpenCV) re-implemented as variants.
* `fit`       — serving and reference tensors made comparable; per-channel affine fits.
* `scale`     — value maps (scaling, normalisation), presets and the named hypotheses about them.
* `matching`  — which resize variant reproduces a pipeline, and how two variants differ in words.
* `findings`  — `Finding`: one named cause of skew, with its culprit step and hint.
* `analysis`  — `analyse`: the diagnosis of one pair of pipeline outputs.
* `model`     — serving and reference tensors through the model (top-1 agreement, output error).
* `audit`     — what example inputs alone say (range, per-channel statistics, layout).

Sample images (generated, loaded, decoded) are in `diagnostics/images.py`.
"""
