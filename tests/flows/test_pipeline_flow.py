"""The Prefect flow runs one task per DVC stage, in DAG order, and fails loudly with the stage's log."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from skinflow.orchestration.dvc_stages import StageFailed, is_gpu_stage, stage_order

DVC_YAML = textwrap.dedent("""
    stages:
      second:
        cmd: python -c "import pathlib; pathlib.Path('b.txt').write_text(pathlib.Path('a.txt').read_text() + 'b')"
        deps: [a.txt]
        outs: [b.txt]
      first:
        cmd: python -c "import pathlib; pathlib.Path('a.txt').write_text('a')"
        outs: [a.txt]
      broken:
        cmd: python -c "import sys; print('boom from the stage'); sys.exit(3)"
        deps: [b.txt]
        outs: [c.txt]
""")


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


def test_gpu_routing_names():
    assert is_gpu_stage("stage1_rl") and is_gpu_stage("evaluate@stage2") and not is_gpu_stage("ingest")


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
