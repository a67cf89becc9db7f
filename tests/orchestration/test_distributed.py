"""The CPU/GPU split on one machine: a real Prefect server, two process workers (pools cpu and gpu) each in its own
checkout, an S3-compatible remote (moto's server) between them, and the orchestrating flow in a third checkout.

Every stage must run on the pool its dvc.yaml ``meta`` names, the final metrics must reach the CPU checkout
through the hand-off, the orchestrating checkout's dvc.lock must hold every stage, and a fresh clone of it must
pull every output from the remote with nothing stale and verify the final metric's lineage, including the record
made on the GPU worker."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from dvc_toy import REPO, dvc, git, make_repo, run, up_to_date
from skinflow.lineage.audit import build_audit, verify
from skinflow.orchestration.handoff import read_lock
from skinflow.orchestration.local_server import local_prefect_server, prefect_command, server_env

pytestmark = pytest.mark.slow

# cpu: prepare -> gpu: train (needs the data and an uncached count) -> cpu: summarise (needs the model and its
# uncached score).
DVC_YAML = """
stages:
  prepare:
    cmd: python -m skinflow.lineage run prepare -- python prepare.py
    deps: [prepare.py]
    outs:
      - data.txt
      - metrics/timing/lineage/prepare.json:
          cache: false
    metrics:
      - count.json:
          cache: false
  train:
    meta: {pool: gpu}
    cmd: python -m skinflow.lineage run train -- python train.py
    deps: [train.py, data.txt, count.json]
    outs:
      - model.txt
      - metrics/timing/lineage/train.json:
          cache: false
    metrics:
      - score.json:
          cache: false
  summarise:
    cmd: python -m skinflow.lineage run summarise -- python summarise.py
    deps: [summarise.py, model.txt, score.json]
    outs:
      - report.txt
      - metrics/timing/lineage/summarise.json:
          cache: false
    metrics:
      - final.json:
          cache: false
"""
SCRIPTS = {
    "prepare.py": ("import json, pathlib\npathlib.Path('data.txt').write_text('x' * 7)\n"
                   "pathlib.Path('count.json').write_text(json.dumps({'n': 7}))\n"),
    "train.py": ("import json, os, pathlib\nn = json.loads(pathlib.Path('count.json').read_text())['n']\n"
                 "data = pathlib.Path('data.txt').read_text()\n"
                 "pathlib.Path('model.txt').write_text(data.upper() + os.environ.get('SKINFLOW_POOL', '?'))\n"
                 "pathlib.Path('score.json').write_text(json.dumps({'score': n * 2}))\n"),
    "summarise.py": ("import json, pathlib\nscore = json.loads(pathlib.Path('score.json').read_text())['score']\n"
                     "model = pathlib.Path('model.txt').read_text()\n"
                     "pathlib.Path('report.txt').write_text(f'{model} {score}')\n"
                     "pathlib.Path('final.json').write_text(json.dumps({'score': score, 'model': model}))\n"),
}
BUCKET = "skinflow-distributed"
POOLS = ("cpu", "gpu")


@pytest.fixture()
def arrangement(tmp_path):
    pytest.importorskip("dvc_s3", reason="the S3 remote needs dvc-s3 (pip install -e '.[test]')")
    moto_server = pytest.importorskip("moto.server", reason="needs moto[server] (pip install -e '.[test]')")
    import boto3

    from skinflow.orchestration.local_server import free_port

    aws = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    saved = {k: os.environ.get(k) for k in aws}
    os.environ.update(aws)
    s3_port = free_port()
    s3 = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=s3_port, verbose=False)
    s3.start()
    endpoint = f"http://127.0.0.1:{s3_port}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=BUCKET)

    control = make_repo(tmp_path / "control", DVC_YAML, SCRIPTS, with_project_config=False)
    dvc("remote", "add", "-d", "s3", f"s3://{BUCKET}/cache", cwd=control)
    dvc("remote", "modify", "s3", "endpointurl", endpoint, cwd=control)
    git("add", "-A", cwd=control)
    git("commit", "-qm", "S3 remote", cwd=control)
    checkouts = {pool: tmp_path / f"{pool}-worker" for pool in POOLS}
    for path in checkouts.values():
        run(["git", "clone", "-q", str(control), str(path)], tmp_path)

    home = tmp_path / "prefect-home"
    workers = []
    try:
        with local_prefect_server(home, startup_timeout=120) as url:
            env = {**server_env(home), **aws, "PREFECT_API_URL": url, "DVC_NO_ANALYTICS": "1",
                   "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "true",
                   "PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}"}
            _deploy(env, checkouts)
            for pool in POOLS:   # one flow run at a time per worker: one checkout runs one stage at a time
                workers.append(subprocess.Popen(
                    [*prefect_command(), "worker", "start", "--pool", pool, "--type", "process", "--limit", "1",
                     "--name", f"{pool}-worker"], cwd=checkouts[pool], env={**env, "SKINFLOW_POOL": pool},
                    stdout=open(tmp_path / f"{pool}-worker.log", "w"), stderr=subprocess.STDOUT,
                    start_new_session=True))
            yield {"url": url, "env": env, "control": control, "checkouts": checkouts, "tmp": tmp_path}
    finally:
        for proc in workers:
            os.killpg(proc.pid, 15)
            proc.wait(timeout=30)
        s3.stop()
        for key, value in saved.items():
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)


def _deploy(env: dict, checkouts: dict) -> None:
    """``skinflow-stage/stage-<pool>``: the stage flow from this repository, run in that pool's checkout."""
    for pool, checkout in checkouts.items():
        code = ("from prefect import flow\n"
                f"flow.from_source(source={str(REPO)!r}, entrypoint='flows/pipeline.py:stage_in_checkout').deploy("
                f"name='stage-{pool}', work_pool_name={pool!r}, parameters={{'repo_dir': {str(checkout)!r}}})\n")
        subprocess.run([*prefect_command(), "work-pool", "create", pool, "--type", "process"], env=env, check=True,
                       capture_output=True, timeout=120)
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]


