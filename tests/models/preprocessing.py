"""Models and preprocessing pipelines for the preprocessing checks: a reference (training/eval)
pipeline, serving pipelines with one deliberate skew each, and clean serving pipelines that differ
only by resampling noise. Images are 64x64 so a torchvision resnet18 runs fast."""
from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch
import torchvision
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2

from torch_diagnose import Target

SIZE = 64
RESIZE = int(SIZE * 256 / 224)  # 73: the usual 256 -> 224 ratio
MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]


@functools.lru_cache(maxsize=1)
def _calibrated_resnet18() -> torch.nn.Module:
    """A random-weight resnet18 whose BatchNorm statistics are set from generated images.

    Plain random weights map every image to the same class (eval-mode BatchNorm with unit
    statistics lets activations grow until the bias dominates), which makes top-1 agreement
    meaningless; estimating the running statistics once on photo-like images fixes that.
    """
    from torch_diagnose.images import generated_images

    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # cumulative average
    batch = torch.stack([reference()(img) for img in generated_images(12, seed=123)])
    model.train()
    with torch.no_grad():
        model(batch)
    return model.eval()


def classifier() -> torch.nn.Module:
    return _calibrated_resnet18()


def reference() -> T.Compose:
    """The training/evaluation pipeline: torchvision v1 on PIL images."""
    return T.Compose([T.Resize(RESIZE), T.CenterCrop(SIZE), T.ToTensor(), T.Normalize(MEAN, STD)])


def target(serving: Any, ref: Any | None = None, **kw: Any) -> Target:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, SIZE, SIZE, generator=gen)
    return Target(classifier(), x, preprocess=serving, reference_preprocess=ref or reference(), **kw)


# -- clean serving pipelines (resampling noise only) --------------------------------------------


def serving_v2() -> v2.Compose:
    """The same pipeline written with transforms v2."""
    return v2.Compose([v2.Resize(RESIZE), v2.CenterCrop(SIZE), v2.ToImage(), v2.ToDtype(torch.float32, scale=True),
                       v2.Normalize(MEAN, STD)])


def serving_tensor_resize() -> v2.Compose:
    """Resizes the uint8 tensor (antialias=True) instead of the PIL image."""
    return v2.Compose([v2.PILToTensor(), v2.Resize(RESIZE, antialias=True), v2.CenterCrop(SIZE),
                       v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)])


# -- faulty serving pipelines --------------------------------------------------------------------


def serving_divided_after_normalize() -> T.Compose:
    """Fault: the finished (normalised) tensor divided by 255 again: exactly reference / 255."""
    return T.Compose([T.Resize(RESIZE), T.CenterCrop(SIZE), T.ToTensor(), T.Normalize(MEAN, STD), T.Lambda(lambda x: x / 255)])


def serving_tensor_resize_no_antialias() -> T.Compose:
    """Fault: resizes the uint8 tensor with antialias=False (torchvision v1), which aliases a downscale."""
    return T.Compose([T.PILToTensor(), T.Resize(RESIZE, antialias=False), T.CenterCrop(SIZE),
                      T.ConvertImageDtype(torch.float32), T.Normalize(MEAN, STD)])


def serve_cv2_bgr(img: Any) -> torch.Tensor:
    """Fault: decodes the OpenCV way (BGR) and never converts to RGB."""
    import cv2

    arr = cv2.cvtColor(np.asarray(img), cv2.COLOR_RGB2BGR)  # what cv2.imread hands over
    t = torch.from_numpy(arr).permute(2, 0, 1)
    t = v2.functional.center_crop(v2.functional.resize(t, [RESIZE], antialias=True), [SIZE, SIZE])
    return v2.functional.normalize(t.float() / 255, MEAN, STD)


def serving_flip_channels() -> T.Compose:
    """Fault: a Lambda that reverses the channels (a BGR model's habit) before Normalize."""
    return T.Compose([T.Resize(RESIZE), T.CenterCrop(SIZE), T.ToTensor(), T.Lambda(lambda x: x.flip(0)), T.Normalize(MEAN, STD)])


def serving_no_normalize() -> T.Compose:
    """Fault: Normalize forgotten."""
    return T.Compose([T.Resize(RESIZE), T.CenterCrop(SIZE), T.ToTensor()])


def serving_0_255() -> v2.Compose:
    """Fault: ToDtype without scale=True leaves 0..255, then Normalize with 0..1 statistics."""
    return v2.Compose([v2.Resize(RESIZE), v2.CenterCrop(SIZE), v2.ToImage(), v2.ToDtype(torch.float32), v2.Normalize(MEAN, STD)])


def serve_hwc(img: Any) -> torch.Tensor:
    """Fault: builds the tensor from the HWC array and never permutes to CHW."""
    img = T.CenterCrop(SIZE)(T.Resize(RESIZE)(img))
    x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0)
    return (x - torch.tensor(MEAN)) / torch.tensor(STD)


def serving_nearest() -> T.Compose:
    """Fault: nearest-neighbour resizing."""
    return T.Compose([T.Resize(RESIZE, interpolation=InterpolationMode.NEAREST), T.CenterCrop(SIZE), T.ToTensor(), T.Normalize(MEAN, STD)])


def serving_wrong_mean_std() -> T.Compose:
    """Fault: 0.5/0.5 normalisation instead of ImageNet's."""
    return T.Compose([T.Resize(RESIZE), T.CenterCrop(SIZE), T.ToTensor(), T.Normalize([0.5] * 3, [0.5] * 3)])


def serving_double_normalize() -> T.Compose:
    """Fault: Normalize twice (the model wrapper normalises again)."""
    return T.Compose([T.Resize(RESIZE), T.CenterCrop(SIZE), T.ToTensor(), T.Normalize(MEAN, STD), T.Normalize(MEAN, STD)])


def serving_random_crop() -> T.Compose:
    """Fault: training augmentation left in serving."""
    return T.Compose([T.RandomResizedCrop(SIZE), T.ToTensor(), T.Normalize(MEAN, STD)])


def serving_crop_first() -> T.Compose:
    """Fault: centre-crops the full image first, then resizes (a different field of view)."""
    return T.Compose([T.CenterCrop(SIZE), T.Resize(RESIZE), T.CenterCrop(SIZE), T.ToTensor(), T.Normalize(MEAN, STD)])


def serving_cv2_linear(img: Any) -> torch.Tensor:
    """Fault: OpenCV INTER_LINEAR resize (no antialiasing on the downscale)."""
    import cv2

    arr = np.asarray(img)
    h, w = arr.shape[:2]
    nh, nw = (RESIZE, int(RESIZE * w / h)) if h <= w else (int(RESIZE * h / w), RESIZE)
    arr = cv2.resize(arr, (nw, nh), interpolation=cv2.INTER_LINEAR)
    t = v2.functional.center_crop(torch.from_numpy(arr).permute(2, 0, 1), [SIZE, SIZE])
    return v2.functional.normalize(t.float() / 255, MEAN, STD)


class PerImageStandardize(torch.nn.Module):
    """Meant per image, but `x.mean()` spans the whole batch when the pipeline gets a batch."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - x.mean()) / x.std()


def standardizing_pipeline() -> v2.Compose:
    """Used as both reference and serving: fine per sample, wrong on a batch."""
    return v2.Compose([v2.ToImage(), v2.Resize(RESIZE), v2.CenterCrop(SIZE), v2.ToDtype(torch.float32, scale=True), PerImageStandardize()])
