"""Shared by the GRPO tests: a tiny captioned SkinSynth corpus and a micro random base model, once per module."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    from micro_models import micro_vl_config

    from skinflow.data.corpus import captioned_skinsynth
    from skinflow.model.base import BaseModelConfig, build_tiny

    root = tmp_path_factory.mktemp("rl")
    _, _, taxonomy = captioned_skinsynth(root)
    build_tiny(root / "base", BaseModelConfig(tiny=micro_vl_config(), min_pixels=56 * 56, max_pixels=56 * 56),
               sorted(taxonomy["label"]))
    return root
