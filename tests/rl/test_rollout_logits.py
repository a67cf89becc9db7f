"""With the DVE on, the rollout path (HF generate, KV cache, vision tower run once at prefill) must
score tokens exactly as the training forward does (full sequence, no cache). vLLM-style rollouts
would run a vision tower without FDLinear, so the config refuses them while the DVE is on."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from skinflow.model.fdlinear import DVEConfig, FDLinear, convert_vision_tower
from skinflow.rl.grpo import Stage2Config

from micro_models import IMAGE_TOKEN, VISION_END, VISION_START, micro_qwen2_5_vl

IMG, START, END = IMAGE_TOKEN, VISION_START, VISION_END


def _model():
    model = micro_qwen2_5_vl().eval()
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
