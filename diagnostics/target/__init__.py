"""What is diagnosed: the `Target` dataclass and the loading of target specs.

Spec forms (`diagnose SPEC`):
  demo                              the built-in demo (random-weight torchvision resnet18)
  path/to/file.py:factory           a factory in a Python file
  package.module:factory            a factory in an importable module
  torchvision:NAME[?weights=W]      a torchvision model in eval mode, seeded random weights unless W is given
  timm:NAME[?pretrained=true&K=V]   a timm model in eval mode (K=V: create_model kwargs); cached weights only
  hf:FOLDER_OR_ID                   a transformers model from a save_pretrained folder or the local hub cache
  model.pt / model.ts               a TorchScript archive (torch.jit.load)
  model.pt2                         a torch.export ExportedProgram (torch.export.load)
  model.pt / model.pth              a pickled full model: only with trust_pickle=True
A factory may return a `Target`, an `nn.Module`, or `(module, example_inputs)`. A Target with
`samples` and `reference_preprocess` but no `example_inputs` gets them from its first two samples.

* `base`  — `Target`, `coerce_target`, `finish_target` (example inputs synthesised or guessed).
* `load`  — specs: `load_target`, `load_target_for` (under the run's seed), `split_factory`.
* `hub`   — `timm:` and `hf:` specs (optional packages; nothing is downloaded).
* `files` — model files: TorchScript, torch.export, torch.save.
* `samples` — example inputs derived from samples through the reference pipeline (`Target.setup_notes` says so).
"""
from __future__ import annotations

from .base import Target, coerce_target, finish_target
from .load import ADDED_PATHS, DEFAULT_FACTORIES, load_target, load_target_for, split_factory

__all__ = ["Target", "load_target", "load_target_for", "coerce_target", "finish_target", "split_factory",
           "DEFAULT_FACTORIES", "ADDED_PATHS"]
