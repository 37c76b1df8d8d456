"""Export family: is the exported artifact the same function as eager, away from the example input?

The classic deployment bug: the artifact matches eager on the example input and silently
differs on every other. Checks here: `torchscript` (trace + script attempt), `torch_export`,
`onnx` (dynamo exporter + ONNX Runtime) and the opt-in `torch_compile`. All of them run on one
pipeline (`torch_diagnose.export.pipeline`): build the artifact once per run
(`ctx.cached("export:...")`), run it over the shared shape and value sweep (every dimension eager
accepts at other sizes, the batch and declared dimensions, which must stay dynamic, fresh values
of both signs and other scales), judge, localise, and publish it as a variant for the benchmark.
A dimension the artifact keeps static and says so is a `warn`; one it accepts and gets wrong is a
`fail`; a required one it cannot keep dynamic is a `fail`. Mismatches are shrunk to a small
counterexample (hypothesis) and written as a repro bundle under `<report_dir>/repro/<check>/`.
"""
