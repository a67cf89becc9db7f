"""The caption stage: conservation, quarantine of failed rows, resume, and its checks."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from skinflow.captions.parser import parse_caption
from skinflow.captions.captioning import CaptionStageConfig, run_captions
from skinflow.data.ingest import IngestConfig, ingest
from skinflow.data.skinsynth import SynthConfig, generate
from skinflow.data.validation import ValidateConfig, validate


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("captions")
    generate(root / "synth", SynthConfig.tiny())
    rows, taxonomy, _ = ingest(IngestConfig(csv=str(root / "synth/fitzpatrick17k.csv"),
                                            image_root=str(root / "synth/images"),
                                            taxonomy=str(root / "synth/taxonomy.csv"), workers=1))
    manifest, _, _ = validate(rows, taxonomy, ValidateConfig())
    return root, manifest


def _cfg(root, attributes, progress="progress"):
    return CaptionStageConfig(attributes=str(attributes), progress_dir=str(root / progress))


def test_oracle_captions_every_row_and_they_parse(dataset):
    root, manifest = dataset
    table, quarantine, report = run_captions(manifest, _cfg(root, root / "synth/attributes.parquet"))
    assert len(table) == len(manifest) and len(quarantine) == 0
    assert report["status"] == "pass" and report["parse_rate"] == 1.0
    assert all(parse_caption(text).ok for text in table["caption_json"])
    assert report["quality_vs_reference"]["macro"] == 1.0  # the oracle is its own reference
    assert {e["name"] for e in report["expectations"]} >= {"captions_parse_under_schema",
                                                          "no_diagnosis_in_description"}


def test_rows_without_ground_truth_are_quarantined_not_lost(dataset, tmp_path):
    root, manifest = dataset
    attributes = pd.read_parquet(root / "synth/attributes.parquet")
    missing = set(manifest["image_id"].head(5))
    attributes[~attributes["md5hash"].isin(missing)].to_parquet(tmp_path / "partial.parquet")
    table, quarantine, report = run_captions(manifest, CaptionStageConfig(
        attributes=str(tmp_path / "partial.parquet"), progress_dir=str(tmp_path / "p")))
    assert report["rows_in"] == len(manifest) == len(table) + len(quarantine)
    assert set(quarantine["image_id"]) == missing
    assert quarantine["reason"].str.startswith("caption_").all()
    assert json.loads(quarantine["record"].iat[0])["status"] == "failed"
    assert report["parse_rate"] == pytest.approx((len(manifest) - 5) / len(manifest))
    assert report["status"] == "fail"  # 59 of 64 is below the 0.95 parse-rate floor



def test_rerun_reuses_finished_rows(dataset, tmp_path):
    root, manifest = dataset
    cfg = CaptionStageConfig(attributes=str(root / "synth/attributes.parquet"), progress_dir=str(tmp_path / "p"))
    first = run_captions(manifest.head(20), cfg)
    second = run_captions(manifest, cfg)
    assert first[2]["reused_from_progress"] == 0
    assert second[2]["reused_from_progress"] == 20
    assert len(second[0]) == len(manifest)
    # A torn last line (crash mid-write) is ignored and that row captioned again.
    progress = next((tmp_path / "p").glob("*.jsonl"))
    progress.write_text(progress.read_text() + '{"key": "torn')
    third = run_captions(manifest, cfg)
    assert third[2]["reused_from_progress"] == len(manifest)


def test_low_parse_rate_fails_the_stage(dataset, tmp_path):
    root, manifest = dataset
    table, quarantine, report = run_captions(manifest, CaptionStageConfig(
        attributes=str(tmp_path / "absent.parquet"), progress_dir=str(tmp_path / "p")))
    assert len(table) == 0 and len(quarantine) == len(manifest)
    assert report["status"] == "fail" and any("parse_rate" in f for f in report["failures"])


def test_captioner_none_passes_every_row_on_uncaptioned(dataset, tmp_path):
    from skinflow.captions.captioners import CaptionerConfig
    from skinflow.captions.captioning import CAPTION_COLUMNS, NOT_APPLICABLE

    root, manifest = dataset
    table, quarantine, report = run_captions(manifest, CaptionStageConfig(
        captioner=CaptionerConfig(kind="none"), attributes=None, progress_dir=str(tmp_path / "p")))
    assert len(table) == len(quarantine) == 0 and list(table.columns) == list(CAPTION_COLUMNS)
    assert report["status"] == NOT_APPLICABLE and report["parse_rate"] is None
    assert report["rows_in"] == report["not_requested"] == len(manifest)
    assert not (tmp_path / "p").exists()  # nothing to resume


def test_a_table_reports_its_coverage_over_every_row_even_when_resumed(dataset, tmp_path):
    """Rows reused from the progress file were not asked again, yet the coverage report counts them."""
    from skinflow.captions.captioners import CaptionerConfig

    root, manifest = dataset
    ids = list(manifest["image_id"])
    texts = ["Single pink papule with scale, well-defined regular border, round, 5 to 10 mm, good image quality, "
             "localised distribution."] * 10
    pd.DataFrame({"image_id": ids[:10], "caption": texts}).to_csv(tmp_path / "captions.csv", index=False)
    cfg = CaptionStageConfig(captioner=CaptionerConfig(kind="table", table={"path": str(tmp_path / "captions.csv")}),
                             attributes=None, progress_dir=str(tmp_path / "p"), min_parse_rate=0.0)
    table, quarantine, first = run_captions(manifest, cfg)
    assert len(table) == 10 and len(quarantine) == len(manifest) - 10
    assert set(quarantine["reason"]) == {"caption_NOT_IN_TABLE"}
    _, _, again = run_captions(manifest, cfg)
    assert again["reused_from_progress"] == len(manifest)
    assert again["source_coverage"] == first["source_coverage"]
    assert first["source_coverage"]["fields"]["primary_morphology"]["stated"] == 10
