"""Int8 quantization machinery for the `quantization` check (CPU, x86/fbgemm engine).

* `runtime`     — the quantized engine, running a quantized model (`QuantMode`), sizes and latency.
* `flows`       — building the variants: dynamic (`quantize_dynamic`), static by PT2E (torchao) or FX.
* `calibration` — the calibration set (the target's or synthesised) and whether it explains a bad result.
* `sensitivity` — each layer quantized alone, ranked by the SQNR it costs; keeping the worst in float.
* `judge`       — SQNR/top-1/accuracy thresholds, metrics, the summary and the published variants.
* `defaults`    — whether a run that did not name the check runs it, and which modes.
"""
