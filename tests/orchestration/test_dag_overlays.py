"""dvc.yaml resolves under params.yaml and under every shipped overlay (real data sets paths to null)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from skinflow.config import overlay_params, read_params

REPO = Path(__file__).resolve().parents[2]
OVERLAYS = [None, *sorted((REPO / "configs").glob("params-*.yaml"))]


def _stage_deps(repo: Path) -> dict[str, list[str]]:
    from dvc.repo import Repo

    with Repo(str(repo)) as dvc_repo:
        return {stage.name: [str(dep.def_path) for dep in stage.deps] for stage in dvc_repo.index.stages}


def _resolve(tmp_path: Path, overlay) -> dict[str, list[str]]:
    shutil.copy2(REPO / "dvc.yaml", tmp_path / "dvc.yaml")
    params = read_params(REPO / "params.yaml")
    if overlay is not None:
        params = overlay_params(params, overlay)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (tmp_path / ".dvc").mkdir()
    (tmp_path / ".dvc" / "config").write_text("[core]\n    no_scm = true\n")
    return _stage_deps(tmp_path)


def test_generic_imagefolder_resolves(tmp_path):
    """An ImageFolder names its root as ``csv`` (a null csv cannot be a DVC dependency)."""
    deps = _resolve(tmp_path, {"ingest": {"source": "generic", "csv": "/data/folder", "image_root": "/data/folder"}})
    assert deps["ingest"].count("/data/folder") == 2


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name if p else "params.yaml")
def test_dag_resolves(overlay, tmp_path):
    deps = _resolve(tmp_path, overlay)
    assert {"synth", "ingest", "caption", "warmup", "stage1_rl@0", "stage2_rl@0"} <= set(deps)
    seeds = (read_params(overlay).get("ablation", {}) if overlay is not None else {}).get("seeds") \
        or read_params(REPO / "params.yaml")["ablation"]["seeds"]
    for seed in seeds:  # one RL run and one evaluation per seed; a chained Stage II starts from its own seed
        assert f"models/stage1-s{seed}" in deps[f"stage2_rl@{seed}"]
        assert f"models/stage2-s{seed}" in deps[f"evaluate@stage2-{seed}"]
    for stage, paths in deps.items():
        assert not any(p in ("None", "null", "") for p in paths), f"{stage} has a null dependency: {paths}"
    csv = read_params(overlay).get("ingest", {}).get("csv") if overlay is not None else None
    if csv:
        assert csv in deps["ingest"], "the overlay's data is a dependency of ingest"
