"""Typed configuration: one pydantic model per ``params.yaml`` section.

Stages read only their own section. Unknown keys are errors that name the key, so a typo never
silently falls back to a default. CLI overrides use dotted ``key=value`` pairs parsed as YAML.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

DEFAULT_PARAMS = Path("params.yaml")


class Section(BaseModel):
    """Base for every params section: strict keys, immutable after load."""

    model_config = ConfigDict(extra="forbid", frozen=True)


S = TypeVar("S", bound=Section)


class ConfigError(ValueError):
    """A params section is missing, malformed or has unknown/invalid keys."""


def read_params(path: str | Path = DEFAULT_PARAMS) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"params file not found: {path}")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    return data


def apply_overrides(data: dict[str, Any], overrides: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (values parsed as YAML) to a nested dict copy."""
    result = _deep_copy(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        node = result
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
        node[parts[-1]] = yaml.safe_load(raw)
    return result


def overlay_params(params: dict[str, Any], overlay: dict[str, Any] | str | Path) -> dict[str, Any]:
    """``params`` with an overlay (a dict or a file such as ``configs/params-tiny.yaml``) merged in:
    each overlay key replaces that key of its section. A section params.yaml lacks is an error."""
    if not isinstance(overlay, dict):
        overlay = read_params(overlay)
    result = _deep_copy(params)
    for section, values in overlay.items():
        if section not in result:
            raise ConfigError(f"overlay section {section!r} is not a section of the params file")
        if not isinstance(values, dict):
            raise ConfigError(f"overlay section {section!r} is not a mapping")
        result[section] = {**(result[section] or {}), **_deep_copy(values)}
    return result


def load_section(
    name: str,
    model: type[S],
    path: str | Path = DEFAULT_PARAMS,
    overrides: list[str] | tuple[str, ...] = (),
) -> S:
    """Load and validate one section; errors name the section and the offending key."""
    data = apply_overrides({name: read_params(path).get(name)}, [f"{name}.{o}" for o in overrides])
    section = data.get(name)
    if section is None:
        raise ConfigError(f"{path}: section {name!r} is missing")
    try:
        return model.model_validate(section)
    except ValidationError as exc:
        problems = "; ".join(
            f"{name}.{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"{path}: invalid section {name!r}: {problems}") from None


def _deep_copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deep_copy(v) for v in value]
    return value


# Every params.yaml section and the typed model that reads it ("module:Class", imported lazily so
# reading one section never imports another stage's heavy dependencies).
SECTION_MODELS: dict[str, str] = {
    "synth": "skinflow.data.skinsynth:SynthConfig",
    "ingest": "skinflow.data.ingest:IngestConfig",
    "validate": "skinflow.data.validation:ValidateConfig",
    "caption": "skinflow.captions.stage:CaptionStageConfig",
    "base_model": "skinflow.model.base:BaseModelConfig",
    "warmup": "skinflow.model.warmup:WarmupConfig",
    "stage1_rl": "skinflow.rl.grpo:Stage1Config",
    "stage2_rl": "skinflow.rl.grpo:Stage2Config",
    "evaluate": "skinflow.eval.evaluate:EvalConfig",
    "ablation": "skinflow.eval.paired:AblationConfig",
    "attention": "skinflow.eval.attention:AttentionConfig",
    "report": "skinflow.report.inputs:ReportConfig",
    "cfa_baseline": "skinflow.baselines.cfa:CFAConfig",
    "skinvl_baseline": "skinflow.baselines.skinvl:SkinVLConfig",
}


def section_model(name: str) -> type[Section]:
    import importlib

    if name not in SECTION_MODELS:
        raise ConfigError(f"unknown params section {name!r}; known: {sorted(SECTION_MODELS)}")
    module, _, cls = SECTION_MODELS[name].partition(":")
    return getattr(importlib.import_module(module), cls)
