"""`dvc repro` end to end on a tiny SkinSynth, in a throwaway copy of the repository.

Checks the DAG runs from a clean checkout, every stage's outputs appear, row conservation holds
across the data stages, a second `dvc repro` is a no-op, and a second clean checkout reproduces every
output byte for byte (same seeds, same machine; run facts under metrics/timing/ excepted).
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


def _fresh_repro(tmp_path_factory) -> Path:
    from skinflow.orchestration.checkout import clean_copy

    dest = clean_copy(REPO, tmp_path_factory.mktemp("repo"), "configs/params-tiny.yaml")
    _run([sys.executable, "-m", "dvc", "repro"], dest)
    return dest


@pytest.fixture(scope="module")
def repo_copy(tmp_path_factory) -> Path:
    return _fresh_repro(tmp_path_factory)


@pytest.mark.slow
def test_repro_produces_every_declared_output(repo_copy):
    from dvc.repo import Repo

    with Repo(str(repo_copy)) as repo:  # foreach/matrix stages resolved, as DVC runs them
        stages = {stage.name: [str(out.def_path) for out in stage.outs] for stage in repo.index.stages}
    lock = yaml.safe_load((repo_copy / "dvc.lock").read_text())["stages"]
    assert set(lock) == set(stages), set(stages) ^ set(lock)
    for name, outs in stages.items():
        for path in outs:
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


@pytest.mark.slow
def test_a_second_clean_checkout_reproduces_every_output(repo_copy, tmp_path_factory):
    """Every model, metric, report and data output has the same hash in two clean checkouts (another directory,
    so no absolute path may leak into an output); only declared run facts (metrics/timing/) may differ."""
    from skinflow.lineage.lockdiff import lock_differences, output_hashes, read_lock

    second = _fresh_repro(tmp_path_factory)
    first_lock, second_lock = read_lock(repo_copy / "dvc.lock"), read_lock(second / "dvc.lock")
    hashes = output_hashes(first_lock)
    assert any(stage.startswith("stage2_rl@") for stage, _ in hashes) and len(hashes) > 50
    assert lock_differences(first_lock, second_lock) == []


# Stages that read none of stage2_rl's params or outputs: a Stage II experiment must not re-run them.
NOT_STAGE2 = ("synth", "ingest", "validate", "caption", "base_model", "warmup", "stage1_rl@", "s1_nodve@",
              "cfa_baseline", "skinvl_start", "skinvl_baseline", "evaluate_single@", "evaluate@stage1-")


@pytest.mark.slow
def test_a_stage2_experiment_reruns_only_its_branch_and_exp_show_stays_readable(repo_copy):
    """Last in the module: the experiment runs in the workspace of the shared checkout, after the run's results
    are committed there (as a user commits them), so that --only-changed compares against them."""
    import re

    _run(["git", "-c", "user.email=ci@localhost", "-c", "user.name=ci", "add", "-A"], repo_copy)
    _run(["git", "-c", "user.email=ci@localhost", "-c", "user.name=ci", "commit", "-qm", "results"], repo_copy)
    out = _run([sys.executable, "-m", "dvc", "exp", "run", "-S", "stage2_rl.temperature=0.9"], repo_copy).stdout
    ran = set(re.findall(r"Running stage '([^']+)'", out))
    assert any(s.startswith("stage2_rl@") for s in ran), out[-3000:]
    assert not [s for s in ran if s.startswith(NOT_STAGE2)], sorted(ran)
    shown = _run([sys.executable, "-m", "dvc", "exp", "show", "--only-changed", "--csv"], repo_copy).stdout
    header = shown.splitlines()[0].split(",")
    # Experiment, rev, typ, Created + the changed param + changed headline metrics; columns naming a path are
    # the changed deps (model directories, per-seed evaluations), which `--drop '.*/.*'` hides.
    values = [c for c in header if "/" not in c]
    assert "stage2_rl.temperature" in values and len(values) <= 40, header