def test_each_stage_runs_on_its_pool_and_one_lock_records_them_all(arrangement):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, PREFECT_RESULTS_PERSIST_BY_DEFAULT, temporary_settings

    from flows.pipeline import distributed

    a = arrangement
    control, cpu, gpu = a["control"], a["checkouts"]["cpu"], a["checkouts"]["gpu"]
    with temporary_settings(updates={PREFECT_API_URL: a["url"], PREFECT_RESULTS_PERSIST_BY_DEFAULT: True}):
        state = distributed(str(control), return_state=True)
        assert state.is_completed(), state.message
        with get_client(sync_client=True) as client:
            runs = [r for r in client.read_flow_runs() if r.parameters.get("name")]
            deployments = {d.id: d.name for d in client.read_deployments()}
        from prefect.events.worker import EventsWorker
        from prefect.logging.handlers import APILogWorker

        APILogWorker.drain_all()
        EventsWorker.drain_all()

    # Placement: every stage ran as a run of its pool's deployment, on that pool's worker.
    ran_on = {r.parameters["name"]: (deployments[r.deployment_id], r.work_pool_name) for r in runs}
    assert ran_on == {"prepare": ("stage-cpu", "cpu"), "train": ("stage-gpu", "gpu"),
                      "summarise": ("stage-cpu", "cpu")}, ran_on
    assert all(r.state.is_completed() for r in runs)
    assert (gpu / "model.txt").read_text() == "XXXXXXXgpu"          # trained in the GPU worker's checkout

    # The final metrics reached the CPU checkout: it received the GPU stage's model from S3 and its score in
    # the package, and wrote the final metric itself.
    assert json.loads((cpu / "final.json").read_text()) == {"score": 14, "model": "XXXXXXXgpu"}
    assert not (cpu / "model.txt").is_symlink() and (cpu / "model.txt").read_text() == "XXXXXXXgpu"

    # One lock of record, complete: the orchestrating checkout ran no stage but holds every entry.
    assert set(read_lock(control)["stages"]) == {"prepare", "train", "summarise"}
    assert not (control / "model.txt").exists()
    dvc("pull", cwd=control)
    assert up_to_date(control) and "Running stage" not in dvc("repro", cwd=control).stdout
    assert json.loads((control / "final.json").read_text())["score"] == 14

    # A fresh clone of the committed lock pulls every output from the remote alone and finds nothing stale.
    git("add", "-A", cwd=control)
    git("commit", "-qm", "dvc.lock after the distributed run", cwd=control)
    fresh = a["tmp"] / "fresh"
    run(["git", "clone", "-q", str(control), str(fresh)], a["tmp"])
    dvc("pull", cwd=fresh)
    assert (fresh / "report.txt").read_text() == "XXXXXXXgpu 14" and up_to_date(fresh)

    # Lineage travelled too: the fresh clone rebuilds its ledger from the record files and verifies the final
    # metric back to the raw input, each stage's record made in the checkout that ran it.
    audit = build_audit("final.json:score", fresh)
    assert audit.unrecorded_stages == [] and verify(audit) == []
    made_in = {name: node.record.repo_root for name, node in audit.nodes.items()}
    assert made_in == {"summarise": str(cpu), "train": str(gpu), "prepare": str(cpu)}, made_in
