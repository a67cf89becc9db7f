"""`dvc repro` end to end on the 200 real ISIC UDA-1 images (../shared/data/isic_uda1), at tiny sizes, twice:
with ``captioner: none`` (no captions: Stage I and the rows built on it are reported as not produced) and with a
``table`` of free-text captions written for 40 of the images (tests/data/isic_uda1_captions.csv).

Checks rows are conserved through every data stage, the two undiagnosed images are quarantined with a reason,
every declared output of every stage exists, the rows that cannot be produced say why, and the report renders.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.shared_data import SHARED
from tests.test_pipeline_e2e import _run  # the same environment and failure report

REPO = Path(__file__).resolve().parents[1]
ISIC = SHARED / "isic_uda1"
TABLE_DEFAULTS = {  # what a dermoscopic close-up of one lesion is, when the text does not say
    "body_site": "unknown", "fitzpatrick_type": "unknown", "image_quality": "good", "lesion_count": "single",
    "distribution": "localised", "size_class": "5_to_10mm",
}
CAPTIONERS = {
    "none": {"kind": "none"},
    "table": {"kind": "table", "table": {"path": "tests/data/isic_uda1_captions.csv", "defaults": TABLE_DEFAULTS}},
}
STAGE1_ROWS = ("stage1", "stage2", "s1_s2")  # rows whose chain includes Stage I


def overlay(captioner: dict) -> dict:
    """configs/params-tiny.yaml + configs/params-isic-uda1.yaml (+ the captioner), key by key, the shared folder
    named absolutely (the run happens in a copy elsewhere), one seed and no controls to keep CI short."""
    merged: dict[str, dict] = {}
    for name in ("configs/params-tiny.yaml", "configs/params-isic-uda1.yaml"):
        for section, values in yaml.safe_load((REPO / name).read_text(encoding="utf-8")).items():
            merged.setdefault(section, {}).update(values)
    merged["synth"] = {"enabled": False}
    merged["ingest"].update(csv=str(ISIC / "labels.csv"), image_root=str(ISIC))
    merged["caption"].update(captioner=captioner, min_parse_rate=0.0)
    merged["ablation"].update(seeds=[0], control_seeds=[])
    return merged


@pytest.fixture(scope="module", params=sorted(CAPTIONERS))
def run(request, tmp_path_factory) -> tuple[str, Path]:
    if not (ISIC / "labels.csv").exists():
        pytest.skip(f"the real ISIC UDA-1 images are not under {ISIC} (set SKINFLOW_SHARED)")
    from skinflow.orchestration.checkout import clean_copy

    dest = clean_copy(REPO, tmp_path_factory.mktemp(f"isic-{request.param}"), overlay(CAPTIONERS[request.param]))
    _run([sys.executable, "-m", "dvc", "repro"], dest)
    return request.param, dest


def _json(repo: Path, path: str) -> dict:
    return json.loads((repo / path).read_text(encoding="utf-8"))


@pytest.mark.slow
def test_rows_are_conserved_and_the_undiagnosed_images_quarantined(run):
    captioner, repo = run
    validation = _json(repo, "data/reports/validation.json")
    assert validation["rows_in"] == 200 == validation["accepted"] + validation["quarantined"]
    quarantine = pd.read_parquet(repo / "data/quarantine/validate.parquet")
    missing = quarantine[quarantine["reason"] == "missing_label"]
    assert sorted(missing["image_id"]) == ["ISIC_0000257", "ISIC_0000454"]
    manifest = pd.read_parquet(repo / "data/manifest.parquet")
    assert len(manifest) == validation["accepted"]
    captions = pd.read_parquet(repo / "data/captions/captions.parquet")
    caption_quarantine = pd.read_parquet(repo / "data/quarantine/caption.parquet")
    report = _json(repo, "data/reports/captions.json")
    assert report["rows_in"] == len(manifest)
    if captioner == "none":
        assert len(captions) == len(caption_quarantine) == 0 and report["not_requested"] == len(manifest)
        assert report["status"] == "not_applicable"
    else:
        assert len(manifest) == len(captions) + len(caption_quarantine)
        assert 30 <= len(captions) <= 40, len(captions)  # the table covers 40 images, a few deliberately unusable
        assert (caption_quarantine["reason"] == "caption_NOT_IN_TABLE").sum() >= len(manifest) - 40
        assert report["source_coverage"]["fields"]  # which schema fields the free text could fill


@pytest.mark.slow
def test_every_stage_produces_its_declared_outputs(run):
    from dvc.repo import Repo

    _, repo = run
    with Repo(str(repo)) as dvc:
        stages = {stage.name: [str(out.def_path) for out in stage.outs] for stage in dvc.index.stages}
    for name, outs in stages.items():
        for path in outs:
            assert (repo / path).exists(), f"stage {name} did not produce {path}"


@pytest.mark.slow
def test_rows_that_need_captions_say_why_they_were_not_produced(run):
    captioner, repo = run
    ablation = _json(repo, "reports/ablation_full.json")
    produced, not_produced = set(ablation["rows"]), ablation.get("not_produced", {})
    assert {"warmup", "stage2_only", "cfa"} <= produced
    if captioner == "none":
        assert set(STAGE1_ROWS) | {"skinvl"} <= set(not_produced) and not set(STAGE1_ROWS) & produced
        assert all("captioner.kind is none" in why for why in not_produced.values()), not_produced
        assert _json(repo, "metrics/rl/stage1-s0.json")["not_applicable"]
        assert "not produced" in (repo / "reports/ablation.md").read_text(encoding="utf-8").lower()
    else:
        assert set(STAGE1_ROWS) | {"skinvl"} <= produced and not not_produced
        stage1 = _json(repo, "metrics/rl/stage1-s0.json")
        assert stage1["enabled"] and stage1["train_images"] > 0
    html = (repo / "reports/report.html").read_text(encoding="utf-8")
    assert "<html" in html.lower() and "ablation" in html.lower()
