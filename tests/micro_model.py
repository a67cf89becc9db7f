"""The smallest Qwen2.5-VL shape the tests train and generate with (48-wide text, 32-wide vision)."""

from __future__ import annotations


def micro_vl_config(**overrides):
    from skinflow.model.base import TinyVLConfig

    return TinyVLConfig(**{**dict(text_hidden=48, text_intermediate=96, vision_hidden=32, vision_intermediate=64,
                                  vision_depth=2, vision_heads=2, text_heads=2, text_kv_heads=1), **overrides})
