"""Typed configuration: one pydantic model per ``params.yaml`` section.

Stages read only their own section. Unknown keys are errors that name the key, so a typo never
silently falls back to a default. CLI overrides use dotted ``key=value`` pairs parsed as YAML.

Knobs that change how fast a stage runs or where it keeps scratch files, never what it writes (worker and
thread counts, cache and progress directories), are a section's ``RUNTIME`` keys. They live in params.yaml
under ``runtime.<section>``, which no DVC stage depends on, so changing one re-runs nothing; the stage still
sees them as fields of its own section.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

DEFAULT_PARAMS = Path("params.yaml")
RUNTIME = "runtime"


class Section(BaseModel):
    """Base for every params section: strict keys, immutable after load."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    # Field names that cannot change the stage's outputs; they are read from ``runtime.<section>``.
    RUNTIME: ClassVar[frozenset[str]] = frozenset()


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
    params = read_params(path)
    if params.get(name) is None:
        raise ConfigError(f"{path}: section {name!r} is missing")
    if not isinstance(params[name], dict):
        raise ConfigError(f"{path}: section {name!r} is not a mapping")
    merged = {**params[name], **runtime_knobs(params, name, model, path)}
    section = apply_overrides({name: merged}, [f"{name}.{o}" for o in overrides])[name]
    try:
        return model.model_validate(section)
    except ValidationError as exc:
        problems = "; ".join(
            f"{name}.{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"{path}: invalid section {name!r}: {problems}") from None


def runtime_knobs(params: dict[str, Any], name: str, model: type[Section], path: str | Path = "params") -> dict:
    """``runtime.<name>`` of ``params``, checked both ways: a runtime knob written inside the section (where
    changing it would re-run the stage) and a result-shaping key written under runtime (where changing it
    would not) are errors that say where the key belongs."""
    misplaced = sorted(model.RUNTIME & set(params.get(name) or {}))
    if misplaced:
        raise ConfigError(f"{path}: {', '.join(f'{name}.{k}' for k in misplaced)} cannot change results: "
                          f"set it under {RUNTIME}.{name} so that changing it re-runs nothing")
    knobs = (params.get(RUNTIME) or {}).get(name) or {}
    if not isinstance(knobs, dict):
        raise ConfigError(f"{path}: {RUNTIME}.{name} is not a mapping")
    foreign = sorted(set(knobs) - model.RUNTIME)
    if foreign:
        raise ConfigError(f"{path}: {', '.join(f'{RUNTIME}.{name}.{k}' for k in foreign)} is not a runtime knob of "
                          f"{name!r} (those are {sorted(model.RUNTIME)}); a key that can change results belongs "
                          f"in section {name!r}, where the stage depends on it")
    return dict(knobs)


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
    "caption": "skinflow.captions.captioning:CaptionStageConfig",
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


def overlay_params_text(text: str, overlay: dict[str, Any] | str | Path) -> str:
    """params.yaml's ``text`` with an overlay applied the way :func:`overlay_params` applies it (each overlay key
    replaces that key of its section), as an edit of the text: every comment and line outside the replaced keys
    is kept, and each replaced key says which overlay set it. Checked against :func:`overlay_params`."""
    import re

    name = None
    if not isinstance(overlay, dict):
        name, overlay = Path(overlay).as_posix(), read_params(overlay)
    lines = text.splitlines()
    for section, values in overlay.items():
        if not isinstance(values, dict):
            raise ConfigError(f"overlay section {section!r} is not a mapping")
        head = next((i for i, line in enumerate(lines) if re.match(rf"{re.escape(section)}:(\s*(#.*)?)$", line)), None)
        if head is None:
            raise ConfigError(f"overlay section {section!r} is not a block section of the params file")
        end = next((i for i in range(head + 1, len(lines)) if re.match(r"[^\s#]", lines[i])), len(lines))
        while end > head + 1 and (not lines[end - 1].strip() or lines[end - 1].startswith("#")):
            end -= 1  # blank lines and column-0 comments before the next section belong to it
        for key, value in values.items():
            rendered = f"  {key}: {_flow_yaml(value)}" + (f"  # {name}" if name else "")
            start = next((i for i in range(head + 1, end) if re.match(rf"  {re.escape(str(key))}:(\s|$)", lines[i])), None)
            if start is None:
                lines.insert(end, rendered)
                end += 1
                continue
            stop = start + 1
            while stop < end and lines[stop].strip() and len(lines[stop]) - len(lines[stop].lstrip()) > 2:
                stop += 1
            if (yaml.safe_load("\n".join(line[2:] for line in lines[start:stop])) or {}).get(key) == value:
                continue  # unchanged: keep the line and its comment
            lines[start:stop] = [rendered]
            end -= stop - start - 1
    result = "\n".join(lines) + "\n"
    expected = overlay_params(yaml.safe_load(text) or {}, overlay)
    if yaml.safe_load(result) != expected:
        raise ConfigError("the overlay could not be applied as a text edit; merge it by hand "
                          "(a block the editor does not understand)")
    return result


def _flow_yaml(value: Any) -> str:
    """One-line YAML for a value (flow style for mappings and lists)."""
    return yaml.safe_dump(value, default_flow_style=True, width=float("inf"), sort_keys=False).strip().removesuffix("\n...").strip()
