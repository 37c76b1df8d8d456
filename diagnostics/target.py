"""What is diagnosed: the `Target` dataclass and the loading of target specs.

Spec forms (`diagnose SPEC`):
  demo                              the built-in demo (random-weight torchvision resnet18)
  path/to/file.py:factory           a factory in a Python file
  package.module:factory            a factory in an importable module
  torchvision:NAME[?weights=W]      a torchvision model in eval mode, seeded random weights unless W is given
  model.pt / model.ts               a TorchScript archive (torch.jit.load)
  model.pt2                         a torch.export ExportedProgram (torch.export.load)
  model.pt / model.pth              a pickled full model: only with trust_pickle=True
A factory may return a `Target`, an `nn.Module`, or `(module, example_inputs)`.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import re
import sys
import zipfile
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterable, Sequence

from .errors import TargetError, UsageError

#: Folders added to sys.path to import target files (isolation.py keeps them from spawned children).
ADDED_PATHS: list[str] = []

#: Factory names tried, in order, when a file or module spec names none.
DEFAULT_FACTORIES = ("make_target", "get_target", "target", "build_model", "get_model", "make_model", "model")


@dataclass
class Target:
    """A model and what it is served with.

    model:                the nn.Module, as deployment would receive it (not switched to eval).
    example_inputs:       a tensor, a tuple of positional inputs, or a dict of keyword inputs.
    preprocess:           the serving pipeline, raw sample -> tensor.
    reference_preprocess: the training/evaluation pipeline, raw sample -> tensor.
    samples:              raw samples (PIL images, arrays, file paths) for the pipelines.
    calibration:          an iterable of inputs shaped like example_inputs (quantization).
    labels:               ground truth for samples or calibration inputs, when known.
    dynamic_dims:         dims that vary in serving, e.g. {"x": {0: "batch", 1: "seq"}}.
    batch_dim:            the batch dimension of the inputs (0 unless the model is time-major).
    factory:              a zero-argument callable that builds a fresh copy (weights round trip).
    """

    model: Any
    example_inputs: Any = None
    preprocess: Callable[[Any], Any] | None = None
    reference_preprocess: Callable[[Any], Any] | None = None
    samples: Sequence[Any] | None = None
    calibration: Iterable[Any] | None = None
    labels: Sequence[Any] | None = None
    dynamic_dims: dict[str, dict[int, str]] | None = None
    name: str = ""
    batch_dim: int = 0
    factory: Callable[[], Any] | None = None
    source: str = ""

    def __post_init__(self) -> None:
        import torch

        if not isinstance(self.model, torch.nn.Module):
            raise TargetError(
                f"target {self.name or self.source or '?'}: model is a {type(self.model).__name__}, not a torch.nn.Module"
            )
        if not self.name:
            self.name = type(self.model).__name__

    def describe(self) -> dict[str, Any]:
        """JSON-friendly description for reports."""
        from .inputs import describe

        n_params = sum(p.numel() for p in self.model.parameters())
        return {
            "name": self.name,
            "source": self.source,
            "model_class": f"{type(self.model).__module__}.{type(self.model).__qualname__}",
            "parameters": n_params,
            "inputs": describe(self.example_inputs) if self.example_inputs is not None else None,
            "dynamic_dims": self.dynamic_dims,
            "has_preprocess": self.preprocess is not None,
            "has_reference_preprocess": self.reference_preprocess is not None,
            "samples": len(self.samples) if self.samples is not None and hasattr(self.samples, "__len__") else None,
        }


# ---------------------------------------------------------------------------------------------


def load_target(
    spec: str,
    *,
    trust_pickle: bool = False,
    input_shape: Sequence[int] | None = None,
    input_dtype: str | None = None,
) -> Target:
    """Turn a spec into a `Target`, or raise `TargetError` with one line that says what to fix."""
    spec = spec.strip()
    if not spec:
        raise TargetError("empty target spec: give demo, file.py:factory, module:factory, torchvision:NAME or a model file")
    if spec == "demo":
        from .demo import demo_target

        target = demo_target()
        target.source = "demo"
        return _finish(target, spec, input_shape, input_dtype)
    if spec.startswith("torchvision:"):
        return _finish(_from_torchvision(spec), spec, input_shape, input_dtype)
    path_part, _, factory = _split_factory(spec)
    if path_part.endswith(".py"):
        return _finish(_from_file(path_part, factory, spec), spec, input_shape, input_dtype)
    if os.path.isfile(path_part) and not factory:
        return _finish(_from_model_file(path_part, trust_pickle), spec, input_shape, input_dtype)
    if os.path.exists(spec):
        raise TargetError(f"{spec!r} is a folder, not a model file or factory spec")
    if any(spec.endswith(ext) for ext in (".pt", ".pth", ".pt2", ".ts", ".jit", ".pkl", ".bin")):
        raise TargetError(f"model file {spec!r} does not exist")
    return _finish(_from_module(path_part, factory, spec), spec, input_shape, input_dtype)


def _split_factory(spec: str) -> tuple[str, str, str]:
    # Windows drive letters (C:\...) are not factory separators.
    head, sep, tail = spec.rpartition(":")
    if not sep or (len(head) == 1 and head.isalpha()) or "/" in tail or "\\" in tail:
        return spec, "", ""
    return head, sep, tail


def _finish(obj: Any, spec: str, input_shape: Sequence[int] | None, input_dtype: str | None) -> Target:
    target = coerce_target(obj, source=spec)
    if input_shape is not None:
        import torch

        from .inputs import parse_dtype, synthesize

        dtype = parse_dtype(input_dtype) if input_dtype else torch.float32
        target.example_inputs = synthesize(input_shape, dtype, seed=0)
    elif target.example_inputs is None:
        shape = _default_shape(target.model)
        if shape is None:
            raise TargetError(
                f"target {spec!r} has no example inputs: pass --input-shape (e.g. 2,3,224,224) or return "
                f"(model, example_inputs) or a Target from the factory"
            )
        from .inputs import parse_dtype, synthesize

        import torch

        target.example_inputs = synthesize(shape, parse_dtype(input_dtype) if input_dtype else torch.float32, seed=0)
    return target


def coerce_target(obj: Any, *, source: str = "", factory: Callable[[], Any] | None = None) -> Target:
    """Accept what a factory may return: a Target, an nn.Module, or (module, example_inputs)."""
    import torch

    if isinstance(obj, Target):
        target = obj
    elif isinstance(obj, torch.nn.Module):
        target = Target(model=obj, source=source)
    elif isinstance(obj, tuple) and len(obj) == 2 and isinstance(obj[0], torch.nn.Module):
        target = Target(model=obj[0], example_inputs=obj[1], source=source)
    else:
        raise TargetError(
            f"target {source!r}: the factory returned {type(obj).__name__}; return an nn.Module, "
            f"(module, example_inputs) or a diagnostics.Target"
        )
    if not target.source:
        target.source = source
    if factory is not None and target.factory is None:
        target.factory = factory
    return target


def _default_shape(model: Any) -> tuple[int, ...] | None:
    """A sensible input shape for torchvision image classifiers; None when it cannot be guessed."""
    module = type(model).__module__
    if module.startswith("torchvision.models"):
        if ".video." in module:
            return (1, 3, 8, 112, 112)
        if ".segmentation." in module or ".detection." in module:
            return (1, 3, 224, 224)
        name = type(model).__name__.lower()
        if "inception" in name:
            return (2, 3, 299, 299)
        return (2, 3, 224, 224)
    return None


def _one_line(exc: BaseException) -> str:
    """`exc`'s message cut to its first non-empty line: a TargetError message is one line."""
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), "")


