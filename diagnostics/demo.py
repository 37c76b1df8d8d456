"""The built-in demo target: a random-weight torchvision resnet18 with its serving pipelines.

Nothing is downloaded. Used by `diagnose demo` and the README's first command. The example
inputs are two generated photo-like images run through the reference pipeline, so the input
audit sees what a real deployment would feed; the serving pipeline (transforms v2 on tensors)
differs from the reference (v1 on PIL) only by resampling noise, so `preprocessing` passes.
"""
from __future__ import annotations

from .target.base import Target

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def demo_target() -> Target:
    import torch
    import torchvision
    from torchvision import transforms as T
    from torchvision.transforms import v2

    from .images import generated_images

    def build() -> torch.nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return torchvision.models.resnet18(weights=None).eval()  # deployment-ready, as a user would load it

    reference = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    serving = v2.Compose([v2.ToImage(), v2.Resize(256, antialias=True), v2.CenterCrop(224),
                          v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    example = torch.stack([reference(img) for img in generated_images(2)])
    return Target(model=build(), example_inputs=example, preprocess=serving, reference_preprocess=reference,
                  name="demo-resnet18", source="demo", factory=build)
