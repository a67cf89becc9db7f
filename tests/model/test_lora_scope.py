"""LoRA targets by scope, and the vision LoRA parameter-matched to the DVE (ablation control)."""

from __future__ import annotations

import pytest
import torch
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

from skinflow.model.fdlinear import DVEConfig, convert_vision_tower
from skinflow.model.lora import dve_added_params, language_targets, matched_rank, vision_targets
from skinflow.model.policy import LoraSettings, build_policy
from skinflow.rl.grpo import Stage2Config


@pytest.fixture()
def model():
    torch.manual_seed(0)
    config = Qwen2_5_VLConfig(
        text_config={"vocab_size": 64, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                     "num_attention_heads": 2, "num_key_value_heads": 1, "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]}},
        vision_config={"hidden_size": 32, "intermediate_size": 48, "depth": 2, "num_heads": 2, "out_hidden_size": 32,
                       "fullatt_block_indexes": [1], "window_size": 56, "patch_size": 14, "spatial_merge_size": 2},
        image_token_id=60, video_token_id=61, vision_start_token_id=62)
    return Qwen2_5_VLForConditionalGeneration(config)


def test_language_targets_exclude_the_vision_mlp(model):
    # gate/up/down_proj exist in both towers: suffix matching alone would adapt the vision MLP too.
    names = language_targets(model, ["gate_proj", "up_proj", "down_proj", "q_proj"])
    assert names and not any(".visual." in f".{n}" for n in names)
    assert {n.rsplit(".", 1)[-1] for n in names} == {"gate_proj", "up_proj", "down_proj", "q_proj"}


def test_vision_targets_follow_the_dve_selection(model):
    names = vision_targets(model, DVEConfig(blocks=[1], projections=["qkv", "down_proj"]))
    assert names == ["model.visual.blocks.1.attn.qkv", "model.visual.blocks.1.mlp.down_proj"]
    modules = dict(model.named_modules())
    assert all(isinstance(modules[n], torch.nn.Linear) for n in names)


def test_matched_rank_is_closest_to_the_dve_overhead(model):
    dve = DVEConfig()
    rank, lora_params, added = matched_rank(model, dve)
    modules = dict(model.named_modules())
    per_rank = sum(modules[n].in_features + modules[n].out_features for n in vision_targets(model, dve))
    assert lora_params == rank * per_rank
    assert abs(lora_params - added) <= per_rank / 2 or rank == 1
    # The model itself is untouched: the overhead is measured on a copy.
    assert not any(type(m).__name__ == "FDLinear" for m in model.modules())
    assert added == convert_vision_tower(model, dve).added_params
    assert dve_added_params(model, dve) == added


def test_vision_scope_trains_only_vision_lora(model):
    cfg = Stage2Config(dve=DVEConfig(enabled=False),
                       lora=LoraSettings(enabled=True, scope="vision", match_dve_params=True))
    policy = build_policy(model, cfg.dve, cfg.lora, cfg.train_vision, cfg.learning_rate)
    peft_model, info = policy.model, policy.info
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n and ".visual." in n for n in trainable)
    assert info["lora_matched"]["rank"] >= 1
    assert info["trainable_parameters"] == info["lora_matched"]["lora_params"]


def test_language_scope_leaves_the_vision_tower_alone(model):
    cfg = Stage2Config(dve=DVEConfig(enabled=False), lora=LoraSettings(enabled=True, target_modules=["down_proj"]))
    policy = build_policy(model, cfg.dve, cfg.lora, cfg.train_vision, cfg.learning_rate)
    peft_model, _ = policy.model, policy.info
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and not any(".visual." in n for n in trainable)


def test_language_lora_keeps_the_dve_trainable(model):
    cfg = Stage2Config(dve=DVEConfig(enabled=True), lora=LoraSettings(enabled=True, target_modules=["q_proj"]))
    policy = build_policy(model, cfg.dve, cfg.lora, cfg.train_vision, cfg.learning_rate)
    peft_model, _ = policy.model, policy.info
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert any(".visual." in n and "spectrum" in n for n in trainable)
    assert any(".visual." in n and ".head." in n for n in trainable)
    assert any("lora_" in n for n in trainable)
