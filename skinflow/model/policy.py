"""The RL policy built from a start model in one place: DVE conversion, which parts train, LoRA, and the
optimizer's parameter groups. The RL runner calls :func:`build_policy` once and gets everything it needs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import Field
from torch import nn

from skinflow.config import Section
from skinflow.model.fdlinear import DVEConfig


class LoraSettings(Section):
    enabled: bool = False
    r: int = Field(8, ge=1)
    alpha: int = Field(16, ge=1)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] = ["q_proj", "k_proj", "v_proj", "o_proj"]  # language scope: name suffixes
    # "vision": LoRA on the vision linears the DVE config selects (blocks x projections) instead of the language
    # model; with match_dve_params the rank is set so LoRA adds as many parameters as the DVE would (ablation).
    scope: Literal["language", "vision"] = "language"
    match_dve_params: bool = False


@dataclass
class Policy:
    model: nn.Module
    # None: the trainer's default optimizer over every trainable parameter, at one learning rate.
    param_groups: list[dict[str, Any]] | None
    info: dict[str, Any] = field(default_factory=dict)


def build_policy(model: nn.Module, dve: DVEConfig, lora: LoraSettings, train_vision: bool,
                 learning_rate: float) -> Policy:
    """Convert the vision tower to FDLinear (unless the start model already is), freeze the tower when asked
    (the DVE heads, the new capacity, stay trainable), add LoRA, and group the parameters for the optimizer."""
    from skinflow.model.fdlinear import FDLinear, convert_vision_tower, dve_param_groups, stored_dve_config

    info: dict[str, Any] = {}
    stored = stored_dve_config(model.config)
    if stored is not None:
        # The start model's FDLinear layout is fixed by its weights: a different one asked for here would be
        # silently ignored, so it is refused (the optimizer's head_lr_scale may differ).
        clash = [k for k in ("enabled", "blocks", "projections", "num_bands") if getattr(dve, k) != getattr(stored, k)]
        if clash:
            raise ValueError("the start model already has a DVE (" + ", ".join(f"{k}={getattr(stored, k)}" for k in clash)
                             + "); dve." + ", dve.".join(clash) + " would be ignored: set them to these values, or "
                             "start from a model without a DVE")
    if dve.enabled and stored is None:
        report = convert_vision_tower(model, dve)
        info["dve_conversion"] = {k: v for k, v in report.to_dict().items() if k != "layers"}
    if not train_vision:
        for name, param in model.model.visual.named_parameters():
            param.requires_grad = ".head." in name or name.endswith("head")
    if lora.enabled:
        model = _with_lora(model, dve, lora, info)
        if dve.enabled:  # peft freezes everything but the adapters; the DVE is trained either way
            for module in model.modules():
                if isinstance(module, FDLinear):
                    module.requires_grad_(True)
    info["trainable_parameters"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    info["parameters"] = sum(p.numel() for p in model.parameters())
    groups = (dve_param_groups(model, learning_rate, dve.head_lr_scale)
              if dve.enabled and dve.head_lr_scale != 1.0 else None)
    return Policy(model, groups, info)


def _with_lora(model: nn.Module, dve: DVEConfig, lora: LoraSettings, info: dict[str, Any]) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    from skinflow.model.lora import language_targets, matched_rank, vision_targets

    rank, alpha = lora.r, lora.alpha
    if lora.scope == "vision":
        targets = vision_targets(model, dve)
        if lora.match_dve_params:
            rank, lora_params, dve_params = matched_rank(model, dve)
            alpha = round(rank * lora.alpha / lora.r)  # keep the configured alpha / r scale
            info["lora_matched"] = {"rank": rank, "lora_params": lora_params, "dve_added_params": dve_params}
    else:
        targets = language_targets(model, lora.target_modules)
    return get_peft_model(model, LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=lora.dropout,
                                            target_modules=targets))
