"""Targets users already have: `timm:NAME[?k=v&...]` and `hf:FOLDER_OR_ID` (transformers).

Nothing is downloaded: pretrained timm weights and Hugging Face ids must already be in the local
cache (the hub is switched to offline mode while loading), so a run never stalls on the network.
Random weights are seeded, so a rebuilt model (`Target.factory`) has the same weights again.
"""
from __future__ import annotations

import contextlib
import os
from typing import Any, Callable, Iterator

from ..errors import TargetError
from ..text import one_line
from .base import Target

#: Batch and sequence length of the example inputs made from a transformers config.
BATCH, SEQ, DECODER_SEQ = 2, 16, 8
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def require(package: str, spec: str) -> Any:
    """Import an optional dependency, or say in one line how to install it."""
    import importlib

    try:
        return importlib.import_module(package)
    except ImportError as exc:
        raise TargetError(f"{spec} needs the {package} package: pip install {package}") from exc


def parse_value(text: str) -> Any:
    """'2' -> 2, '0.5' -> 0.5, 'true'/'false' -> bool, 'none' -> None, else the string."""
    lowered = text.strip().lower()
    if lowered in ("true", "yes", "on"):
        return True
    if lowered in ("false", "no", "off"):
        return False
    if lowered in ("none", "null"):
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_query(query: str, spec: str) -> dict[str, Any]:
    """`a=1&b=x` -> {'a': 1, 'b': 'x'}; an item without '=' is a usage error."""
    params: dict[str, Any] = {}
    for item in filter(None, query.split("&")):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise TargetError(f"{spec}: cannot read parameter {item!r}; write ?key=value&key2=value2")
        params[key.strip()] = parse_value(value)
    return params


@contextlib.contextmanager
def hub_offline() -> Iterator[None]:
    """Keep huggingface_hub from reaching the network (it would retry for about a minute offline)."""
    try:
        import huggingface_hub.constants as constants
    except ImportError:
        yield
        return
    saved_env, saved_flag = os.environ.get("HF_HUB_OFFLINE"), constants.HF_HUB_OFFLINE
    os.environ["HF_HUB_OFFLINE"], constants.HF_HUB_OFFLINE = "1", True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved_flag
        if saved_env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = saved_env


@contextlib.contextmanager
def quiet_loading(transformers: Any) -> Iterator[None]:
    """No "Loading weights" progress bar and no torch deprecation lines about optional packages
    transformers imports on the way (torchao's pytree registrations) between the run's own lines."""
    import logging as std_logging

    hf_logging = getattr(getattr(transformers, "utils", None), "logging", None)
    bar = bool(hf_logging and hf_logging.is_progress_bar_enabled())
    pytree = std_logging.getLogger("torch.utils._pytree")
    level = pytree.level
    if bar:
        hf_logging.disable_progress_bar()
    pytree.setLevel(std_logging.ERROR)
    try:
        yield
    finally:
        pytree.setLevel(level)
        if bar:
            hf_logging.enable_progress_bar()


def seeded(build: Callable[[], Any]) -> Any:
    """Call `build` under seed 0 without touching the caller's global RNG."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return build()


# --- timm ---------------------------------------------------------------------------------------


def from_timm(spec: str) -> Target:
    """`timm:NAME[?pretrained=true&KEY=VALUE...]`: timm.create_model in eval mode, inputs at its size."""
    timm = require("timm", spec)
    name, _, query = spec[len("timm:"):].partition("?")
    kwargs = parse_query(query, spec)
    pretrained = bool(kwargs.pop("pretrained", False))
    if not timm.is_model(name):
        raise TargetError(f"timm has no model {name!r}" + _did_you_mean(name, timm.list_models()))

    def build() -> Any:
        try:
            with hub_offline():
                return seeded(lambda: timm.create_model(name, pretrained=pretrained, **kwargs)).eval()
        except Exception as exc:
            if pretrained:
                raise TargetError(f"{spec}: cannot load the pretrained weights from the local cache (nothing is "
                                  f"downloaded; drop ?pretrained=true for random weights): {one_line(exc)}") from exc
            raise TargetError(f"timm.create_model({name!r}, {_kwargs_text(kwargs)}) failed: {one_line(exc)}") from exc

    model = build()
    inputs = seeded(lambda: _timm_inputs(timm, model, kwargs))
    return Target(model=model, example_inputs=inputs, name=name, source=spec, factory=build)


def _timm_inputs(timm: Any, model: Any, kwargs: dict[str, Any]) -> Any:
    """A batch of 2 at the model's input size: an img_size given or built in wins over the pretrained cfg."""
    import torch

    channels, height, width = timm.data.resolve_model_data_config(model)["input_size"]
    size = kwargs.get("img_size", getattr(getattr(model, "patch_embed", None), "img_size", None))
    if isinstance(size, int):
        height = width = size
    elif isinstance(size, (tuple, list)) and len(size) == 2:
        height, width = size
    channels = kwargs.get("in_chans", channels)
    return torch.randn(BATCH, int(channels), int(height), int(width))


def _did_you_mean(name: str, available: list[str]) -> str:
    import difflib

    close = difflib.get_close_matches(name.lower(), available, n=5, cutoff=0.6)
    return f"; did you mean {', '.join(close)}?" if close else "; see timm.list_models()"


