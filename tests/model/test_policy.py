"""The one policy builder: a start model's stored DVE layout is kept, and a different one asked for is refused."""

from __future__ import annotations

import pytest

from micro_models import micro_qwen2_5_vl
from skinflow.model.fdlinear import DVEConfig, FDLinear, stored_dve_config
from skinflow.model.policy import LoraSettings, build_policy

LAYOUT = DVEConfig(enabled=True, blocks=[0], projections=["qkv"], num_bands=2, head_lr_scale=2.0)


def test_conversion_then_groups_then_the_same_layout_again():
    policy = build_policy(micro_qwen2_5_vl(0), LAYOUT, LoraSettings(), train_vision=True, learning_rate=1e-3)
    assert sum(isinstance(m, FDLinear) for m in policy.model.modules()) == 1
    assert stored_dve_config(policy.model.config).num_bands == 2 and "dve_conversion" in policy.info
    assert [g["lr"] for g in policy.param_groups] == [1e-3, 2e-3]       # heads at lr * head_lr_scale
    # Starting from the converted model with the same layout (another head_lr_scale is fine): no second conversion.
    again = build_policy(policy.model, LAYOUT.model_copy(update={"head_lr_scale": 1.0}), LoraSettings(),
                         train_vision=True, learning_rate=1e-3)
    assert "dve_conversion" not in again.info and again.param_groups is None


@pytest.mark.parametrize("change", [{"num_bands": 4}, {"projections": ["qkv", "proj"]}, {"enabled": False}])
def test_a_layout_the_start_model_cannot_have_is_refused(change):
    converted = build_policy(micro_qwen2_5_vl(0), LAYOUT, LoraSettings(), True, 1e-3).model
    with pytest.raises(ValueError, match=f"dve.{next(iter(change))} would be ignored"):
        build_policy(converted, LAYOUT.model_copy(update=change), LoraSettings(), True, 1e-3)
