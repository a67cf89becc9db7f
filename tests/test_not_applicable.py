"""A stage that cannot apply (Stage I without captions) passes its start model through with a marker, and every stage
built on a marked model says so instead of training or scoring a copy."""

from __future__ import annotations

import json

import pandas as pd

from skinflow.not_applicable import MARKER, not_applicable_reason, pass_through, upstream_reason
from skinflow.rl.grpo import Stage1Config, Stage2Config, run_grpo


def _model(path):
    path.mkdir()
    (path / "config.json").write_text("{}")
    return path


def test_pass_through_copies_the_model_and_records_why(tmp_path):
    start = _model(tmp_path / "warmup")
    summary = pass_through(start, tmp_path / "stage1", "no captions")
    assert summary == {"enabled": False, "not_applicable": "no captions", "history": []}
    assert (tmp_path / "stage1/config.json").read_text() == "{}"
    assert not_applicable_reason(tmp_path / "stage1") == "no captions" and not_applicable_reason(start) is None
    assert upstream_reason(start) is None
    assert upstream_reason(tmp_path / "stage1") == f"starts from {(tmp_path / 'stage1').as_posix()}, which is not " \
                                                   "applicable (no captions)"


def test_stage1_without_captions_and_stage2_after_it_are_not_applicable(tmp_path):
    """Neither loads a model or TRL: the decision is made from the captions table and the start model's marker."""
    start = _model(tmp_path / "warmup")
    manifest = pd.DataFrame({"image_id": ["a"], "split": ["train"], "label": ["melanoma"]})
    no_captions = pd.DataFrame({"image_id": pd.Series(dtype=str), "caption_json": pd.Series(dtype=str)})
    taxonomy = pd.DataFrame({"label": ["melanoma"], "nine_partition_label": ["m"], "three_partition_label": ["m"]})
    stage1 = run_grpo("stage1", str(start), str(tmp_path / "s1"), manifest, no_captions, taxonomy, Stage1Config())
    assert "captioner.kind is none" in stage1["not_applicable"]
    stage2 = run_grpo("stage2", str(tmp_path / "s1"), str(tmp_path / "s2"), manifest, no_captions, taxonomy,
                      Stage2Config())
    assert stage2["not_applicable"].startswith(f"starts from {tmp_path / 's1'}")
    assert json.loads((tmp_path / "s2" / MARKER).read_text())["reason"] == stage2["not_applicable"]