def _kwargs_text(kwargs: dict[str, Any]) -> str:
    return ", ".join(["pretrained=False"] + [f"{k}={v!r}" for k, v in kwargs.items()])


# --- transformers -------------------------------------------------------------------------------


def from_hf(spec: str) -> Target:
    """`hf:FOLDER_OR_ID`: a transformers model from a save_pretrained folder or the local hub cache."""
    transformers = require("transformers", spec)
    where = spec[len("hf:"):].strip()
    folder = _local_folder(where, spec)
    with quiet_loading(transformers):
        config = _load_config(transformers, folder, spec)
        model_class, arch = _model_class(transformers, config)
    notes = []
    if getattr(config, "use_cache", False):
        config.use_cache = False  # cache objects in outputs cannot be compared or exported (FIELD-NOTES)
        notes.append("hf: use_cache=False (key/value cache objects left out of the outputs)")
    has_weights = any(os.path.isfile(os.path.join(folder, f)) for f in WEIGHT_FILES)

    def build() -> Any:
        import torch

        try:
            with quiet_loading(transformers):
                if has_weights:
                    model = model_class.from_pretrained(folder, config=config, local_files_only=True, dtype=torch.float32)
                else:
                    model = seeded(lambda: model_class.from_config(config) if arch is None else model_class(config))
        except Exception as exc:
            raise TargetError(f"{spec}: building {arch or 'AutoModel'} failed: {one_line(exc)}") from exc
        return model.eval()

    model = build()
    inputs, dynamic = seeded(lambda: hf_inputs(config, spec))
    target = Target(model=model, example_inputs=inputs, dynamic_dims=dynamic, name=arch or type(model).__name__,
                    source=spec, factory=build)
    target.setup_notes.extend(notes + ([] if has_weights else ["hf: no weights in the folder; seeded random weights from config.json"]))
    return target


def _local_folder(where: str, spec: str) -> str:
    """The folder holding config.json: the path given, or the snapshot of a cached hub id."""
    if os.path.isdir(where):
        if not os.path.isfile(os.path.join(where, "config.json")):
            raise TargetError(f"{spec}: folder {where!r} has no config.json; give the folder save_pretrained wrote")
        return where
    looks_like_path = where.startswith((".", "/", "~", "\\")) or where.count("/") > 1 or "\\" in where
    if looks_like_path or not where:  # a hub id is NAME or ORG/NAME
        raise TargetError(f"{spec}: folder {where!r} does not exist")
    try:
        from huggingface_hub import snapshot_download

        with hub_offline():
            return snapshot_download(where, local_files_only=True)
    except Exception as exc:
        raise TargetError(f"{spec}: {where!r} is neither a folder nor a model in the local Hugging Face cache "
                          f"(nothing is downloaded): give the folder save_pretrained wrote") from exc


def _load_config(transformers: Any, folder: str, spec: str) -> Any:
    try:
        with hub_offline():
            return transformers.AutoConfig.from_pretrained(folder, local_files_only=True)
    except Exception as exc:
        raise TargetError(f"{spec}: cannot read {os.path.join(folder, 'config.json')}: {one_line(exc)}") from exc


def _model_class(transformers: Any, config: Any) -> tuple[Any, str | None]:
    """The class config.architectures[0] names when transformers has it, else AutoModel (arch None)."""
    for arch in getattr(config, "architectures", None) or ():
        cls = getattr(transformers, arch, None)
        if cls is not None:
            return cls, arch
    return transformers.AutoModel, None


def hf_inputs(config: Any, spec: str) -> tuple[dict[str, Any], dict[str, dict[int, str]]]:
    """Keyword example inputs made from the config (vision, speech or text) and their dynamic dims."""
    import torch

    if getattr(config, "num_mel_bins", None):
        frames = 2 * int(getattr(config, "max_source_positions", 1500))  # Whisper wants exactly 2x positions
        inputs = {"input_features": torch.randn(BATCH, int(config.num_mel_bins), frames)}
        dynamic = {"input_features": {0: "batch"}}
    elif getattr(config, "num_channels", None) and getattr(config, "image_size", None):
        size = config.image_size
        height, width = (size, size) if isinstance(size, int) else tuple(size)[:2]
        inputs = {"pixel_values": torch.randn(BATCH, int(config.num_channels), int(height), int(width))}
        dynamic = {"pixel_values": {0: "batch"}}
    elif getattr(config, "vocab_size", None):
        seq = min(SEQ, int(getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None) or SEQ))
        inputs = {"input_ids": torch.randint(0, int(config.vocab_size), (BATCH, seq)),
                  "attention_mask": torch.ones(BATCH, seq, dtype=torch.long)}
        dynamic = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}}
    else:
        raise TargetError(f"{spec}: cannot make example inputs from this config (no vocab_size, image_size or "
                          f"num_mel_bins); write a factory that returns (model, example_inputs)")
    if getattr(config, "is_encoder_decoder", False):
        vocab = int(getattr(config, "vocab_size", None) or 2)
        inputs["decoder_input_ids"] = torch.randint(0, vocab, (BATCH, DECODER_SEQ))
        dynamic["decoder_input_ids"] = {0: "batch", 1: "decoder_seq"}
    return inputs, dynamic