def _call_factory(factory: Callable[[], Any], label: str) -> Any:
    try:
        return factory()
    except UsageError:
        raise
    except Exception as exc:
        raise TargetError(f"factory {label} raised {type(exc).__name__}: {_one_line(exc)}") from exc


def _pick_factory(namespace: Any, factory: str, label: str) -> Callable[[], Any]:
    if factory:
        if not hasattr(namespace, factory):
            available = [n for n, v in vars(namespace).items() if callable(v) and not n.startswith("_") and getattr(v, "__module__", None) == namespace.__name__]
            raise TargetError(f"{label} has no factory {factory!r}" + (f"; it defines: {', '.join(available)}" if available else ""))
        fn = getattr(namespace, factory)
    else:
        fn = next((getattr(namespace, n) for n in DEFAULT_FACTORIES if hasattr(namespace, n)), None)
        if fn is None:
            raise TargetError(f"{label} names no factory: write {label}:FACTORY (tried {', '.join(DEFAULT_FACTORIES)})")
    import torch

    if isinstance(fn, torch.nn.Module):
        module = fn
        return lambda: module
    if not callable(fn):
        raise TargetError(f"{label}:{factory} is a {type(fn).__name__}, not a callable factory")
    return fn


def _from_file(path: str, factory: str, spec: str) -> Any:
    if not os.path.isfile(path):
        raise TargetError(f"file {path!r} does not exist")
    module_name = "_diagnose_target_" + re.sub(r"\W", "_", os.path.splitext(os.path.basename(path))[0])
    loader_spec = importlib.util.spec_from_file_location(module_name, os.path.abspath(path))
    if loader_spec is None or loader_spec.loader is None:
        raise TargetError(f"cannot import {path!r} as Python")
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[module_name] = module  # dataclasses and pickling need the module registered
    folder = os.path.dirname(os.path.abspath(path))
    if folder not in sys.path:
        # Appended, not prepended, and remembered: a sibling file named like a package (cuda.py,
        # onnx.py) must not shadow the real one; isolation.py hides these folders from spawned
        # children until torch is imported there.
        sys.path.append(folder)
        ADDED_PATHS.append(folder)
    try:
        loader_spec.loader.exec_module(module)
    except SyntaxError as exc:
        sys.modules.pop(module_name, None)
        raise TargetError(f"syntax error in {exc.filename or path} line {exc.lineno}: {exc.msg}") from exc
    except Exception as exc:
        sys.modules.pop(module_name, None)
        raise TargetError(f"importing {path} raised {type(exc).__name__}: {_one_line(exc)}") from exc
    fn = _pick_factory(module, factory, path)
    return coerce_target(_call_factory(fn, spec), source=spec, factory=fn)


