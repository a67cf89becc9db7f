"""Report inputs: provenance from dvc.lock, the code revision from git, tolerant loading, and the
report stage end to end in a scratch checkout."""

from __future__ import annotations

import json
import subprocess

import pandas as pd
import pytest
import yaml

from skinflow.io import md5_file
from skinflow.report.inputs import (
    SOURCES, Provenance, ReportConfig, code_revision, load_inputs, lock_index, provenance_of,
)

LOCK = {
    "schema": "2.0",
    "stages": {
        "validate": {"cmd": "python -m pipelines.validate",
                     "params": {"params.yaml": {"validate": {"min_side": 32, "max_class_imbalance": {"warn": 5.0}}}},
                     "outs": [{"path": "metrics/data.json", "md5": "to-fill"},
                              {"path": "data/reports/validation.json", "md5": "0" * 32}]},
        "evaluate@stage1": {"cmd": "python -m pipelines.evaluate --variant stage1",
                            "params": {"params.yaml": {"evaluate": {"n_boot": 1000}}},
                            "outs": [{"path": "data/eval/stage1", "md5": "abc.dir"},
                                     {"path": "metrics/eval/stage1.json", "md5": "to-fill"}]},
        "warmup": {"cmd": "python -m pipelines.warmup", "outs": [{"path": "models/warmup", "md5": "f00.dir"}]},
    },
}


def test_provenance_exact_inside_directory_and_untracked():
    index = lock_index(LOCK)
    exact = provenance_of("data/reports/validation.json", index, "0" * 32)
    assert (exact.stage, exact.lock_md5, exact.state) == ("validate", "0" * 32, "matches dvc.lock")
    assert exact.params == {"validate": {"min_side": 32, "max_class_imbalance": {"warn": 5.0}}}
    stale = provenance_of("data/reports/validation.json", index, "1" * 32)
    assert stale.state == "differs from dvc.lock"
    inside = provenance_of("data/eval/stage1/predictions.parquet", index, "9" * 32)
    assert (inside.stage, inside.lock_md5, inside.lock_path) == ("evaluate@stage1", "abc.dir", "data/eval/stage1")
    assert inside.state == "inside locked directory data/eval/stage1"
    assert provenance_of("data/eval/stage10.json", index, None).stage is None   # prefix, not a parent
    assert provenance_of("reports/ablation.json", index, "x").state == "not tracked by dvc.lock"
    assert provenance_of("metrics/eval/stage1.json", index, None).state == "locked, file absent"
    assert lock_index(None) == [] and lock_index({"stages": None}) == []


def _git(root, *args):
    subprocess.run(["git", *args], cwd=root, check=True, capture_output=True)


@pytest.fixture
def checkout(tmp_path):
    """A scratch git checkout with some pipeline outputs and a dvc.lock that locks two of them."""
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "config", "user.email", "dev@example.invalid")
    _git(tmp_path, "config", "user.name", "dev")
    (tmp_path / "metrics/eval").mkdir(parents=True)
    (tmp_path / "data/reports").mkdir(parents=True)
    (tmp_path / "metrics/data.json").write_text(json.dumps({"accepted": 10, "classes": 2}))
    (tmp_path / "data/reports/validation.json").write_text("{not json")             # unreadable
    (tmp_path / "metrics/warmup_curve.csv").write_text("step,loss\n10,2.5\n20,1.5\n")
    (tmp_path / "metrics/eval/stage1.json").write_text(json.dumps({"overall": {}, "n_images": 0}))
    (tmp_path / "code.py").write_text("x = 1\n")
    lock = json.loads(json.dumps(LOCK))
    lock["stages"]["validate"]["outs"][0]["md5"] = md5_file(tmp_path / "metrics/data.json")
    lock["stages"]["evaluate@stage1"]["outs"][1]["md5"] = "stale"
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump(lock))
    _git(tmp_path, "add", "-A")
    _git(tmp_path, "commit", "-q", "-m", "init")
    return tmp_path


def test_code_revision_dirty_ignores_pipeline_outputs(checkout):
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=checkout, capture_output=True, text=True).stdout.strip()
    assert code_revision(checkout) == {"commit": head, "dirty": False, "changed": []}
    (checkout / "metrics/data.json").write_text("{}")            # a result: rewritten by runs
    (checkout / "dvc.lock").write_text("stages: {}\n")
    (checkout / "untracked.py").write_text("")                   # untracked: not a change to code
    assert code_revision(checkout, ["metrics/data.json"])["dirty"] is False
    assert code_revision(checkout)["changed"] == ["metrics/data.json"]
    (checkout / "code.py").write_text("x = 2\n")
    revision = code_revision(checkout, ["metrics"])
    assert revision["dirty"] is True and revision["changed"] == ["code.py"]


def test_code_revision_outside_git(tmp_path_factory):
    assert code_revision(tmp_path_factory.mktemp("not_a_checkout")) == {"commit": None, "dirty": None, "changed": []}


def test_load_inputs_from_checkout(checkout):
    inputs = load_inputs(ReportConfig(), checkout)
    assert set(SOURCES) <= set(inputs.artifacts) and "eval/stage1" in inputs.artifacts
    data = inputs.get("data_metrics")
    assert data.present and data.data["classes"] == 2 and data.provenance.state == "matches dvc.lock"
    assert data.provenance.params == {"validate": {"min_side": 32, "max_class_imbalance": {"warn": 5.0}}}
    assert not inputs.get("validation").present                   # unreadable JSON: shown as not produced
    curve = inputs.get("warmup_curve").data
    assert isinstance(curve, pd.DataFrame) and list(curve["loss"]) == [2.5, 1.5]
    assert inputs.get("eval/stage1").provenance.state == "differs from dvc.lock"
    assert not inputs.get("attention_png").present and inputs.get("ablation").provenance == Provenance("reports/ablation.json")
    assert inputs.code["commit"] and inputs.code["dirty"] is False


def test_report_stage_end_to_end(checkout, monkeypatch):
    from pipelines import report as stage

    monkeypatch.chdir(checkout)
    (checkout / "params.yaml").write_text("report:\n  title: Scratch run\n  chart_max_points: 50\n")
    result = stage.main([])
    assert "metrics/data.json" in result["present"] and "reports/attention.png" in result["absent"]
    html = (checkout / "reports/report.html").read_text()
    md = (checkout / "reports/report.md").read_text()
    assert "<h1>Scratch run</h1>" in html and "<svg" in html
    assert "data/reports/validation.json: not produced in this run" in md
    assert "| metrics/data.json | validate |" in md
    with pytest.raises(Exception):
        stage.main(["--set", "unknown_key=1"])
