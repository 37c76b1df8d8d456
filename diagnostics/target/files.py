"""Model files as targets: a TorchScript archive, a torch.export program, or a torch.save pickle
(only when trusted: loading a full pickle runs code from the file)."""
from __future__ import annotations

import os
import re
import zipfile
from typing import Any

from ..errors import TargetError
from ..text import one_line
from .base import Target, coerce_target


def _is_torchscript_archive(path: str) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
    return any(n.endswith("constants.pkl") for n in names) and any("/code/" in n for n in names)


def _is_exported_program(path: str) -> bool:
    if path.endswith(".pt2"):
        return True
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
    # Match the archive's own top-level records: a bare "/models/" substring also matches TorchScript
    # archives, whose code/ tree mirrors the model's package (myproject/models/net.py).
    return any(
        n.endswith("serialized_exported_program.json") or re.fullmatch(r"[^/]+/(archive_format|models/[^/]+\.json)", n)
        for n in names
    )


def _is_torch_save_file(path: str) -> bool:
    """A torch.save zip archive (it holds data.pkl) or a legacy pickle (starts with the PROTO opcode)."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            return any(n == "data.pkl" or n.endswith("/data.pkl") for n in zf.namelist())
    with open(path, "rb") as fh:
        return fh.read(1) == b"\x80"


def from_model_file(path: str, trust_pickle: bool) -> Target:
    import pickle

    import torch

    name = os.path.splitext(os.path.basename(path))[0]
    if _is_exported_program(path):
        try:
            if path.endswith(".pt2"):
                ep = torch.export.load(path)
            else:  # given a path, torch.export.load first tries (and logs a failure) for non-.pt2 names
                with open(path, "rb") as fh:
                    ep = torch.export.load(fh)
        except Exception as exc:
            raise TargetError(f"cannot load exported program {path}: {one_line(exc)}") from exc
        module = ep.module()
        if ep.example_inputs is None:  # saved without example inputs: --input-shape supplies them
            return Target(model=module, name=name, source=path)
        args, kwargs = ep.example_inputs
        if kwargs and not args:
            example: Any = dict(kwargs)
        elif kwargs:  # both kinds: pass everything by position, the trailing ones as keywords
            from ..inputs import PositionalCall

            module = PositionalCall(module, list(kwargs))
            example = tuple(args) + tuple(kwargs.values())
        else:
            example = args[0] if len(args) == 1 else tuple(args)
        return Target(model=module, example_inputs=example, name=name, source=path)
    if _is_torchscript_archive(path):
        try:
            model = torch.jit.load(path, map_location="cpu")
        except Exception as exc:
            raise TargetError(f"cannot load TorchScript file {path}: {one_line(exc)}") from exc
        return Target(model=model, name=name, source=path)
    if not _is_torch_save_file(path):
        raise TargetError(
            f"{path} is not a model file diagnose can load: expected a TorchScript archive, a torch.export "
            f".pt2 file or a torch.save file (for other formats, write a factory: file.py:make_model)"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except pickle.UnpicklingError as exc:
        if trust_pickle:
            raise TargetError(f"cannot unpickle {path}: {one_line(exc, with_type=False)}") from exc
        raise TargetError(
            f"{path} is a full pickle that would run code to load; refusing (weights_only=True). "
            f"If you trust this file, pass --trust-pickle"
        ) from exc
    except Exception as exc:
        raise TargetError(f"cannot load {path}: {one_line(exc)}") from exc
    if isinstance(obj, dict):  # a state_dict, or a training checkpoint holding one
        what = "a state_dict" if obj and all(isinstance(v, torch.Tensor) for v in obj.values()) else "a dict (a checkpoint?)"
        raise TargetError(
            f"{path} holds {what}, not a model: write a factory (file.py:make_model) that builds the "
            f"model and loads it with model.load_state_dict(torch.load(path, weights_only=True))"
        )
    return coerce_target(obj, source=path)
