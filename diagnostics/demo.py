"""The built-in demo target: a random-weight torchvision resnet18 with its serving pipelines.

Nothing is downloaded. Used by `diagnose demo` and the README's first command.
"""
from __future__ import annotations

from .target import Target


def demo_target() -> Target:
    import torch
    import torchvision

    def build() -> torch.nn.Module:
        torch.manual_seed(0)
        return torchvision.models.resnet18(weights=None).eval()  # deployment-ready, as a user would load it

    gen = torch.Generator().manual_seed(0)
    example = torch.randn(2, 3, 224, 224, generator=gen)
    return Target(model=build(), example_inputs=example, name="demo-resnet18", source="demo", factory=build)
