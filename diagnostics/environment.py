"""The software and hardware a run happened on, for reports and golden-file provenance."""
from __future__ import annotations

import platform
import sys
from typing import Any


def _version(module: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:
        return None


def environment(device: Any = None) -> dict[str, Any]:
    import torch

    env: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "torch": torch.__version__,
        "torchvision": _version("torchvision"),
        "onnx": _version("onnx"),
        "onnxruntime": _version("onnxruntime"),
        "numpy": _version("numpy"),
        "threads": torch.get_num_threads(),
        "device": str(device) if device is not None else "cpu",
        "cuda_available": torch.cuda.is_available(),
    }
    if torch.version.cuda:
        env["cuda_build"] = torch.version.cuda
    if torch.cuda.is_available():
        env["cuda_device"] = torch.cuda.get_device_name(0)
        env["cudnn"] = torch.backends.cudnn.version()
    return env
