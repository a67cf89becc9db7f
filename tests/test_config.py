"""Typed params sections: unknown keys are named errors, overrides are YAML, params.yaml loads."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel, ValidationError

from skinflow.config import (
    RUNTIME, SECTION_MODELS, ConfigError, Section, apply_overrides, load_section, overlay_params, read_params,
    section_model,
)

REPO = Path(__file__).resolve().parents[1]
PARAMS = REPO / "params.yaml"

class Inner(Section):
    seed: int = 0
    name: str = "x"


class Toy(Section):
    rate: float = 0.5
    tags: list[str] = []
    inner: Inner = Inner()


def write_params(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- load_section

def test_typo_key_is_named(tmp_path):
    path = write_params(tmp_path, {"toy": {"rate": 0.1, "raet": 0.2}})
    with pytest.raises(ConfigError) as err:
        load_section("toy", Toy, path)
    message = str(err.value)
    assert "toy.raet" in message and "'toy'" in message
    assert "rate" not in message.replace("raet", "")  # the valid key is not blamed


def test_nested_typo_key_is_named_with_its_path(tmp_path):
    path = write_params(tmp_path, {"toy": {"inner": {"sede": 3}}})
    with pytest.raises(ConfigError, match=r"toy\.inner\.sede"):
        load_section("toy", Toy, path)


def test_wrong_type_is_named(tmp_path):
    path = write_params(tmp_path, {"toy": {"rate": "fast"}})
    with pytest.raises(ConfigError, match=r"toy\.rate"):
        load_section("toy", Toy, path)


def test_missing_section(tmp_path):
    path = write_params(tmp_path, {"other": {"a": 1}})
    with pytest.raises(ConfigError, match="section 'toy' is missing"):
        load_section("toy", Toy, path)


def test_missing_params_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_section("toy", Toy, tmp_path / "nope.yaml")


def test_top_level_must_be_a_mapping(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("- just\n- a list\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="mapping"):
        read_params(path)


def test_empty_params_file_reads_as_empty(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("", encoding="utf-8")
    assert read_params(path) == {}
    with pytest.raises(ConfigError, match="missing"):
        load_section("toy", Toy, path)


def test_loaded_section_is_frozen(tmp_path):
    cfg = load_section("toy", Toy, write_params(tmp_path, {"toy": {"rate": 0.25}}))
    assert cfg.rate == 0.25 and cfg.inner == Inner()
    with pytest.raises(ValidationError):
        cfg.rate = 0.9


def test_empty_section_uses_defaults(tmp_path):
    assert load_section("toy", Toy, write_params(tmp_path, {"toy": {}})) == Toy()


# --------------------------------------------------------------------------- overrides

def test_override_values_are_parsed_as_yaml():
    data = apply_overrides({"a": {"c": 1}}, ["a.b=3", "a.f=0.5", "a.t=true", "a.n=null", "a.l=[1, x]",
                                             "a.s=hello", "a.q='3'", "a.eq=x=y"])
    assert data == {"a": {"c": 1, "b": 3, "f": 0.5, "t": True, "n": None, "l": [1, "x"], "s": "hello",
                          "q": "3", "eq": "x=y"}}
    assert isinstance(data["a"]["b"], int)


def test_override_creates_nested_keys_and_does_not_mutate_input():
    original = {"a": {"b": {"c": 1}}, "z": [1, 2]}
    data = apply_overrides(original, ["a.b.d=2", "x.y.z=4"])
    assert data["a"]["b"] == {"c": 1, "d": 2} and data["x"] == {"y": {"z": 4}}
    assert original == {"a": {"b": {"c": 1}}, "z": [1, 2]}
    data["z"].append(3)
    assert original["z"] == [1, 2]


def test_override_without_equals_sign_is_an_error():
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides({}, ["a.b"])


def test_override_through_a_scalar_is_an_error():
    with pytest.raises(ConfigError, match="not a section"):
        apply_overrides({"a": 1}, ["a.b=2"])


def test_load_section_applies_overrides(tmp_path):
    path = write_params(tmp_path, {"toy": {"rate": 0.1, "inner": {"seed": 1}}})
    cfg = load_section("toy", Toy, path, overrides=["rate=0.75", "inner.seed=9", "tags=[a, b]"])
    assert (cfg.rate, cfg.inner.seed, cfg.tags) == (0.75, 9, ["a", "b"])
    assert yaml.safe_load(path.read_text())["toy"]["rate"] == 0.1  # the file is untouched


def test_override_with_unknown_key_is_named(tmp_path):
    path = write_params(tmp_path, {"toy": {"rate": 0.1}})
    with pytest.raises(ConfigError, match=r"toy\.inner\.sed"):
        load_section("toy", Toy, path, overrides=["inner.sed=4"])


# --------------------------------------------------------------------------- the repo's params.yaml

def _params_sections() -> list[str]:
    return sorted(set(read_params(PARAMS)) - {RUNTIME}) if PARAMS.exists() else []


@pytest.mark.parametrize("section", _params_sections())
def test_repo_params_section_loads(section):
    assert isinstance(read_params(PARAMS)[section], dict), f"section {section!r} is not a mapping"
    # Every shipped section must be registered with its typed model: an unregistered one fails.
    assert section in SECTION_MODELS, f"params section {section!r} has no model in SECTION_MODELS"
    model = section_model(section)
    cfg = load_section(section, model, PARAMS)
    assert isinstance(cfg, model)
    # Every key written in params.yaml is a real field (extra keys would already have raised),
    # and what was written is what was loaded.
    written = read_params(PARAMS)[section]
    dumped = cfg.model_dump()
    for key, value in written.items():
        if not isinstance(value, dict):
            assert dumped[key] == value, (section, key)


SHIPPED_OVERLAYS = sorted((REPO / "configs").glob("params-*.yaml"))


@pytest.mark.parametrize("overlay", SHIPPED_OVERLAYS, ids=lambda p: p.name)
def test_shipped_overlay_loads_under_every_section_model(overlay, tmp_path):
    merged = overlay_params(read_params(PARAMS), overlay)
    path = write_params(tmp_path, merged)
    for section, values in read_params(overlay).items():
        if section == RUNTIME:
            continue
        loaded = load_section(section, section_model(section), path).model_dump()
        assert _written_values_loaded(values, loaded), (overlay.name, section, values, loaded)


def _written_values_loaded(written: dict, loaded: dict) -> bool:
    """Every value written (at any depth) is what the typed section holds; defaults may fill the rest."""
    return all(_written_values_loaded(v, loaded.get(k) or {}) if isinstance(v, dict) else loaded.get(k) == v
               for k, v in written.items())


def test_overlay_replaces_keys_and_names_unknown_sections():
    params = {"a": {"x": 1, "y": {"z": 2}}, "b": {"k": 0}}
    merged = overlay_params(params, {"a": {"y": {"w": 3}}})
    assert merged == {"a": {"x": 1, "y": {"w": 3}}, "b": {"k": 0}} and params["a"]["y"] == {"z": 2}
    with pytest.raises(ConfigError, match="'c' is not a section"):
        overlay_params(params, {"c": {"x": 1}})
    with pytest.raises(ConfigError, match="'a' is not a mapping"):
        overlay_params(params, {"a": 3})


def test_repo_params_has_the_data_sections():
    assert PARAMS.exists()
    assert {"ingest", "validate"} <= set(_params_sections())


def test_repo_ingest_section_nested_splits_and_override():
    from skinflow.data.ingest import IngestConfig
    from skinflow.data.splits import SplitConfig

    cfg = load_section("ingest", IngestConfig, PARAMS, overrides=["splits.seed=5", "splits.protocol=a12"])
    assert isinstance(cfg.splits, SplitConfig)
    assert (cfg.splits.seed, cfg.splits.protocol) == (5, "a12")
    with pytest.raises(ConfigError, match=r"ingest\.splits"):
        load_section("ingest", IngestConfig, PARAMS, overrides=["splits.train=0.9"])
    with pytest.raises(ConfigError, match=r"ingest\.sorce"):
        load_section("ingest", IngestConfig, PARAMS, overrides=["sorce=generic"])


# --------------------------------------------------------------------------- one set of defaults

_REQUIRED = object()


def _code_default(owner, key: str):
    """The value a section gets for ``key`` when params.yaml does not set it (``owner``: a model class, or the
    default instance of a nested section)."""
    if not isinstance(owner, type):
        return getattr(owner, key)
    field = owner.model_fields[key]
    return _REQUIRED if field.is_required() else field.get_default(call_default_factory=True)


def _drifted(owner, loaded, written: dict, path: str) -> tuple[list[str], int]:
    """``(["path: code default X, params.yaml Y", ...], keys compared)`` over every key params.yaml sets, at any depth."""
    drifts, compared = [], 0
    for key, value in written.items():
        default, given = _code_default(owner, key), getattr(loaded, key)
        if default is _REQUIRED:
            continue
        if isinstance(default, BaseModel) and isinstance(value, dict):
            more, n = _drifted(default, given, value, f"{path}.{key}")
            drifts, compared = drifts + more, compared + n
            continue
        compared += 1
        if default != given:
            drifts.append(f"{path}.{key}: code default {default!r}, params.yaml {given!r}")
    return drifts, compared


def test_code_defaults_equal_params_yaml():
    """params.yaml is the one source of a default: a section built without it (CLI defaults, tests, benchmarks,
    corpus helpers) gets exactly what the pipeline runs with."""
    params = read_params(PARAMS)
    drifts, compared = [], 0
    for section in _params_sections():
        model = section_model(section)
        written = {**params[section], **params[RUNTIME].get(section, {})}
        more, n = _drifted(model, load_section(section, model, PARAMS), written, section)
        drifts, compared = drifts + more, compared + n
    assert compared > 100, compared
    assert not drifts, "set these code defaults to params.yaml's values:\n" + "\n".join(drifts)


# --------------------------------------------------------------------------- runtime knobs

class Knobbed(Section):
    RUNTIME = frozenset({"workers"})
    rate: float = 0.5
    workers: int = 0


def test_runtime_knobs_load_into_their_section_and_overrides_still_win(tmp_path):
    path = write_params(tmp_path, {"toy": {"rate": 0.1}, RUNTIME: {"toy": {"workers": 4}}})
    assert load_section("toy", Knobbed, path) == Knobbed(rate=0.1, workers=4)
    assert load_section("toy", Knobbed, path, overrides=["workers=2"]).workers == 2


def test_a_runtime_knob_inside_its_section_is_an_error_that_says_where_it_goes(tmp_path):
    path = write_params(tmp_path, {"toy": {"rate": 0.1, "workers": 4}})
    with pytest.raises(ConfigError, match=r"toy\.workers cannot change results: set it under runtime\.toy"):
        load_section("toy", Knobbed, path)


def test_a_result_key_under_runtime_is_an_error(tmp_path):
    path = write_params(tmp_path, {"toy": {}, RUNTIME: {"toy": {"rate": 0.9}}})
    with pytest.raises(ConfigError, match=r"runtime\.toy\.rate is not a runtime knob"):
        load_section("toy", Knobbed, path)


def test_every_runtime_knob_of_every_section_is_set_in_params_runtime():
    """params.yaml stays the one place a default lives: each model's runtime knobs are written there, and the
    runtime section names only registered sections."""
    runtime = read_params(PARAMS)[RUNTIME]
    assert set(runtime) <= set(SECTION_MODELS), set(runtime) - set(SECTION_MODELS)
    for section in _params_sections():
        assert set(runtime.get(section, {})) == set(section_model(section).RUNTIME), section


# --------------------------------------------------------------------------- switching configurations

@pytest.mark.parametrize("overlay", SHIPPED_OVERLAYS, ids=lambda p: p.name)
def test_overlay_as_a_text_edit_equals_the_merge_and_keeps_the_comments(overlay):
    from skinflow.config import overlay_params_text

    text = PARAMS.read_text(encoding="utf-8")
    edited = overlay_params_text(text, overlay)
    assert yaml.safe_load(edited) == overlay_params(read_params(PARAMS), overlay)
    # Every section header and full-line comment survives; only replaced keys' own blocks may go.
    kept = [line for line in text.splitlines() if line.startswith("#") or (line[:1].isalpha() and line.endswith(":"))]
    assert all(line in edited.splitlines() for line in kept)
    assert overlay_params_text(edited, overlay) == edited, "applying an overlay twice changes nothing"


def test_overlay_text_edit_adds_keys_a_section_lacks_and_names_unknown_sections():
    from skinflow.config import overlay_params_text

    text = "a:   # first\n  x: 1  # why x\n  y:\n    z: 2\n\n# about b\nb:\n  k: 0\n"
    edited = overlay_params_text(text, {"a": {"y": {"w": 3}, "new": [1, 2]}})
    assert edited == "a:   # first\n  x: 1  # why x\n  y: {w: 3}\n  new: [1, 2]\n\n# about b\nb:\n  k: 0\n"
    with pytest.raises(ConfigError, match="'c' is not a block section"):
        overlay_params_text(text, {"c": {"x": 1}})


def test_params_use_writes_the_overlay_once_and_real_data_turns_synth_off(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from pipelines.synth import main as synth_main

    from skinflow.cli import app
    from skinflow.data.skinsynth import SynthConfig

    params = tmp_path / "params.yaml"
    params.write_text(PARAMS.read_text(encoding="utf-8"), encoding="utf-8")
    overlay = REPO / "configs" / "params-fitzpatrick17k.yaml"
    first = CliRunner().invoke(app, ["params", "use", str(overlay), "--params", str(params)])
    assert first.exit_code == 0, first.output
    assert "+  csv: /data/fitzpatrick17k/fitzpatrick17k.csv" in first.output and "wrote" in first.output
    assert load_section("synth", SynthConfig, params).enabled is False
    monkeypatch.chdir(tmp_path)
    assert synth_main(["--params", str(params)]) == {"enabled": False, "n_images": 0}
    assert [p.name for p in (tmp_path / "data" / "skinsynth").iterdir()] == ["NOT_USED.txt"]
    again = CliRunner().invoke(app, ["params", "use", str(overlay), "--params", str(params)])
    assert "already holds every value" in again.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("warmup: {max_steps: -1}\n")
    before = params.read_text()
    refused = CliRunner().invoke(app, ["params", "use", str(bad), "--params", str(params)])
    assert refused.exit_code == 2 and "warmup.max_steps" in refused.output and params.read_text() == before
