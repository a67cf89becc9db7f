"""`dvc repro` end to end on a tiny SkinSynth, in a throwaway copy of the repository.

Checks the DAG runs from a clean checkout, every stage's outputs appear, row conservation holds
across the data stages, and a second `dvc repro` is a no-op.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "DO_NOT_TRACK": "1", "HF_HUB_OFFLINE": "1",
           "GX_ANALYTICS_ENABLED": "false", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result


@pytest.fixture(scope="module")
def repo_copy(tmp_path_factory) -> Path:
    from skinflow.orchestration.checkout import clean_copy

    dest = clean_copy(REPO, tmp_path_factory.mktemp("repo"), "configs/params-tiny.yaml")
    _run([sys.executable, "-m", "dvc", "repro"], dest)
    return dest


@pytest.mark.slow
def test_repro_produces_every_declared_output(repo_copy):
    stages = yaml.safe_load((repo_copy / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        for entry in stage.get("outs", []) + stage.get("metrics", []) + stage.get("plots", []):
            path = next(iter(entry)) if isinstance(entry, dict) else entry
            assert (repo_copy / path).exists(), f"stage {name} did not produce {path}"


@pytest.mark.slow
def test_rows_are_conserved_across_data_stages(repo_copy):
    report = json.loads((repo_copy / "data/reports/validation.json").read_text())
    assert report["rows_in"] == 96 == report["accepted"] + report["quarantined"]
    manifest = pd.read_parquet(repo_copy / "data/manifest.parquet")
    captions = pd.read_parquet(repo_copy / "data/captions/captions.parquet")
    caption_quarantine = pd.read_parquet(repo_copy / "data/quarantine/caption.parquet")
    assert len(manifest) == len(captions) + len(caption_quarantine)
    assert set(captions["image_id"]) <= set(manifest["image_id"])


@pytest.mark.slow
def test_second_repro_is_a_noop(repo_copy):
    out = _run([sys.executable, "-m", "dvc", "repro"], repo_copy).stdout
    assert "Running stage" not in out, out
    status = _run([sys.executable, "-m", "dvc", "status"], repo_copy).stdout
    assert "up to date" in status.lower(), status
