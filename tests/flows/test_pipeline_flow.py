"""The Prefect flow runs one task per DVC stage, in DAG order, and fails loudly with the stage's log."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from dvc_toy import BROKEN_STAGE, TOY_DAG
from skinflow.orchestration.dvc_stages import StageFailed, headline_table, stage_graph, stage_order, stage_plan

REPO = Path(__file__).resolve().parents[2]

DVC_YAML = TOY_DAG.rstrip("\n") + BROKEN_STAGE


@pytest.fixture(scope="module")
def toy_repo(tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("toy")
    (repo / "dvc.yaml").write_text(DVC_YAML)
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=repo, check=True, env=env)
    return repo


@pytest.fixture(scope="module")
def harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def test_stage_order_follows_the_dag_not_the_file(toy_repo):
    assert stage_order(toy_repo) == ["first", "second", "broken"]


def test_each_stage_knows_the_stages_it_depends_on(toy_repo):
    assert [(name, upstream) for name, _, upstream in stage_graph(toy_repo)] == [
        ("first", []), ("second", ["first"]), ("broken", ["second"])]


def test_the_flow_graph_is_the_dvc_dag(toy_repo, harness):
    """Each stage task waits for the tasks of the stages it depends on, so the Prefect UI draws DVC's DAG."""
    from flows.pipeline import pipeline

    state = pipeline(str(toy_repo), only=["first", "second"], return_state=True)
    assert state.is_completed()
    runs = {run.name: run for run in _task_runs(state.state_details.flow_run_id)}
    waited = [str(getattr(i, "id", "")) for i in runs["dvc:second"].task_inputs.get("wait_for", [])]
    assert waited == [str(runs["dvc:first"].id)] and not runs["dvc:first"].task_inputs.get("wait_for")


def test_pools_come_from_dvc_yaml_meta():
    """Placement is declared once, in dvc.yaml; every model-running stage of the real DAG is on the gpu pool."""
    pools = dict(stage_plan(REPO))
    assert pools["ingest"] == "cpu" and pools["warmup"] == "cpu" and pools["report"] == "cpu"
    for name, pool in pools.items():
        runs_a_model = name.split("@")[0] in {"stage1_rl", "stage2_rl", "s1_nodve", "s1_s2", "stage2_only",
                                              "dve_only", "vlora_s1", "vision_lora", "evaluate",
                                              "evaluate_control", "evaluate_single", "skinvl_start", "skinvl_baseline",
                                              "attention"}
        assert pool == ("gpu" if runs_a_model else "cpu"), (name, pool)


def test_stage_task_has_no_tags():
    """A tagged task acquires a tag-concurrency slot through the API before every run (~2 s stalls)."""
    from flows.pipeline import dvc_stage

    assert not dvc_stage.tags


def test_flow_runs_each_stage_as_a_task_and_reruns_nothing(toy_repo, harness):
    from prefect.client.orchestration import get_client

    from flows.pipeline import pipeline

    assert pipeline(str(toy_repo), only=["first", "second"]) == ["first", "second"]
    assert (toy_repo / "b.txt").read_text() == "ab"
    assert (toy_repo / "dvc.lock").exists()
    mtime = (toy_repo / "b.txt").stat().st_mtime_ns
    pipeline(str(toy_repo), only=["first", "second"])  # DVC decides: nothing is stale
    assert (toy_repo / "b.txt").stat().st_mtime_ns == mtime

    import asyncio

    async def task_names():
        async with get_client() as client:
            runs = await client.read_task_runs()
            return {run.name for run in runs}

    assert {"dvc:first", "dvc:second"} <= asyncio.run(task_names())


def test_failing_stage_fails_the_flow_with_its_output(toy_repo, harness):
    from flows.pipeline import pipeline

    with pytest.raises(StageFailed, match="boom from the stage"):
        pipeline(str(toy_repo), retries=0)
    assert not (toy_repo / "c.txt").exists()


