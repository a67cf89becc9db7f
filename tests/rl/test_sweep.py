"""The validation sweep: it refuses the test split, caches runs by what shapes them, ranks safely."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from skinflow.rl.grpo import Stage2Config
from skinflow.config import load_section
from skinflow.rl.sweep import SECTIONS, SweepSpec, rank, run_key

REPO = Path(__file__).resolve().parents[2]
METRICS = ("top1_exact", "top6_exact", "malignant_miss_at1", "dangerous_error_rate", "format_compliance")


def diff(value: float, low: float, high: float) -> dict:
    return {"diff": value, "ci_low": low, "ci_high": high, "effect": low > 0 or high < 0}


def candidate(top1: float, top6: float, miss: tuple[float, float, float] = (0.0, -0.05, 0.05),
              fmt: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> dict:
    return {"vs_baseline": {"top1_exact": diff(top1, top1 - 0.02, top1 + 0.02),
                            "top6_exact": diff(top6, top6 - 0.02, top6 + 0.02),
                            "malignant_miss_at1": diff(*miss), "dangerous_error_rate": diff(*miss),
                            "format_compliance": diff(*fmt)}}


def test_the_test_split_cannot_be_tuned_on():
    with pytest.raises(ValidationError):
        SweepSpec(stage="stage2", init="models/stage1-s{seed}", split="test", candidates={"a": []})


def test_every_shipped_sweep_file_loads():
    files = [p for p in sorted((REPO / "configs" / "tuning").glob("*.yaml"))
             if yaml.safe_load(p.read_text())["stage"] in SECTIONS]   # the baselines' sweeps: tests/baselines
    assert files, "no sweep files shipped"
    for path in files:
        spec = SweepSpec.model_validate(yaml.safe_load(path.read_text()))
        section, model = SECTIONS[spec.stage]
        for overrides in spec.candidates.values():   # every candidate is a valid config of its stage
            load_section(section, model, REPO / "params.yaml", overrides)


def test_a_more_accurate_but_less_safe_candidate_ranks_below_a_safe_one():
    ranking = rank({"reckless": candidate(0.10, 0.10, miss=(0.08, 0.03, 0.13)),
                    "careful": candidate(0.03, 0.03),
                    "worse": candidate(-0.01, 0.0),
                    "sloppy": candidate(0.05, 0.05, fmt=(-0.02, -0.03, -0.01))}, METRICS)
    assert [r["candidate"] for r in ranking] == ["careful", "worse", "reckless", "sloppy"]
    assert ranking[0]["eligible"] and not ranking[2]["eligible"]
    assert ranking[2]["unsafe"] == ["malignant_miss_at1", "dangerous_error_rate"]
    assert ranking[3]["format_falls"]
    assert ranking[0]["beats_baseline"] == ["top1_exact", "top6_exact"]


def test_run_key_follows_the_config_but_not_the_work_dir(tmp_path):
    init = tmp_path / "init"
    init.mkdir()
    (init / "model.safetensors").write_bytes(b"weights")
    manifest = tmp_path / "manifest.parquet"
    manifest.write_bytes(b"rows")
    a = run_key(Stage2Config(work_dir="x"), str(init), str(manifest))
    assert a == run_key(Stage2Config(work_dir="y"), str(init), str(manifest))
    assert a != run_key(Stage2Config(learning_rate=1e-3), str(init), str(manifest))
    (init / "model.safetensors").write_bytes(b"other weights")
    assert a != run_key(Stage2Config(work_dir="x"), str(init), str(manifest))
