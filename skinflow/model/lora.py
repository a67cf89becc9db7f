"""LoRA targets by scope, and the vision LoRA that is parameter-matched to the DVE (an ablation control).

peft matches ``target_modules`` by name suffix, and the Qwen2.5-VL vision MLP uses the same names as the
language MLP (gate_proj/up_proj/down_proj), so suffixes alone would silently adapt both towers. Targets are
therefore resolved here to full module names inside the chosen tower.
"""

from __future__ import annotations

import copy
from typing import Literal, Sequence

from torch import nn

from skinflow.model.fdlinear import DVEConfig, convert_vision_tower, find_vision_tower

LoraScope = Literal["language", "vision"]


def _tower_prefix(model: nn.Module) -> str:
    tower = find_vision_tower(model)
    return next(name for name, module in model.named_modules() if module is tower)


def language_targets(model: nn.Module, suffixes: Sequence[str]) -> list[str]:
    """Full names of the language model's nn.Linear layers whose name ends with one of ``suffixes``."""
    vision = _tower_prefix(model) + "."
    return [name for name, module in model.named_modules()
            if isinstance(module, nn.Linear) and not name.startswith(vision)
            and name.rsplit(".", 1)[-1] in suffixes and "lm_head" not in name]


def vision_targets(model: nn.Module, dve: DVEConfig) -> list[str]:
    """Full names of the vision linears the DVE would convert (same blocks, same projections)."""
    prefix = _tower_prefix(model)
    depth = len(find_vision_tower(model).blocks)
    blocks = range(depth) if dve.blocks == "all" else dve.blocks
    return [f"{prefix}.blocks.{b}.{'attn' if p in ('qkv', 'proj') else 'mlp'}.{p}"
            for b in blocks for p in dve.projections]


def dve_added_params(model: nn.Module, dve: DVEConfig) -> int:
    """Parameters the DVE conversion would add (head parameters; the spectrum replaces the dense weight)."""
    tower = copy.deepcopy(find_vision_tower(model))
    return convert_vision_tower(tower, dve.model_copy(update={"enabled": True})).added_params


def matched_rank(model: nn.Module, dve: DVEConfig) -> tuple[int, int, int]:
    """LoRA rank on the DVE's layers whose parameter count is closest to the DVE's added parameters.

    Returns (rank, lora_params, dve_params). LoRA adds r * (in + out) per layer."""
    modules = dict(model.named_modules())
    per_rank = sum(modules[n].in_features + modules[n].out_features for n in vision_targets(model, dve))
    added = dve_added_params(model, dve)
    rank = max(1, round(added / per_rank))
    return rank, rank * per_rank, added
