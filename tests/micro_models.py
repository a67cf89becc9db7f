"""The smallest Qwen2.5-VL shapes the tests build: a project-style config (``micro_vl_config``, what the tiny
base builder takes) and a random transformers model (``micro_qwen2_5_vl``) for tests that need a bare forward."""

from __future__ import annotations


def micro_vl_config(**overrides):
    """48-wide text, 32-wide vision: the smallest TinyVLConfig the tests train and generate with."""
    from skinflow.model.base import TinyVLConfig

    return TinyVLConfig(**{**dict(text_hidden=48, text_intermediate=96, vision_hidden=32, vision_intermediate=64,
                                  vision_depth=2, vision_heads=2, text_heads=2, text_kv_heads=1), **overrides})


IMAGE_TOKEN, VIDEO_TOKEN, VISION_START, VISION_END = 290, 291, 292, 293


def micro_qwen2_5_vl(seed: int = 0):
    """Two vision blocks and two text layers, random weights drawn from ``seed``."""
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    torch.manual_seed(seed)
    config = Qwen2_5_VLConfig(
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                           fullatt_block_indexes=[1], window_size=56, patch_size=14, spatial_merge_size=2,
                           temporal_patch_size=2),
        text_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=300, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                         rope_parameters=dict(rope_type="default", mrope_section=[2, 3, 3], rope_theta=10000.0)),
        image_token_id=IMAGE_TOKEN, video_token_id=VIDEO_TOKEN, vision_start_token_id=VISION_START,
        vision_end_token_id=VISION_END)
    return Qwen2_5_VLForConditionalGeneration(config)
