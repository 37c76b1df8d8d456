"""The common resize paths re-implemented as "variants" of a pipeline: torchvision on uint8 tensors,
PIL and OpenCV, each with its interpolation and antialiasing, after a geometry (resize the shorter
side, centre-crop, or crop first). Matching a pipeline's output against them names how it resizes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from .. import images
from .steps import DeclaredGeometry


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
            cv2 = images.opencv()
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
    return list(RESAMPLERS) + (list(CV2_RESAMPLERS) if use_cv2 and images.opencv() is not None else [])


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
