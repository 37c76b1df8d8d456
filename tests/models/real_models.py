"""Small configurations of real library models (random weights; nothing is downloaded), and two
model quirks seen in the field. Each factory returns a Target the default checks must run cleanly on."""
from __future__ import annotations

import torch
from torch import nn

from torch_diagnose import Target

SEQ, VOCAB = 12, 512


def _tokens(batch: int = 2, seq: int = SEQ, *, pad_last: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, VOCAB, (batch, seq), generator=g)
    mask = torch.ones(batch, seq, dtype=torch.long)
    if pad_last:
        mask[-1, -pad_last:] = 0
        ids[-1, -pad_last:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def gpt2() -> Target:
    """GPT-2 with default settings: returns a `CausalLMOutputWithCrossAttentions` holding a DynamicCache."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=VOCAB, n_positions=64, bos_token_id=1, eos_token_id=2)
    return Target(GPT2LMHeadModel(config).eval(), example_inputs=_tokens(),
                  dynamic_dims={"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}})


def t5() -> Target:
    """T5 encoder-decoder with default settings (an EncoderDecoderCache in its output)."""
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(0)
    config = T5Config(vocab_size=VOCAB, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_decoder_layers=2,
                      num_heads=4, decoder_start_token_id=0, pad_token_id=0)
    inputs = _tokens()
    inputs["decoder_input_ids"] = torch.randint(1, VOCAB, (2, 6), generator=torch.Generator().manual_seed(1))
    return Target(T5ForConditionalGeneration(config).eval(), example_inputs=inputs)


def bert_padded() -> Target:
    """BERT classifier with a padded sample in the batch."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=128, max_position_embeddings=64, num_labels=3)
    return Target(BertForSequenceClassification(config).eval(), example_inputs=_tokens(pad_last=4))


def timm_vit() -> Target:
    """A tiny timm ViT at 64x64."""
    import timm

    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=64, depth=2, num_classes=10)
    return Target(model.eval(), example_inputs=torch.randn(2, 3, 64, 64))


def detection(size: int | None = None) -> Target:
    """torchvision Faster R-CNN (MobileNetV3 320 FPN) taking a list of [C,H,W] images: the list is the batch.

    `size`: resize inside the model to this (min_size = max_size) instead of 320, and make the images
    that size: a quarter of the work at 160.
    """
    from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_320_fpn

    torch.manual_seed(0)
    resize = {} if size is None else {"min_size": size, "max_size": size}
    model = fasterrcnn_mobilenet_v3_large_320_fpn(weights=None, weights_backbone=None, num_classes=5, **resize)
    side = size or 160
    images = [torch.rand(3, side, side), torch.rand(3, side, side)]
    return Target(model.eval(), example_inputs=(images,))


class HookedNet(nn.Module):
    """A Grad-CAM style hook stored an activation with autograd history: `copy.deepcopy` refuses the model."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
        self.saved: torch.Tensor | None = None
        self.body[0].register_forward_hook(self._keep)
        self.body(torch.randn(1, 8))  # one forward with grad on, as a training notebook would leave it

    def _keep(self, module: nn.Module, args: object, output: torch.Tensor) -> None:
        if output.requires_grad:
            self.saved = output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def hooked() -> Target:
    torch.manual_seed(0)
    return Target(HookedNet().eval(), example_inputs=torch.randn(2, 8))


class ShadowedTrain(nn.Module):
    """`train` is a training loop here, shadowing nn.Module.train(mode): `.eval()` calls it with False."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(8, 16), nn.Dropout(0.1), nn.Linear(16, 4))

    def train(self, loader, epochs: int = 1):  # type: ignore[override]
        for _ in range(epochs):
            for x, y in loader:
                nn.functional.mse_loss(self(x), y).backward()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def shadowed_train() -> Target:
    torch.manual_seed(0)
    model = ShadowedTrain()
    nn.Module.train(model, False)  # the user switched it with the base method
    return Target(model, example_inputs=torch.randn(2, 8))


def resnet18() -> Target:
    """torchvision ResNet-18, random weights, at 2x3x64x64."""
    from torchvision.models import resnet18 as build

    torch.manual_seed(0)
    return Target(build(weights=None).eval(), example_inputs=torch.randn(2, 3, 64, 64))


def swin_t() -> Target:
    """torchvision Swin-T, random weights, at a small input (2x3x64x64)."""
    from torchvision.models import swin_t as build

    torch.manual_seed(0)
    return Target(build(weights=None).eval(), example_inputs=torch.randn(2, 3, 64, 64))


def r3d_18() -> Target:
    """torchvision R3D-18 video model, random weights, on a small clip (2x3x4x32x32)."""
    from torchvision.models.video import r3d_18 as build

    torch.manual_seed(0)
    return Target(build(weights=None).eval(), example_inputs=torch.randn(2, 3, 4, 32, 32))


class DeepStash(nn.Module):
    """Keeps an autograd tensor nested too deep for the detaching copy to find: copies need `factory`."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(8, 4)
        self.stash = [[[[[self.body(torch.randn(1, 8))]]]]]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def deep_stash() -> Target:
    torch.manual_seed(0)
    return Target(DeepStash().eval(), example_inputs=torch.randn(2, 8), factory=DeepStash)


#: name -> factory, for tests and benchmarks/bench_real_models.py
REAL_MODELS = {"gpt2": gpt2, "t5": t5, "bert_padded": bert_padded, "timm_vit": timm_vit, "detection": detection,
               "hooked": hooked, "shadowed_train": shadowed_train}
VISION_MODELS = {"resnet18": resnet18, "swin_t": swin_t, "r3d_18": r3d_18}
