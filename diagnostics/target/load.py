"""Target specs turned into Targets: demo, file.py:factory, module:factory, torchvision:NAME,
timm:NAME, hf:FOLDER_OR_ID (hub.py) and model files (see the package docstring for the forms)."""
from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import re
import sys
from typing import Any, Callable, Sequence

from ..errors import TargetError, UsageError
from ..locate.code import add_user_files
from ..text import one_line
from .base import Target, coerce_target, finish_target
from .files import from_model_file

#: Folders added to sys.path to import target files (isolation.py keeps them from spawned children).
ADDED_PATHS: list[str] = []

#: Factory names tried, in order, when a file or module spec names none.
DEFAULT_FACTORIES = ("make_target", "get_target", "target", "build_model", "get_model", "make_model", "model")


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
        raise TargetError("empty target spec: give demo, file.py:factory, module:factory, torchvision:NAME, timm:NAME, hf:FOLDER or a model file")
    if spec == "demo":
        from ..demo import demo_target

        target = demo_target()
        target.source = "demo"
        return finish_target(target, spec, input_shape, input_dtype)
    if spec.startswith("torchvision:"):
        return finish_target(_from_torchvision(spec), spec, input_shape, input_dtype)
    if spec.startswith(("timm:", "hf:")):
        from .hub import from_hf, from_timm

        loader = from_timm if spec.startswith("timm:") else from_hf
        return finish_target(loader(spec), spec, input_shape, input_dtype)
    path_part, _, factory = split_factory(spec)
    if path_part.endswith(".py"):
        return finish_target(_from_file(path_part, factory, spec), spec, input_shape, input_dtype)
    if os.path.isfile(path_part) and not factory:
        return finish_target(from_model_file(path_part, trust_pickle), spec, input_shape, input_dtype)
    if os.path.exists(spec):
        raise TargetError(f"{spec!r} is a folder, not a model file or factory spec")
    if any(spec.endswith(ext) for ext in (".pt", ".pth", ".pt2", ".ts", ".jit", ".pkl", ".bin")):
        raise TargetError(f"model file {spec!r} does not exist")
    return finish_target(_from_module(path_part, factory, spec), spec, input_shape, input_dtype)


def split_factory(spec: str) -> tuple[str, str, str]:
    """(path or module, ':' or '', factory) of a spec; Windows drive letters (C:\\...) are not separators."""
    head, sep, tail = spec.rpartition(":")
    if not sep or (len(head) == 1 and head.isalpha()) or "/" in tail or "\\" in tail:
        return spec, "", ""
    return head, sep, tail


def _call_factory(factory: Callable[[], Any], label: str) -> Any:
    try:
        return factory()
    except UsageError:
        raise
    except Exception as exc:
        raise TargetError(f"factory {label} raised {one_line(exc)}") from exc


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
    add_user_files([path])  # the user's code, wherever it sits (even in a site-packages-like folder)
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
        raise TargetError(f"importing {path} raised {one_line(exc)}") from exc
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
        raise TargetError(f"cannot import module {module_name!r} ({one_line(exc, with_type=False)}); check the spelling or install it") from exc
    except SyntaxError as exc:
        raise TargetError(f"syntax error in {exc.filename} line {exc.lineno}: {exc.msg}") from exc
    except Exception as exc:
        raise TargetError(f"importing {module_name} raised {one_line(exc)}") from exc
    fn = _pick_factory(module, factory, module_name)
    return coerce_target(_call_factory(fn, spec), source=spec, factory=fn)


def _from_torchvision(spec: str) -> Target:
    import torch
    import torchvision

    name, _, query = spec[len("torchvision:"):].partition("?")
    params = dict(item.split("=", 1) for item in query.split("&") if "=" in item)
    unknown = set(params) - {"weights", "weights_backbone"}
    if unknown:
        raise TargetError(f"{spec}: unknown parameter {sorted(unknown)[0]!r}; only ?weights=NAME and "
                          f"?weights_backbone=NAME are understood")
    try:
        builder = torchvision.models.get_model_builder(name)
    except ValueError:
        import difflib

        available = torchvision.models.list_models()
        close = difflib.get_close_matches(name.lower(), available, n=5, cutoff=0.6)
        close += [m for m in available if name and name.lower() in m and m not in close][: 5 - len(close)]
        raise TargetError(f"torchvision has no model {name!r}" + (f"; did you mean {', '.join(close)}?" if close else "; see torchvision.models.list_models()")) from None
    weights = params.get("weights")
    kwargs: dict[str, Any] = {"weights": weights or None}
    if "weights_backbone" in inspect.signature(builder).parameters:
        # Segmentation and detection builders default to ImageNet backbone weights: a download that
        # fails offline. Random means random throughout unless the user names a backbone.
        kwargs["weights_backbone"] = params.get("weights_backbone") or None

    def build() -> Any:
        """Seeded random weights (the same model every time), in eval mode as a deployment loads it."""
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                model = builder(**kwargs)
            return model.eval()
        except Exception as exc:
            raise TargetError(f"torchvision:{name} with {', '.join(f'{k}={v!r}' for k, v in kwargs.items())} failed: "
                              f"{one_line(exc)}") from exc

    model = build()
    return Target(model=model, name=name, source=spec, factory=build)



def load_target_for(spec: str, options: Any) -> Target:
    """`load_target` with a run's options, under the run's seed (restoring the global RNG after).

    A factory that does not seed itself still builds the same weights in the CLI, the pytest
    plugin and an --isolate child, so golden recordings made by one face match the others.
    """
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(options.seed)
        return load_target(spec, trust_pickle=options.trust_pickle, input_shape=options.input_shape, input_dtype=options.input_dtype)
