"""Export family: is the exported artifact the same function as eager, away from the example input?

The classic deployment bug: the artifact matches eager on the example input and silently
differs on every other. Checks here: `torchscript` (trace + script attempt), `torch_export`,
`onnx` (dynamo exporter + ONNX Runtime) and the opt-in `torch_compile`. All of them run on one
pipeline (`torch_diagnose.export.pipeline`): build the artifact once per run
(`ctx.cached("export:...")`), run it over the shared shape and value sweep (every dimension eager
accepts at other sizes, the batch and declared dimensions, which must stay dynamic, fresh values
of both signs and other scales), judge, localise, and publish it as a variant for the benchmark.
Sizes include ±1 around the example and sizes that change the model's internal grids (half,
double, ± the total stride). Dimensions the user declared (batch, `dynamic_dims`) are required: an
artifact that gets them wrong or keeps them static fails. Every other dimension is optional: wrong
numbers or rejected sizes there warn, and exporting them dynamic is tried only within
`optional_dims_budget_s` (else they are exported static and named as not explored). A failed dynamo
ONNX export falls back to the legacy exporter (`dynamo=False`), whose model is then judged.
Mismatches are shrunk to a small counterexample (hypothesis) and written as a repro bundle under `<report_dir>/repro/<check>/`.
"""
