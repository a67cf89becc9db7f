"""A real `prefect server start` on 127.0.0.1: prefect.yaml's deployments, their schedule and
scheduled runs, and a flow run whose per-stage task runs and artifacts the API returns."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml

from dvc_toy import REPO, TOY_DAG, make_repo, run
from skinflow.orchestration.local_server import local_prefect_server, prefect_command, server_env

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    home = tmp_path_factory.mktemp("prefect-home")
    # A 1 s scheduler loop: runs of a just-created deployment appear without the default 60 s wait.
    with local_prefect_server(home, startup_timeout=120, scheduler_loop_seconds=1) as url:
        yield home, url


@pytest.fixture()
def client(server):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: server[1]}):
        with get_client(sync_client=True) as api:
            yield api
        # A flow run in this process starts Prefect's log and event workers, singletons bound to this
        # server. Drain and drop them while it is still up, or later flows in the same process (e.g. the
        # flow tests' harness) send their task-run events to a server that is gone.
        from prefect.events.worker import EventsWorker
        from prefect.logging.handlers import APILogWorker

        APILogWorker.drain_all()
        EventsWorker.drain_all()


def test_server_answers_on_loopback_only(server):
    _, url = server
    assert url.startswith("http://127.0.0.1:")


def test_prefect_yaml_deployments_register_with_their_schedule(server, client, tmp_path):
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    home, url = server
    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    for pool in sorted({d["work_pool"]["name"] for d in spec["deployments"]}):
        client.create_work_pool(WorkPoolCreate(name=pool, type="process"), overwrite=True)
    # Deploy from a copy: `prefect deploy` must not write into the checkout.
    shutil.copy2(REPO / "prefect.yaml", tmp_path / "prefect.yaml")
    shutil.copytree(REPO / "flows", tmp_path / "flows", ignore=shutil.ignore_patterns("__pycache__"))
    env = {**server_env(home), "PREFECT_API_URL": url, "SKINFLOW_CHECKOUT": str(tmp_path)}
    result = subprocess.run([*prefect_command(), "--no-prompt", "deploy", "--all"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    flow_names = {"pipeline": "skinflow-pipeline", "distributed": "skinflow-distributed",
                  "stage_in_checkout": "skinflow-stage"}
    flow_of = {d["name"]: flow_names[d["entrypoint"].rsplit(":", 1)[1]] for d in spec["deployments"]}
    for declared in spec["deployments"]:
        deployment = client.read_deployment_by_name(f"{flow_of[declared['name']]}/{declared['name']}")
        assert deployment.work_pool_name == declared["work_pool"]["name"]
        assert deployment.parameters == declared["parameters"]
        assert deployment.entrypoint == declared["entrypoint"]
        assert deployment.pull_steps == [{"prefect.deployments.steps.set_working_directory":
                                          {"directory": str(tmp_path)}}]
        expected = [(s["cron"], s["timezone"]) for s in declared.get("schedules", [])]
        assert [(s.schedule.cron, s.schedule.timezone) for s in deployment.schedules] == expected
        assert all(s.active for s in deployment.schedules)

    nightly_spec = next(d for d in spec["deployments"] if d.get("schedules"))
    minute, hour = (int(field) for field in nightly_spec["schedules"][0]["cron"].split()[:2])
    nightly = client.read_deployment_by_name(f"{flow_of[nightly_spec['name']]}/{nightly_spec['name']}")
    only_nightly = DeploymentFilter(id=DeploymentFilterId(any_=[nightly.id]))
    deadline = time.monotonic() + 30
    while not (runs := client.read_flow_runs(deployment_filter=only_nightly)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert runs, "the scheduler created no runs for the nightly deployment"
    starts = sorted(r.expected_start_time.astimezone(timezone.utc) for r in runs)
    assert all(r.state.is_scheduled() for r in runs)
    assert all((t.hour, t.minute) == (hour, minute) for t in starts)
    assert starts[0] > datetime.now(timezone.utc) and starts[0] - datetime.now(timezone.utc) <= timedelta(days=1)
    assert all(b - a == timedelta(days=1) for a, b in zip(starts, starts[1:]))

    unscheduled = [d for d in spec["deployments"] if not d.get("schedules")]
    for declared in unscheduled:
        deployment = client.read_deployment_by_name(f"{flow_of[declared['name']]}/{declared['name']}")
        assert client.read_flow_runs(deployment_filter=DeploymentFilter(
            id=DeploymentFilterId(any_=[deployment.id]))) == []


def test_flow_run_reports_one_task_run_per_stage_and_the_lock_artifact(server, client, tmp_path):
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.flows import load_flow_from_entrypoint

    from skinflow.orchestration.dvc_stages import stage_order

    repo = make_repo(tmp_path / "repo", TOY_DAG)
    pipeline = load_flow_from_entrypoint(f"{REPO / 'flows' / 'pipeline.py'}:pipeline")  # as a worker does
    state = pipeline(str(repo), return_state=True)
    assert state.is_completed(), state.message

    this_run = FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
    flow_run = client.read_flow_runs(flow_run_filter=this_run)[0]
    assert flow_run.state.is_completed() and flow_run.parameters["repo_dir"] == str(repo)
    task_runs = client.read_task_runs(flow_run_filter=this_run)
    assert sorted(t.name for t in task_runs) == sorted(f"dvc:{name}" for name in stage_order(repo))
    assert all(t.state.is_completed() and t.run_count == 1 for t in task_runs)
    first, second = sorted(task_runs, key=lambda t: t.start_time)
    assert (first.name, second.name) == ("dvc:first", "dvc:second")  # DAG order, not file order

    artifacts = {a.key: a.data for a in client.read_artifacts(flow_run_filter=this_run)}
    assert set(artifacts) == {"skinflow-metrics", "skinflow-dvc-lock"}
    assert hashlib.sha256((repo / "dvc.lock").read_bytes()).hexdigest() in artifacts["skinflow-dvc-lock"]
    assert "Stages: first, second" in artifacts["skinflow-metrics"]
    assert run(["git", "status", "--porcelain", "dvc.lock"], repo).stdout.startswith("??")  # not committed
