"""CUDA family: out-of-memory at the real batch size, memory growth, hidden syncs, CPU/GPU parity.

* `cuda_sync` — every operation in forward that makes the host wait for the GPU (`.item()`,
  `if t:`, `nonzero`, boolean masks, `unique`, `.tolist()`, `.numpy()`, `.cpu()`,
  `torch.cuda.synchronize`), each once with module path and file:line. Works on CPU too.
* `cuda_oom` — peak memory per batch size, fitted against the batch; with a budget, whether the
  deployment batch fits and the largest batch that does (confirmed by a real search on CUDA).
* `memory_growth` — memory kept alive across calls (lists of activations, caches, autograd graphs).
* `device_parity` (CUDA only) — CUDA outputs against CPU within an fp64-calibrated tolerance, and which
  setting (TF32, cuDNN algorithms, the SDPA backend) explains a difference.
* `cuda_timing` (CUDA only) — latency with and without synchronisation: the error a timer without
  `torch.cuda.synchronize()` makes.

Everything except the last two runs and is tested on machines without a GPU; on a GPU the same
checks use CUDA's own mechanisms (allocator statistics, `set_sync_debug_mode`, real OOMs). The
machinery lives in `torch_diagnose.sync`, `.memory`, `.parity` and `.timing`.
"""
