"""With the DVE on, the rollout path (HF generate, KV cache, vision tower run once at prefill) must
score tokens exactly as the training forward does (full sequence, no cache). vLLM-style rollouts
would run a vision tower without FDLinear, so the config refuses them while the DVE is on."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

from skinflow.model.fdlinear import DVEConfig, FDLinear, convert_vision_tower
from skinflow.rl.grpo import Stage2Config

IMG, START, END = 290, 292, 293


def _model() -> Qwen2_5_VLForConditionalGeneration:
    torch.manual_seed(0)
    config = Qwen2_5_VLConfig(
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                           fullatt_block_indexes=[1], window_size=56, patch_size=14, spatial_merge_size=2,
                           temporal_patch_size=2),
        text_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=300, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                         rope_parameters=dict(rope_type="default", mrope_section=[2, 3, 3], rope_theta=10000.0)),
        image_token_id=IMG, video_token_id=291, vision_start_token_id=START, vision_end_token_id=END)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    convert_vision_tower(model, DVEConfig())
    for module in model.modules():  # non-zero heads: every image gets its own effective weights
        if isinstance(module, FDLinear):
            for param in module.head.parameters():
                torch.nn.init.normal_(param, std=0.3)
    return model


def test_generate_scores_match_training_forward_with_dve():
    model = _model()
    grid = torch.tensor([[1, 8, 8], [1, 8, 8]])
    pixels = torch.randn(int(grid.prod(-1).sum()), 3 * 2 * 14 * 14)
    ids = torch.tensor([[5, START] + [IMG] * 16 + [END, 7]] * 2)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "mm_token_type_ids": (ids == IMG).int(),
              "pixel_values": pixels, "image_grid_thw": grid}
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=6, do_sample=False, output_logits=True,
                             return_dict_in_generate=True)
        rollout = torch.stack(out.logits, dim=1)                      # (batch, new tokens, vocab)
        full = out.sequences
        forward = model(input_ids=full, attention_mask=torch.ones_like(full),
                        mm_token_type_ids=(full == IMG).int(), pixel_values=pixels, image_grid_thw=grid).logits
    prompt_len = ids.shape[1]
    trainer_view = forward[:, prompt_len - 1 : -1]                    # logits that predicted each new token
    assert (rollout - trainer_view).abs().max() < 1e-4
    # The two images differ, so with active heads their rollouts are scored differently.
    assert (rollout[0] - rollout[1]).abs().max() > 1e-4


def test_external_rollout_engine_refused_while_dve_is_on():
    with pytest.raises(ValidationError, match="vLLM"):
        Stage2Config(dve=DVEConfig(enabled=True), rollout_engine="vllm")
    assert Stage2Config(dve=DVEConfig(enabled=False), rollout_engine="vllm").rollout_engine == "vllm"
