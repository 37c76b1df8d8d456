"""Sample images for the preprocessing checks: generated photo-like images, reading a sample as an
RGB image, and OpenCV (optional: `opencv()` returns None when it is missing) for decoding.

Pipelines, resize re-implementations and the diagnosis live in `diagnostics/preprocess/`.
Pillow is required.
"""
from __future__ import annotations

import functools
import io
import os
from typing import Any, Sequence

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
    """An RGB PIL image as a uint8 CHW tensor."""
    return torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()


class Picture:
    """One decoded RGB image with its uint8 CHW tensor cached (variants resample it many times)."""

    def __init__(self, pil: Any) -> None:
        self.pil = pil.convert("RGB") if pil.mode != "RGB" else pil
        self.chw = to_uint8_chw(self.pil)
        self.resampled: dict[Any, torch.Tensor] = {}  # ResizeVariant -> its output, computed once

    def resample(self, variant: Any) -> torch.Tensor:
        """The image through a `preprocess.resize.ResizeVariant`, float64 CHW in [0, 1]."""
        if variant not in self.resampled:
            self.resampled[variant] = variant.apply_chw(self.chw).double()
        return self.resampled[variant]

    @property
    def size_hw(self) -> tuple[int, int]:
        return int(self.chw.shape[-2]), int(self.chw.shape[-1])


# ---------------------------------------------------------------------------------------------
# Optional OpenCV and decoding


def opencv() -> Any | None:
    """The cv2 module when opencv(-python-headless) is installed, else None."""
    try:
        import cv2  # noqa: PLC0415

        return cv2
    except Exception:
        return None


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
