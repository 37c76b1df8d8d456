"""`diagnose compare` on real library models (timm ViT, transformers BERT and GPT-2, random weights):
the planted difference is found in the module that holds it, never in the exporter's plumbing."""
from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

import torch_diagnose as td

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

VIT = "timm:vit_tiny_patch16_224?img_size=64&depth=2"
TINY_BERT = dict(vocab_size=200, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                 max_position_embeddings=64)


def _compare(reference: str, candidate: str) -> td.CheckResult:
    return td.run_check("compare", reference, candidate=candidate, repro=False)


@pytest.fixture(scope="module")
def vit_files(tmp_path_factory) -> Path:
    """The ViT exported elsewhere by the dynamo exporter, and a copy with one renamed weight edited: the
    exporter stores `blocks.1.attn.qkv.weight` transposed for MatMul under a `val_N` name."""
    pytest.importorskip("timm")
    from torch_diagnose import load_target

    folder = tmp_path_factory.mktemp("vit")
    target = load_target(VIT)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(target.model, (target.example_inputs,), dynamo=True,
                          dynamic_shapes=({0: torch.export.Dim("batch")},)).save(str(folder / "vit.onnx"))
    proto = onnx.load(str(folder / "vit.onnx"))
    qkv = next(n for n in proto.graph.node if n.op_type == "MatMul"
               and any("blocks.1.attn.qkv" in p.value for p in n.metadata_props if p.key == "namespace"))
    name = next(i for i in qkv.input if any(init.name == i for init in proto.graph.initializer))
    init = next(i for i in proto.graph.initializer if i.name == name)
    value = onnx.numpy_helper.to_array(init).copy()
    value[:, :8] *= 1.05
    init.CopyFrom(onnx.numpy_helper.from_array(value, name))
    onnx.save(proto, str(folder / "vit_edited.onnx"))
    (folder / "edited_name").write_text(name)
    return folder


def test_timm_vit_onnx_exported_elsewhere_passes_clean(vit_files: Path) -> None:
    result = _compare(VIT, str(vit_files / "vit.onnx"))
    assert result.status == "pass", result.explain()


def test_timm_vit_onnx_with_an_edited_renamed_weight_names_the_linear_and_its_parameter(vit_files: Path) -> None:
    """Decomposed nodes (the Concat building `expand`'s shape, the MatMul before `linear`'s bias) carry
    their FX node's metadata but not its value: they must not be blamed for a divergence."""
    result = _compare(VIT, str(vit_files / "vit_edited.onnx"))
    assert result.status == "fail", result.explain()
    assert result.culprit.name.endswith("blocks.1.attn.qkv (Linear)"), result.culprit.label
    assert "timm/layers/attention.py" in (result.culprit.location or "")
    edited = (vit_files / "edited_name").read_text()
    assert f"`{edited}` = `blocks.1.attn.qkv.weight (stored transposed)`" in result.summary
    assert "export again from the checkpoint you serve" in result.hint


def test_two_bert_checkpoints_name_the_layer_that_differs(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = transformers.BertModel(transformers.BertConfig(**TINY_BERT)).eval()
    model.save_pretrained(tmp_path / "a")
    with torch.no_grad():
        model.encoder.layer[1].attention.output.dense.weight.mul_(1.1)
    model.save_pretrained(tmp_path / "b")
    result = _compare(f"hf:{tmp_path / 'a'}", f"hf:{tmp_path / 'b'}")
    assert result.status == "fail", result.explain()
    assert result.culprit.name == "encoder.layer.1.attention.output.dense"
    assert "1 parameter/buffer of 39 differ: `encoder.layer.1.attention.output.dense.weight`" in result.summary
    assert _compare(f"hf:{tmp_path / 'a'}", f"hf:{tmp_path / 'a'}").status == "pass"


def test_gpt2_recorded_in_production_with_its_cache_names_the_moved_module(tmp_path: Path) -> None:
    """Recorded as served (use_cache=True: the cache is in the outputs); the reference runs without it,
    so the cache is said to be left out, and a changed bias is found in the module that holds it."""
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(vocab_size=200, n_embd=32, n_layer=2, n_head=2, n_positions=64)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config).eval()
    model.save_pretrained(tmp_path / "gpt2")
    ids = torch.randint(0, 200, (2, 16), generator=torch.Generator().manual_seed(3))
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    td.record(model, inputs, tmp_path / "same.pt")
    with torch.no_grad():
        model.transformer.h[1].mlp.c_fc.bias.add_(0.2)
    td.record(model, inputs, tmp_path / "moved.pt")
    same = _compare(f"hf:{tmp_path / 'gpt2'}", str(tmp_path / "same.pt"))
    assert same.status == "pass", same.explain()
    assert "recorded outputs the reference does not return, not compared: cache.layers[0].keys" in same.summary
    moved = _compare(f"hf:{tmp_path / 'gpt2'}", str(tmp_path / "moved.pt"))
    assert moved.status == "fail", moved.explain()
    assert moved.culprit.name == "transformer.h.1.mlp.c_fc"
    assert "first module whose output moved: transformer.h.1.mlp.c_fc (Conv1D)" in moved.summary