def _task_runs(flow_run_id):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        return client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))


def test_success_attaches_dvc_lock_artifact(toy_repo, harness):
    import hashlib

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from flows.pipeline import pipeline

    state = pipeline(str(toy_repo), only=["first", "second"], return_state=True)
    assert state.is_completed()
    flow_run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    by_key = {artifact.key: artifact.data for artifact in artifacts}
    assert set(by_key) == {"skinflow-metrics", "skinflow-dvc-lock"}
    sha = hashlib.sha256((toy_repo / "dvc.lock").read_bytes()).hexdigest()
    assert f"sha256 `{sha}`, not committed" in by_key["skinflow-dvc-lock"]
    assert (toy_repo / "dvc.lock").read_text().strip() in by_key["skinflow-dvc-lock"]


def test_checkout_in_use_by_another_flow_fails_at_once(toy_repo, harness):
    from flows.pipeline import pipeline
    from skinflow.orchestration.checkout import CheckoutBusy, checkout_lock

    with checkout_lock(toy_repo):
        state = pipeline(str(toy_repo), only=["first"], return_state=True)
    assert state.is_failed()
    with pytest.raises(CheckoutBusy, match="one flow run per checkout"):
        state.result()
    assert _task_runs(state.state_details.flow_run_id) == []  # no stage was even attempted


def test_dvc_lock_held_elsewhere_is_not_retried(toy_repo, harness):
    import time

    import zc.lockfile

    from flows.pipeline import pipeline
    from skinflow.orchestration.checkout import CheckoutBusy

    (toy_repo / "a.txt").unlink(missing_ok=True)  # make `first` stale, so DVC must take its locks
    held = zc.lockfile.LockFile(str(toy_repo / ".dvc" / "tmp" / "lock"))  # as a running `dvc repro` does
    try:
        started = time.monotonic()
        state = pipeline(str(toy_repo), only=["first"], retries=2, return_state=True)
        elapsed = time.monotonic() - started
    finally:
        held.close()
    with pytest.raises(CheckoutBusy, match="another dvc process holds the lock"):
        state.result()
    assert elapsed < 25  # retry_delay_seconds is 30: a retry would show
    [task_run] = _task_runs(state.state_details.flow_run_id)
    assert task_run.run_count == 1 and task_run.state.is_failed()


def test_stage_subprocess_sees_the_flow_run_id(tmp_path, harness):
    """The lineage record of a stage run under Prefect names its flow run (the stage is a subprocess)."""
    from flows.pipeline import pipeline

    (tmp_path / "dvc.yaml").write_text(textwrap.dedent("""
        stages:
          whoami:
            cmd: python -c "import os, pathlib; pathlib.Path('id.txt').write_text(os.environ.get('PREFECT__FLOW_RUN_ID', ''))"
            outs: [id.txt]
    """))
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=tmp_path, check=True, env=env)
    state = pipeline(str(tmp_path), return_state=True)
    assert state.is_completed()
    assert (tmp_path / "id.txt").read_text() == str(state.state_details.flow_run_id)


def test_headline_table_is_compact(tmp_path):
    import json

    (tmp_path / "reports").mkdir()
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics/data.json").write_text(json.dumps({"rows_in": 10, "accepted": 9, "quarantined": 1}))
    cell = {"value": 0.3, "ci_low": 0.25, "ci_high": 0.35, "sd": 0.01}
    (tmp_path / "reports/ablation.json").write_text(json.dumps({
        "row_order": ["warmup", "stage2"],
        "rows": {n: {"n_seeds": s, "top1_exact": cell, "top6_exact": cell, "malignant_miss_at1": cell}
                 for n, s in (("warmup", 1), ("stage2", 3))}}))
    table = headline_table(tmp_path)
    assert "| stage2 | 3 | 30.0 [25.0, 35.0] |" in table and "rows_in 10" in table
    assert len(table.splitlines()) <= 8
    assert headline_table(tmp_path / "nowhere") == ""
