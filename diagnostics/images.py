"""Images for preprocessing checks: generated photo-like samples, sample loading, pipeline runners,
pipeline introspection and re-implementations of the common resize paths (torchvision tensor,
PIL, OpenCV) used as "variants" of a reference pipeline.

Nothing here judges anything; `diagnostics/skew.py` does the diagnosis. Pillow is required;
OpenCV is optional (`opencv()` returns None when it is missing).
"""
from __future__ import annotations

import functools
import inspect
import io
import os
import random
import tempfile
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch

# ---------------------------------------------------------------------------------------------
# Generated photo-like images

#: (height, width) of the generated images: landscape, portrait, square, small and large.
GENERATED_SIZES: tuple[tuple[int, int], ...] = (
    (480, 640), (640, 480), (512, 512), (533, 800), (240, 320), (450, 300), (360, 640), (300, 300),
    (600, 400), (256, 384), (720, 540), (200, 200),
)


def generated_images(n: int = 8, seed: int = 0) -> list[Any]:
    """`n` reproducible photo-like RGB PIL images (see `_generated`); a fresh list each call."""
    return [img.copy() for img in _generated(n, seed)]


@functools.lru_cache(maxsize=4)
def _generated(n: int, seed: int) -> tuple[Any, ...]:
    """`n` reproducible RGB PIL images that behave like photos for preprocessing purposes.

    Each has a smooth two-colour gradient with low-frequency "lighting", hard-edged shapes
    (aliasing shows on their edges), a fine texture patch (antialiasing shows there), and a black
    and a white patch near the centre so every channel spans the full 0..255 range even after a
    centre crop (needed to tell scaling and normalisation apart). Colours are drawn with
    ImageNet-like channel statistics (red brightest, blue darkest on average), so the channels
    are distinguishable and a channel swap is visible.
    """
    rng = np.random.default_rng(seed)
    return tuple(_photo_like(GENERATED_SIZES[i % len(GENERATED_SIZES)], rng) for i in range(n))


