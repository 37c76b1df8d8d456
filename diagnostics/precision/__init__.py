"""Precision-family machinery: per-layer views of a forward pass and the fp16/bf16 judge.

* `hooks`       — `ModuleHooks` (pre/post hooks on every module call) and a module call's call site.
* `raising`     — `run_locating_raise`: the module and line where a forward raised.
* `ranges`      — `record_ranges`: every module call's fp32 output range.
* `error_table` — `record_io` and `error_table`: each module's carried and local error in a twin.
* `input_stats` — `record_input_stats`: layer input ranges and channel outliers (int8 calibration).
* `reduced`     — running and judging a model in fp16/bf16 (autocast, whole-model cast).
* `explain`     — the verdict, the culprit and the hint for fp16/bf16.

The int8 machinery is in `torch_diagnose.quant`.
"""
