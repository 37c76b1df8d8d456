"""The export family's machinery: one pipeline every exporter check runs on.

build the artifact -> run it over the shape and value sweep -> judge the outcome -> localise the
culprit -> publish the artifact as a deployment variant.

* `cases`, `build`, `run` — the sweep: what it holds, building it once per run, running an artifact on it.
* `pipeline`, `findings` — the shared check pipeline and the judging of a sweep outcome.
* `messages`, `guards` — exporters' messages and torch.export's shape guards, in plain words with lines.
* `torchscript`, `program`, `onnx_build`, `dynamo` — the builders of each artifact.
* `onnx_tools`, `repro` — the first diverging ONNX operator; counterexamples and repro bundles.
"""