def _texture(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """Photo-like multi-scale texture: coarse lighting, mid-scale mottling, fine grain (HWC)."""
    out = torch.zeros(1, 3, h, w)
    for cells, amp in ((6, 0.12), (40, 0.05), (160, 0.04)):
        gh, gw = max(int(cells * h / max(h, w)), 2), max(int(cells * w / max(h, w)), 2)
        grid = torch.from_numpy(rng.uniform(-amp, amp, size=(1, 3, gh, gw)).astype(np.float32))
        out += torch.nn.functional.interpolate(grid, size=(h, w), mode="bilinear", align_corners=False)
    out += torch.from_numpy(rng.uniform(-0.03, 0.03, size=(1, 3, h, w)).astype(np.float32))
    return out[0].permute(1, 2, 0).numpy()


def _colour(rng: np.random.Generator) -> np.ndarray:
    # Mean (0.53, 0.46, 0.38): warm like ImageNet's (0.485, 0.456, 0.406), independent per channel.
    return np.array([rng.uniform(0.1, 0.95), rng.uniform(0.05, 0.88), rng.uniform(0.0, 0.75)])


def _photo_like(size: tuple[int, int], rng: np.random.Generator) -> Any:
    from PIL import Image, ImageDraw

    h, w = size
    yy = np.linspace(0, 1, h, dtype=np.float32)[:, None]
    xx = np.linspace(0, 1, w, dtype=np.float32)[None, :]
    angle = rng.uniform(0, 2 * np.pi)
    t = np.cos(angle) * xx + np.sin(angle) * yy
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-9)
    c0, c1 = _colour(rng).astype(np.float32), _colour(rng).astype(np.float32)
    img = c0[None, None, :] * (1 - t[..., None]) + c1[None, None, :] * t[..., None]
    img = img + _texture(h, w, rng)
    pil = Image.fromarray((np.clip(img, 0, 1) * 255).round().astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(pil)
    for _ in range(int(rng.integers(4, 8))):
        x0, y0 = rng.uniform(0, w * 0.8), rng.uniform(0, h * 0.8)
        x1, y1 = x0 + rng.uniform(w * 0.08, w * 0.4), y0 + rng.uniform(h * 0.08, h * 0.4)
        fill = tuple(int(v * 255) for v in _colour(rng))
        kind = rng.integers(0, 3)
        if kind == 0:
            draw.ellipse([x0, y0, x1, y1], fill=fill)
        elif kind == 1:
            draw.rectangle([x0, y0, x1, y1], fill=fill)
        else:
            pts = [(rng.uniform(x0, x1), rng.uniform(y0, y1)) for _ in range(5)]
            draw.polygon(pts, fill=fill)
    arr = np.asarray(pil).copy()
    # Fine texture: a noisy stripe patch (high frequencies, where resampling paths differ most).
    ph, pw = max(h // 5, 8), max(w // 4, 8)
    py, px = int(rng.integers(0, h - ph)), int(rng.integers(0, w - pw))
    stripes = (np.sin(np.arange(pw)[None, :] * rng.uniform(0.9, 2.4)) > 0).astype(np.float64)
    noise = rng.uniform(0, 1, size=(ph, pw, 3))
    patch = 0.6 * stripes[..., None] + 0.4 * noise
    arr[py:py + ph, px:px + pw] = (np.clip(patch * _colour(rng) * 1.3, 0, 1) * 255).astype(np.uint8)
    # Black and white patches inside the central 40%, so centre crops keep the full range.
    s = max(min(h, w) // 12, 3)
    cy, cx = h // 2, w // 2
    arr[cy - s:cy, cx - 2 * s:cx - s] = 0
    arr[cy:cy + s, cx + s:cx + 2 * s] = 255
    return Image.fromarray(arr, "RGB")


# ---------------------------------------------------------------------------------------------
# Sample loading


def is_path(sample: Any) -> bool:
    return isinstance(sample, (str, os.PathLike))


def load_image(sample: Any) -> Any:
    """A raw sample (path, PIL image, HWC/CHW array or tensor) as an RGB PIL image.

    Arrays are taken as RGB (uint8 0..255, or float 0..1); a CHW array or tensor is transposed.
    """
    from PIL import Image

    if isinstance(sample, Image.Image):
        return sample.convert("RGB") if sample.mode != "RGB" else sample
    if is_path(sample):
        with Image.open(sample) as img:
            return img.convert("RGB")
    if isinstance(sample, torch.Tensor):
        sample = sample.detach().cpu().numpy()
    if isinstance(sample, np.ndarray):
        arr = sample
        if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 3, 4):
            arr = arr.transpose(1, 2, 0)
        if arr.dtype != np.uint8:
            scale = 255.0 if float(arr.max(initial=0)) <= 1.0 else 1.0
            arr = np.clip(arr.astype(np.float64) * scale, 0, 255).round().astype(np.uint8)
        if arr.ndim == 3 and arr.shape[-1] == 1:
            arr = arr[..., 0]
        img = Image.fromarray(arr)
        return img.convert("RGB") if img.mode != "RGB" else img
    raise TypeError(f"cannot read a sample of type {type(sample).__name__} as an image: give PIL images, arrays or file paths")


def to_uint8_chw(img: Any) -> torch.Tensor:
    """An RGB PIL image (or a `Picture`) as a uint8 CHW tensor."""
    if isinstance(img, Picture):
        return img.chw
    return torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()


class Picture:
    """One decoded RGB image with its uint8 CHW tensor cached (variants resample it many times)."""

    def __init__(self, pil: Any) -> None:
        self.pil = pil.convert("RGB") if pil.mode != "RGB" else pil
        self.chw = to_uint8_chw(self.pil)
        self.resampled: dict[Any, torch.Tensor] = {}  # ResizeVariant -> its output, computed once

    def resample(self, variant: "ResizeVariant") -> torch.Tensor:
        if variant not in self.resampled:
            self.resampled[variant] = variant.apply_chw(self.chw).double()
        return self.resampled[variant]

    @property
    def size_hw(self) -> tuple[int, int]:
        return int(self.chw.shape[-2]), int(self.chw.shape[-1])


# ---------------------------------------------------------------------------------------------
# Running pipelines


@dataclass
class PipelineRun:
    """What one pipeline produced on every sample (outputs in sample order) and how it was fed."""

    outputs: list[Any]
    form: str  # "raw", "pil", "array" or "path": what the pipeline accepted
    error: str | None = None


class TempFiles:
    """PNG copies of in-memory samples, for pipelines that only accept paths."""

    def __init__(self) -> None:
        self.dir: tempfile.TemporaryDirectory[str] | None = None
        self.paths: dict[int, str] = {}

    def path(self, index: int, img: Any) -> str:
        if self.dir is None:
            self.dir = tempfile.TemporaryDirectory(prefix="torch-diagnose-samples-")
        if index not in self.paths:
            p = os.path.join(self.dir.name, f"sample_{index}.png")
            img.save(p)
            self.paths[index] = p
        return self.paths[index]

    def close(self) -> None:
        if self.dir is not None:
            self.dir.cleanup()


def sample_forms(sample: Any, index: int, images: Sequence[Any], temp: TempFiles) -> list[tuple[str, Callable[[], Any]]]:
    forms: list[tuple[str, Callable[[], Any]]] = [("raw", lambda: sample)]
    from PIL import Image

    if not isinstance(sample, Image.Image):
        forms.append(("pil", lambda: images[index]))
    if not isinstance(sample, np.ndarray):
        forms.append(("array", lambda: np.asarray(images[index]).copy()))
    if not is_path(sample):
        forms.append(("path", lambda: temp.path(index, images[index])))
    return forms


def run_pipeline(fn: Callable[[Any], Any], samples: Sequence[Any], images: Sequence[Any], temp: TempFiles | None = None) -> PipelineRun:
    """Apply `fn` to every sample; find once which form it accepts (raw, PIL, HWC array, path).

    The first form that works on sample 0 is used for all samples, so both pipelines see the
    same content. An exception on a later sample is reported with the sample index.
    """
    temp = temp or TempFiles()
    errors: list[str] = []
    chosen: str | None = None
    first: Any = None
    for name, make in sample_forms(samples[0], 0, images, temp):
        try:
            first = fn(make())
            chosen = name
            break
        except Exception as exc:  # try the next form
            errors.append(f"{name}: {type(exc).__name__}: {exc}")
    if chosen is None:
        return PipelineRun([], "none", "the pipeline raised on every input form (" + "; ".join(errors) + ")")
    outputs = [first]
    for i in range(1, len(samples)):
        make = dict(sample_forms(samples[i], i, images, temp))[chosen]
        try:
            outputs.append(fn(make()))
        except Exception as exc:
            return PipelineRun(outputs, chosen, f"the pipeline raised on sample {i}: {type(exc).__name__}: {exc}")
    return PipelineRun(outputs, chosen)


@dataclass
class Repeatability:
    """Whether a pipeline gives the same tensor twice for the same sample, and which step does not."""

    repeatable: bool
    max_diff: float = 0.0
    step: int | None = None


def outputs_equal(a: Any, b: Any) -> tuple[bool, float]:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        if a.shape != b.shape:
            return False, float("inf")
        ad, bd = a.detach().double(), b.detach().double()
        both_nan = torch.isnan(ad) & torch.isnan(bd)
        d = torch.where(both_nan, torch.zeros_like(ad), (ad - bd).abs())
        d = torch.where(torch.isinf(ad) & (ad == bd), torch.zeros_like(d), d)
        m = float(d.max()) if d.numel() else 0.0
        return m == 0.0, m
    from .tree import flatten

    fa, fb = flatten(a), flatten(b)
    if fa.keys() != fb.keys():
        return False, float("inf")
    worst = 0.0
    ok = True
    for k in fa:
        if isinstance(fa[k], torch.Tensor):
            e, m = outputs_equal(fa[k], fb[k])
            ok, worst = ok and e, max(worst, m)
        elif isinstance(fa[k], np.ndarray):
            e, m = outputs_equal(torch.as_tensor(fa[k]), torch.as_tensor(fb[k]))
            ok, worst = ok and e, max(worst, m)
        else:
            ok = ok and repr(fa[k]) == repr(fb[k])
    return ok, worst


def repeatability(fn: Callable[[Any], Any], make_input: Callable[[], Any]) -> Repeatability:
    """Call the pipeline twice on the same input (under different RNG draws); name the random step."""
    with _saved_rng():
        torch.manual_seed(1)
        random.seed(1)
        a = fn(make_input())
        torch.manual_seed(2)
        random.seed(2)
        b = fn(make_input())
        same, diff = outputs_equal(a, b)
        if same:
            return Repeatability(True, 0.0)
        step = None
        steps = pipeline_steps(fn)
        if len(steps) > 1:
            x = make_input()
            for st in steps:
                torch.manual_seed(1)
                random.seed(1)
                y1 = st.obj(x)
                torch.manual_seed(2)
                random.seed(2)
                y2 = st.obj(x)
                if not _same_any(y1, y2):
                    step = st.index
                    break
                x = y1
    return Repeatability(False, diff, step)


def _same_any(a: Any, b: Any) -> bool:
    from PIL import Image

    if isinstance(a, Image.Image) and isinstance(b, Image.Image):
        return a.size == b.size and np.array_equal(np.asarray(a), np.asarray(b))
    if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
        return a.shape == b.shape and np.array_equal(a, b)
    return outputs_equal(a, b)[0]


class _saved_rng:
    """Leave the caller's RNG state (torch CPU, Python) as it was."""

    def __enter__(self) -> None:
        self.torch_state = torch.random.get_rng_state()
        self.py_state = random.getstate()
        self.np_state = np.random.get_state()

    def __exit__(self, *exc: Any) -> None:
        torch.random.set_rng_state(self.torch_state)
        random.setstate(self.py_state)
        np.random.set_state(self.np_state)


@dataclass
class BatchConsistency:
    """Per-sample vs batched application of a tensor pipeline."""

    applicable: bool
    consistent: bool = True
    max_diff: float = 0.0
    step: int | None = None
    note: str = ""


def batch_consistency(fn: Callable[[Any], Any], images: Sequence[Any], size: int = 96) -> BatchConsistency:
    """Apply `fn` to N same-size uint8 CHW tensors one by one and as one NCHW batch; compare.

    Only for pipelines that accept tensors (torchvision v2 transforms and tensor code do). A
    difference means a step uses statistics of the whole batch (e.g. `x / x.max()` or a batch
    mean), so a batched server feeds the model something else than a per-request one.
    """
    import torchvision.transforms.v2.functional as F

    batch = torch.stack([F.center_crop(F.resize(to_uint8_chw(img), [size], antialias=True), [size, size]) for img in images[:4]])
    if len(batch) < 2:
        return BatchConsistency(False, note="fewer than two samples")
    with _saved_rng():
        try:
            singles = [fn(t) for t in batch]
            together = fn(batch)
        except Exception as exc:
            return BatchConsistency(False, note=f"does not take tensors or batches ({type(exc).__name__})")
    if not all(isinstance(s, torch.Tensor) for s in singles) or not isinstance(together, torch.Tensor):
        return BatchConsistency(False, note="does not return tensors")
    singles = [s[0] if s.dim() == together.dim() and s.shape[0] == 1 else s for s in singles]  # (1, C, H, W) per sample
    if any(s.shape != singles[0].shape for s in singles) or tuple(together.shape) != (len(singles), *singles[0].shape):
        return BatchConsistency(False, note=f"a batch of {len(batch)} gave shape {tuple(together.shape)}, not a stack of per-sample outputs")
    stacked = torch.stack(singles)
    a, b = stacked.double(), together.double()
    d = torch.where(torch.isnan(a) & torch.isnan(b), torch.zeros_like(a), (a - b).abs())
    d = torch.where(torch.isinf(a) & (a == b), torch.zeros_like(d), d)
    scale = float(torch.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0).abs().max()) or 1.0
    diff = float(d.max())
    if diff <= 1e-5 * scale:
        return BatchConsistency(True, True, diff)
    step = None
    steps = pipeline_steps(fn)
    if len(steps) > 1:
        xs, xb = list(batch), batch
        for st in steps:
            try:
                xs = [st.obj(x) for x in xs]
                xb = st.obj(xb)
            except Exception:
                break
            if isinstance(xb, torch.Tensor) and all(isinstance(x, torch.Tensor) for x in xs):
                s = torch.stack(xs)
                if s.shape == xb.shape and float((s.double() - xb.double()).abs().max()) > 1e-5 * (float(s.double().abs().max()) or 1.0):
                    step = st.index
                    break
    return BatchConsistency(True, False, diff, step)


# ---------------------------------------------------------------------------------------------
# Pipeline introspection


@dataclass
class Step:
    """One step of a pipeline: its index, class name, short description and source location."""

    index: int
    name: str
    obj: Any
    text: str
    location: str | None = None


def pipeline_steps(fn: Any) -> list[Step]:
    """The steps of a torchvision Compose (v1 or v2) or nn.Sequential; a single step otherwise."""
    items: list[Any]
    transforms = getattr(fn, "transforms", None)
    if isinstance(transforms, (list, tuple)) and transforms:
        items = list(transforms)
    elif isinstance(fn, torch.nn.Sequential):
        items = list(fn)
    else:
        items = [fn]
    return [Step(i, step_name(obj), obj, step_text(obj), source_location(obj)) for i, obj in enumerate(items)]


def step_name(obj: Any) -> str:
    if inspect.isfunction(obj) or inspect.ismethod(obj):
        return obj.__name__
    return type(obj).__name__


def step_text(obj: Any) -> str:
    """A short, readable description of one step (Normalize(mean=[...], std=[...]), a function name ...)."""
    if inspect.isfunction(obj) or inspect.ismethod(obj):
        return f"{obj.__name__}()" if obj.__name__ != "<lambda>" else "lambda"
    name = type(obj).__name__
    if name == "Lambda" and hasattr(obj, "lambd"):
        return f"Lambda({step_text(obj.lambd)})"
    if name == "Normalize":
        mean = [round(float(v), 4) for v in getattr(obj, "mean", [])]
        std = [round(float(v), 4) for v in getattr(obj, "std", [])]
        return f"Normalize(mean={mean}, std={std})"
    if name == "Resize":
        interp = getattr(obj, "interpolation", None)
        interp = getattr(interp, "value", interp)
        return f"Resize(size={getattr(obj, 'size', '?')}, interpolation={interp}, antialias={getattr(obj, 'antialias', None)})"
    text = repr(obj).replace("\n", " ")
    return " ".join(text.split())[:120]


def source_location(obj: Any) -> str | None:
    """file:line of a user-written step (function, lambda, Lambda, own class); None for library code."""
    target = obj
    if type(obj).__name__ == "Lambda" and hasattr(obj, "lambd"):
        target = obj.lambd
    if not (inspect.isfunction(target) or inspect.ismethod(target)):
        target = type(target)
        call = getattr(target, "__call__", None) if not hasattr(target, "forward") or target.forward is torch.nn.Module.forward else target.forward
        if call is not None and (inspect.isfunction(call) or inspect.ismethod(call)):
            target = call
    try:
        file = inspect.getsourcefile(target)
        line = inspect.getsourcelines(target)[1]
    except (OSError, TypeError):
        return None
    if not file or _is_library(file):
        return None
    try:
        rel = os.path.relpath(file)
        file = rel if not rel.startswith("..") else file
    except ValueError:
        pass
    return f"{file}:{line}"


def _is_library(file: str) -> bool:
    norm = file.replace("\\", "/")
    return any(part in norm for part in ("/site-packages/", "/dist-packages/", "/lib/python3", "/torchvision/", "/torch/"))


def find_steps(steps: Sequence[Step], *names: str) -> list[Step]:
    return [s for s in steps if s.name in names]


def source_mentions(fn: Any, word: str) -> bool:
    """True when the pipeline's (or one of its steps') source text contains `word` (e.g. "cv2")."""
    for st in pipeline_steps(fn):
        target = st.obj.lambd if st.name == "Lambda" and hasattr(st.obj, "lambd") else st.obj
        try:
            src = inspect.getsource(target if inspect.isfunction(target) or inspect.ismethod(target) else type(target))
        except (OSError, TypeError):
            continue
        if word in src:
            return True
    return False


@dataclass
class DeclaredGeometry:
    """Resize/crop parameters read from a Compose, when present."""

    resize: int | tuple[int, int] | None = None
    crop: tuple[int, int] | None = None
    crop_first: bool = False
    interpolation: str | None = None
    antialias: bool | None = None
    on_pil: bool | None = None


def declared_geometry(fn: Any) -> DeclaredGeometry | None:
    """Read Resize/CenterCrop (and whether they run before the to-tensor step) from a Compose."""
    steps = pipeline_steps(fn)
    if len(steps) < 2:
        return None
    geo = DeclaredGeometry()
    to_tensor_at = next((s.index for s in steps if s.name in ("ToTensor", "PILToTensor", "ToImage", "ToImageTensor")), None)
    resize = next((s for s in steps if s.name == "Resize"), None)
    crop = next((s for s in steps if s.name == "CenterCrop"), None)
    if resize is None and crop is None:
        return None
    if resize is not None:
        size = getattr(resize.obj, "size", None)
        if isinstance(size, (list, tuple)):
            size = int(size[0]) if len(size) == 1 else (int(size[0]), int(size[1]))
        geo.resize = size
        interp = getattr(resize.obj, "interpolation", None)
        geo.interpolation = str(getattr(interp, "value", interp)) if interp is not None else None
        geo.antialias = getattr(resize.obj, "antialias", None)
        geo.on_pil = to_tensor_at is not None and resize.index < to_tensor_at
    if crop is not None:
        size = getattr(crop.obj, "size", None)
        if isinstance(size, int):
            size = (size, size)
        if isinstance(size, (list, tuple)):
            geo.crop = (int(size[0]), int(size[-1]))
        geo.crop_first = resize is not None and crop.index < resize.index
    return geo


# ---------------------------------------------------------------------------------------------
# Resize variants: the common resampling paths, re-implemented


def opencv() -> Any | None:
    """The cv2 module when opencv(-python-headless) is installed, else None."""
    try:
        import cv2  # noqa: PLC0415

        return cv2
    except Exception:
        return None


@dataclass(frozen=True)
class Geometry:
    """Resize to `resize` (int: shorter side, torchvision semantics; pair: exact H, W), then centre-crop
    to `crop`. With `crop_first`, centre-crop the original first, resize, then crop again to `crop`
    (the second crop is a no-op when the resize already gives that size)."""

    resize: int | tuple[int, int] | None
    crop: tuple[int, int] | None = None
    crop_first: bool = False

    def describe(self) -> str:
        r = f"Resize({self.resize})" if self.resize is not None else ""
        c = f"CenterCrop({self.crop[0]}x{self.crop[1]})" if self.crop else ""
        parts = [c, r, c] if self.crop_first else [r, c]
        return " -> ".join(p for p in parts if p) or "no resize"


@dataclass(frozen=True)
class ResizeVariant:
    """One way of resampling: library backend, interpolation, antialiasing, and the geometry."""

    backend: str  # "tensor" (torchvision on uint8 tensors), "pil", "cv2"
    interpolation: str  # nearest, nearest-exact, bilinear, bicubic, area, lanczos
    antialias: bool
    geometry: Geometry

    @property
    def label(self) -> str:
        aa = ""
        if self.backend == "tensor" and self.interpolation in ("bilinear", "bicubic"):
            aa = ", antialias" if self.antialias else ", no antialias"
        names = {"tensor": "torchvision tensor", "pil": "PIL", "cv2": "OpenCV"}
        return f"{names[self.backend]} {self.interpolation}{aa}, {self.geometry.describe()}"

    def apply(self, img: Any) -> torch.Tensor:
        """The resampled image as float CHW in [0, 1] (uint8-rounded, as the real paths are)."""
        return self.apply_chw(to_uint8_chw(img))

    def apply_chw(self, t: torch.Tensor) -> torch.Tensor:
        """Resample a uint8 CHW tensor; float CHW in [0, 1]."""
        import torchvision.transforms.v2.functional as F

        g = self.geometry
        if g.crop is not None and g.crop_first:
            t = F.center_crop(t, list(g.crop))
        if g.resize is not None:
            t = self._resize(t, resized_size(t.shape[-2], t.shape[-1], g.resize))
        if g.crop is not None and tuple(t.shape[-2:]) != tuple(g.crop):
            t = F.center_crop(t, list(g.crop))
        return t.float() / 255.0

    def _resize(self, t: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        if tuple(t.shape[-2:]) == size:
            return t
        if self.backend == "tensor":
            import torchvision.transforms.v2.functional as F
            from torchvision.transforms import InterpolationMode

            mode = InterpolationMode(self.interpolation)
            return F.resize(t, list(size), interpolation=mode, antialias=self.antialias)
        arr = np.ascontiguousarray(t.permute(1, 2, 0).numpy())
        if self.backend == "pil":
            from PIL import Image

            resample = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC,
                        "lanczos": Image.LANCZOS, "box": Image.BOX}[self.interpolation]
            out = np.asarray(Image.fromarray(arr).resize((size[1], size[0]), resample))
        else:
            cv2 = opencv()
            flag = {"nearest": cv2.INTER_NEAREST, "bilinear": cv2.INTER_LINEAR, "bicubic": cv2.INTER_CUBIC,
                    "area": cv2.INTER_AREA}[self.interpolation]
            out = cv2.resize(arr, (size[1], size[0]), interpolation=flag)
        return torch.from_numpy(np.array(out, copy=True)).permute(2, 0, 1)


def resized_size(h: int, w: int, size: int | tuple[int, int]) -> tuple[int, int]:
    """Output size of torchvision's Resize(size) on an h x w image (int: shorter side, long side truncated)."""
    if isinstance(size, (tuple, list)):
        return int(size[0]), int(size[1])
    short, long = (h, w) if h <= w else (w, h)
    new_short, new_long = int(size), int(int(size) * long / short)
    return (new_short, new_long) if h <= w else (new_long, new_short)


#: (backend, interpolation, antialias) of every resampling path tried.
RESAMPLERS: tuple[tuple[str, str, bool], ...] = (
    ("tensor", "bilinear", True), ("tensor", "bilinear", False), ("tensor", "bicubic", True),
    ("tensor", "bicubic", False), ("tensor", "nearest", False), ("tensor", "nearest-exact", False),
    ("pil", "bilinear", True), ("pil", "bicubic", True), ("pil", "nearest", False), ("pil", "lanczos", True),
)
CV2_RESAMPLERS: tuple[tuple[str, str, bool], ...] = (
    ("cv2", "bilinear", False), ("cv2", "area", True), ("cv2", "bicubic", False), ("cv2", "nearest", False),
)


def resamplers(use_cv2: bool = True) -> list[tuple[str, str, bool]]:
    return list(RESAMPLERS) + (list(CV2_RESAMPLERS) if use_cv2 and opencv() is not None else [])


def candidate_geometries(out_shapes: Sequence[tuple[int, int]], image_sizes: Sequence[tuple[int, int]],
                         declared: DeclaredGeometry | None = None) -> list[Geometry]:
    """Geometries that give exactly `out_shapes` (H, W per sample) from images of `image_sizes`.

    Tried: the declared one (read from a Compose), resize-shorter-side-then-centre-crop with the
    usual ratios (crop/0.875 = 256/224, 1.0, 1.143, 1.25, 1.5), crop-then-resize, resize only,
    and squash to the exact size.
    """
    cands: list[Geometry] = []
    if declared is not None and (declared.resize is not None or declared.crop is not None):
        cands.append(Geometry(declared.resize, declared.crop, declared.crop_first))
        if declared.crop is not None and declared.resize is not None:
            cands.append(Geometry(declared.resize, declared.crop, not declared.crop_first))
    h, w = out_shapes[0]
    short = min(h, w)
    for ratio in (256 / 224, 1.0, 1.143, 1.25, 1.5, 1 / 0.9, 1 / 0.95):
        cands.append(Geometry(int(round(short * ratio)), (h, w)))
        cands.append(Geometry(int(short * ratio), (h, w)))
    cands += [Geometry(short, None), Geometry((h, w), None), Geometry(short, (h, w), crop_first=True),
              Geometry(None, (h, w))]
    seen: list[Geometry] = []
    for g in cands:
        if g not in seen and geometry_fits(g, out_shapes, image_sizes):
            seen.append(g)
    return seen


def geometry_fits(g: Geometry, out_shapes: Sequence[tuple[int, int]], image_sizes: Sequence[tuple[int, int]]) -> bool:
    for (oh, ow), (ih, iw) in zip(out_shapes, image_sizes):
        if predicted_shape(g, ih, iw) != (oh, ow):
            return False
    return True


def predicted_shape(g: Geometry, h: int, w: int) -> tuple[int, int]:
    if g.crop_first and g.crop is not None:
        h, w = g.crop
    if g.resize is not None:
        h, w = resized_size(h, w, g.resize)
    if g.crop is not None:
        h, w = g.crop
    return h, w


# ---------------------------------------------------------------------------------------------
# Decoding


def decode_difference(samples: Sequence[Any], images: Sequence[Any], limit: int = 4) -> dict[str, float] | None:
    """Mean and max |PIL decode - OpenCV decode| in 0..255 units, on JPEG files or JPEG-encoded images.

    File samples are decoded from disk both ways; in-memory images are JPEG-encoded (quality 90)
    first, as an upload would be. None when OpenCV is missing.
    """
    cv2 = opencv()
    if cv2 is None:
        return None
    from PIL import Image

    means, maxes = [], []
    for sample, img in list(zip(samples, images))[:limit]:
        if is_path(sample):
            with open(sample, "rb") as fh:
                data = fh.read()
        else:
            buf = io.BytesIO()
            img.save(buf, format="JPEG", quality=90)
            data = buf.getvalue()
        pil = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.float64)
        bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if bgr is None or bgr.shape[:2] != pil.shape[:2]:
            continue
        d = np.abs(bgr[..., ::-1].astype(np.float64) - pil)
        means.append(float(d.mean()))
        maxes.append(float(d.max()))
    if not means:
        return None
    return {"mean_abs_255": float(np.mean(means)), "max_abs_255": float(np.max(maxes))}
