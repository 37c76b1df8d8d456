"""Precision family: can this model ship in fp16, bf16 or int8, and if not, which layer breaks?

* `fp16_bf16`    — `fp16` and `bf16`: autocast and whole-model cast, judged against fp64.
* `quantization` — int8 dynamic and static post-training quantization against fp32 (opt-in).

The machinery lives in `torch_diagnose.precision` (layer tables, fp16/bf16 judge) and
`torch_diagnose.quant` (int8 flows, calibration, layer sensitivity).
"""
