"""What `dvc metrics show` / `dvc exp show` display: the declared metrics are the headline, a few dozen numbers,
and every detailed result file is still a versioned output (the report and the ablation read those)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HEADLINE = ["metrics/captions.json", "metrics/data.json", "metrics/headline.json"]


def _leaves(value) -> list:
    if isinstance(value, dict):
        return [leaf for v in value.values() for leaf in _leaves(v)]
    return [value]


@pytest.fixture(scope="module")
def outs() -> dict[str, bool]:
    from dvc.repo import Repo

    with Repo(str(REPO)) as repo:
        return {str(o.def_path): bool(o.metric) for stage in repo.index.stages for o in stage.outs}


def test_only_the_headline_files_are_declared_metrics(outs):
    assert sorted(p for p, metric in outs.items() if metric) == HEADLINE
    # The detailed files stay outputs of their stages.
    for detail in ("metrics/warmup.json", "reports/ablation.json", "metrics/eval/cfa-s0.json",
                   "metrics/eval/${item.variant}-s${item.seed}.json"):
        assert detail in outs or any(p.startswith(detail.split("$")[0]) for p in outs), detail


def test_the_committed_headline_is_a_few_dozen_numbers():
    missing = [p for p in HEADLINE if not (REPO / p).exists()]
    if missing:
        pytest.skip(f"not produced yet: {missing} (run `dvc repro`)")
    leaves = [leaf for p in HEADLINE for leaf in _leaves(json.loads((REPO / p).read_text(encoding="utf-8")))]
    assert 20 <= len(leaves) <= 60, len(leaves)
    assert all(v is None or isinstance(v, (int, float, str)) for v in leaves)


def _plot_files() -> dict[str, list[str]]:
    import yaml

    plots = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["plots"]
    return {name: list(spec["y"]) for entry in plots for name, spec in entry.items()}


def test_every_plot_reads_files_a_stage_writes(outs):
    from skinflow.lineage.code_deps import covered

    for name, files in _plot_files().items():
        for path in files:
            assert covered(path, list(outs)), f"plot {name}: {path} is no stage's output"


def test_dvc_plots_show_renders_every_declared_plot():
    import subprocess
    import sys

    files = sorted({p for paths in _plot_files().values() for p in paths})
    missing = [p for p in files if not (REPO / p).exists()]
    if missing:
        pytest.skip(f"not produced yet: {missing[:3]} (run `dvc repro`)")
    done = subprocess.run([sys.executable, "-m", "dvc", "plots", "show", "--json"], cwd=REPO, capture_output=True,
                          text=True, check=True)
    shown = json.loads(done.stdout)
    assert not shown.get("errors"), shown.get("errors")
    for name in _plot_files():
        rendered = shown["data"].get(name) or []
        points = [len(r.get("content", {}).get("data", {}).get("values", [])) for r in rendered]
        assert points and all(points), f"plot {name}: {points}"
