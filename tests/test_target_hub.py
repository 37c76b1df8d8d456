"""`timm:` and `hf:` specs (diagnostics/target/hub.py): offline, tiny models, one-line errors."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import torch_diagnose
from torch_diagnose.errors import TargetError, UsageError
from torch_diagnose.inputs import call_model
from torch_diagnose.target import load_target
from torch_diagnose.target.hub import parse_query

timm = pytest.importorskip("timm")
transformers = pytest.importorskip("transformers")

TINY_VIT = "timm:vit_tiny_patch16_224?img_size=64&depth=2"
TINY_TEXT = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
                 max_position_embeddings=64)


def bad_spec(spec: str) -> str:
    """The one-line message of the TargetError (a UsageError: exit 2) that `spec` raises."""
    with pytest.raises(TargetError) as info:
        load_target(spec)
    message = str(info.value)
    assert isinstance(info.value, UsageError) and message and "\n" not in message, message
    return message


def test_query_values_are_typed() -> None:
    assert parse_query("img_size=64&drop_rate=0.1&pretrained=true&global_pool=avg", "s") == {
        "img_size": 64, "drop_rate": 0.1, "pretrained": True, "global_pool": "avg"}
    with pytest.raises(TargetError, match="key=value"):
        parse_query("depth", "timm:x?depth")


def test_timm_model_with_kwargs_and_inputs_at_its_size() -> None:
    target = load_target(TINY_VIT)
    assert target.name == "vit_tiny_patch16_224" and not target.model.training
    assert len(target.model.blocks) == 2
    assert tuple(target.example_inputs.shape) == (2, 3, 64, 64)
    assert torch.equal(target.factory().head.weight, target.model.head.weight)  # seeded
    assert call_model(target.model, target.example_inputs).shape == (2, 1000)
    result = torch_diagnose.run_check("eval_mode", target)
    assert result.status == "pass", result.summary


def test_timm_input_shape_option_wins() -> None:
    target = load_target(TINY_VIT, input_shape=(1, 3, 64, 64))
    assert tuple(target.example_inputs.shape) == (1, 3, 64, 64)


def test_timm_bad_names_and_missing_weights() -> None:
    message = bad_spec("timm:vit_tiny_patch16_22")
    assert "timm has no model 'vit_tiny_patch16_22'" in message and "vit_tiny_patch16_224" in message
    message = bad_spec("timm:vit_tiny_patch16_224?depth=two")
    assert "timm.create_model('vit_tiny_patch16_224'" in message and "failed" in message
    message = bad_spec(TINY_VIT + "&pretrained=true")  # no network, nothing cached: fails fast, offline
    assert "cannot load the pretrained weights from the local cache" in message and "pretrained=true" in message


def test_missing_packages_say_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm now raises ImportError
    monkeypatch.setitem(sys.modules, "transformers", None)
    assert bad_spec("timm:resnet18") == "timm:resnet18 needs the timm package: pip install timm"
    assert bad_spec("hf:bert-base-uncased") == "hf:bert-base-uncased needs the transformers package: pip install transformers"


def test_hf_config_only_folder_builds_seeded_random_weights(tmp_path: Path) -> None:
    transformers.BertConfig(**TINY_TEXT).save_pretrained(tmp_path)  # no architectures: AutoModel
    target = load_target(f"hf:{tmp_path}")
    assert type(target.model).__name__ == "BertModel" and not target.model.training
    ids, mask = target.example_inputs["input_ids"], target.example_inputs["attention_mask"]
    assert ids.shape == mask.shape == (2, 16) and int(ids.max()) < 99
    assert target.dynamic_dims["input_ids"] == {0: "batch", 1: "seq"}
    assert any("seeded random weights" in note for note in target.setup_notes)
    rebuilt = target.factory()
    assert torch.equal(rebuilt.embeddings.word_embeddings.weight, target.model.embeddings.word_embeddings.weight)
    assert call_model(target.model, target.example_inputs).last_hidden_state.shape == (2, 16, 32)


def test_hf_folder_with_weights_loads_them_in_the_architecture_class(tmp_path: Path) -> None:
    config = transformers.GPT2Config(vocab_size=99, n_embd=32, n_layer=2, n_head=2, n_positions=64)
    torch.manual_seed(1)
    saved = transformers.GPT2LMHeadModel(config)
    saved.save_pretrained(tmp_path)
    target = load_target(f"hf:{tmp_path}")
    assert target.name == "GPT2LMHeadModel" and type(target.model).__name__ == "GPT2LMHeadModel"
    assert torch.equal(target.model.transformer.wte.weight, saved.transformer.wte.weight)
    assert not any("random weights" in note for note in target.setup_notes)
    out = call_model(target.model, target.example_inputs)
    assert out.logits.shape == (2, 16, 99) and out.past_key_values is None  # use_cache off: comparable outputs


def test_hf_encoder_decoder_gets_decoder_inputs(tmp_path: Path) -> None:
    config = transformers.T5Config(vocab_size=99, d_model=32, d_kv=8, d_ff=37, num_layers=1, num_heads=2,
                                   architectures=["T5ForConditionalGeneration"])
    config.save_pretrained(tmp_path)
    target = load_target(f"hf:{tmp_path}")
    assert type(target.model).__name__ == "T5ForConditionalGeneration"
    assert set(target.example_inputs) == {"input_ids", "attention_mask", "decoder_input_ids"}
    assert call_model(target.model, target.example_inputs).logits.shape == (2, 8, 99)


def test_hf_vision_config_gets_pixel_values(tmp_path: Path) -> None:
    transformers.ViTConfig(image_size=32, patch_size=8, num_channels=3, hidden_size=32, num_hidden_layers=1,
                           num_attention_heads=2, intermediate_size=37).save_pretrained(tmp_path)
    target = load_target(f"hf:{tmp_path}")
    assert set(target.example_inputs) == {"pixel_values"}
    assert tuple(target.example_inputs["pixel_values"].shape) == (2, 3, 32, 32)
    assert call_model(target.model, target.example_inputs).last_hidden_state.shape[0] == 2


def test_hf_missing_folders_and_uncached_ids(tmp_path: Path) -> None:
    assert "does not exist" in bad_spec(f"hf:{tmp_path / 'nope'}")
    assert "has no config.json" in bad_spec(f"hf:{tmp_path}")
    message = bad_spec("hf:no-such-org/no-such-model-xyz")
    assert "neither a folder nor a model in the local Hugging Face cache" in message and "nothing is downloaded" in message


def test_hf_speech_config_gets_input_features(tmp_path: Path) -> None:
    transformers.WhisperConfig(vocab_size=99, num_mel_bins=8, d_model=32, encoder_layers=1, decoder_layers=1,
                               encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=37,
                               decoder_ffn_dim=37, max_source_positions=16, max_target_positions=32, pad_token_id=0,
                               bos_token_id=1, eos_token_id=2, decoder_start_token_id=1).save_pretrained(tmp_path)
    target = load_target(f"hf:{tmp_path}")
    assert tuple(target.example_inputs["input_features"].shape) == (2, 8, 32)
    assert tuple(target.example_inputs["decoder_input_ids"].shape) == (2, 8)
    assert call_model(target.model, target.example_inputs).last_hidden_state.shape == (2, 8, 32)