def _from_module(module_name: str, factory: str, spec: str) -> Any:
    if not module_name or not all(part.isidentifier() for part in module_name.split(".")):
        raise TargetError(
            f"cannot understand target {spec!r}: give demo, path/to/file.py:factory, package.module:factory, "
            f"torchvision:NAME, or a .pt/.pt2 file"
        )
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise TargetError(f"cannot import module {module_name!r} ({_one_line(exc)}); check the spelling or install it") from exc
    except SyntaxError as exc:
        raise TargetError(f"syntax error in {exc.filename} line {exc.lineno}: {exc.msg}") from exc
    except Exception as exc:
        raise TargetError(f"importing {module_name} raised {type(exc).__name__}: {_one_line(exc)}") from exc
    fn = _pick_factory(module, factory, module_name)
    return coerce_target(_call_factory(fn, spec), source=spec, factory=fn)


def _from_torchvision(spec: str) -> Target:
    import torch
    import torchvision

    name, _, query = spec[len("torchvision:"):].partition("?")
    params = dict(item.split("=", 1) for item in query.split("&") if "=" in item)
    unknown = set(params) - {"weights"}
    if unknown:
        raise TargetError(f"{spec}: unknown parameter {sorted(unknown)[0]!r}; only ?weights=NAME is understood")
    try:
        builder = torchvision.models.get_model_builder(name)
    except ValueError:
        import difflib

        available = torchvision.models.list_models()
        close = difflib.get_close_matches(name.lower(), available, n=5, cutoff=0.6)
        close += [m for m in available if name and name.lower() in m and m not in close][: 5 - len(close)]
        raise TargetError(f"torchvision has no model {name!r}" + (f"; did you mean {', '.join(close)}?" if close else "; see torchvision.models.list_models()")) from None
    weights = params.get("weights")

    def build() -> Any:
        """Seeded random weights (the same model every time), in eval mode as a deployment loads it."""
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                model = builder(weights=weights) if weights else builder(weights=None)
            return model.eval()
        except Exception as exc:
            raise TargetError(f"torchvision:{name} with weights={weights!r} failed: {type(exc).__name__}: {_one_line(exc)}") from exc

    model = build()
    return Target(model=model, name=name, source=spec, factory=build)


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


def _from_model_file(path: str, trust_pickle: bool) -> Target:
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
            raise TargetError(f"cannot load exported program {path}: {type(exc).__name__}: {_one_line(exc)}") from exc
        module = ep.module()
        if ep.example_inputs is None:  # saved without example inputs: --input-shape supplies them
            return Target(model=module, name=name, source=path)
        args, kwargs = ep.example_inputs
        if kwargs and not args:
            example: Any = dict(kwargs)
        elif kwargs:  # both kinds: pass everything by position, the trailing ones as keywords
            from .inputs import PositionalCall

            module = PositionalCall(module, list(kwargs))
            example = tuple(args) + tuple(kwargs.values())
        else:
            example = args[0] if len(args) == 1 else tuple(args)
        return Target(model=module, example_inputs=example, name=name, source=path)
    if _is_torchscript_archive(path):
        try:
            model = torch.jit.load(path, map_location="cpu")
        except Exception as exc:
            raise TargetError(f"cannot load TorchScript file {path}: {type(exc).__name__}: {_one_line(exc)}") from exc
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
            raise TargetError(f"cannot unpickle {path}: {_one_line(exc)}") from exc
        raise TargetError(
            f"{path} is a full pickle that would run code to load; refusing (weights_only=True). "
            f"If you trust this file, pass --trust-pickle"
        ) from exc
    except Exception as exc:
        raise TargetError(f"cannot load {path}: {type(exc).__name__}: {_one_line(exc)}") from exc
    if isinstance(obj, dict):  # a state_dict, or a training checkpoint holding one
        what = "a state_dict" if obj and all(isinstance(v, torch.Tensor) for v in obj.values()) else "a dict (a checkpoint?)"
        raise TargetError(
            f"{path} holds {what}, not a model: write a factory (file.py:make_model) that builds the "
            f"model and loads it with model.load_state_dict(torch.load(path, weights_only=True))"
        )
    return coerce_target(obj, source=path)


def with_inputs(target: Target, example_inputs: Any) -> Target:
    return replace(target, example_inputs=example_inputs)


__all__ = ["Target", "load_target", "coerce_target", "with_inputs", "DEFAULT_FACTORIES"]


def load_target_for(spec: str, options: Any) -> Target:
    """`load_target` with a run's options, under the run's seed (restoring the global RNG after).

    A factory that does not seed itself still builds the same weights in the CLI, the pytest
    plugin and an --isolate child, so golden recordings made by one face match the others.
    """
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(options.seed)
        return load_target(spec, trust_pickle=options.trust_pickle, input_shape=options.input_shape, input_dtype=options.input_dtype)
