"""Prefect flows: one task per DVC stage, wired as dvc.yaml's DAG (each task waits for the stages it depends on,
independent branches are submitted together), DVC decides what is stale.

- ``pipeline``: every stage in one checkout.
- ``distributed``: every stage on a worker of the pool its dvc.yaml ``meta.pool`` names, each in that worker's own
  checkout (``stage_in_checkout``, deployed once per pool as ``skinflow-stage/stage-<pool>``); artifacts travel
  through the DVC remote and lock entries back to this checkout, whose ``dvc.lock`` is the one of record.

Thin by design: the stage list, the runner and the metric table live in
``skinflow.orchestration.dvc_stages``; the checkout lock and the dvc.lock record in
``skinflow.orchestration.checkout``; the hand-off in ``skinflow.orchestration.handoff``. Run locally with
``python -m flows.pipeline``.
"""

from __future__ import annotations

import threading

from prefect import flow, get_run_logger, runtime, task
from prefect.artifacts import create_markdown_artifact
from prefect.deployments import run_deployment

from skinflow.orchestration import handoff
from skinflow.orchestration.checkout import CheckoutBusy, checkout_lock, record_dvc_lock
from skinflow.orchestration.dvc_stages import (
    StageFailed, headline_table, run_dvc_stage, stage_env, stage_graph, stage_runner,
)

STAGE_FLOW = "skinflow-stage"
_RECEIVE = threading.Lock()   # the orchestrating checkout's dvc.lock takes one package at a time


def _retry_unless_busy(task, task_run, state) -> bool:
    """Retries are for transient failures; a checkout held by another run stays held for hours."""
    try:
        state.result()
    except CheckoutBusy:
        return False
    except Exception:
        return True
    return True


def _lineage_env() -> dict[str, str]:
    # Stages run in DVC subprocesses: hand them the flow-run id for their lineage records.
    return {"PREFECT__FLOW_RUN_ID": str(runtime.flow_run.id or "")}


# No task tags: any tag makes Prefect acquire a tag-concurrency slot through the API before every
# run (measured: up to ~2 s a task), and one flow run per checkout already serialises the stages.
@task(retry_delay_seconds=30, retry_condition_fn=_retry_unless_busy)
def dvc_stage(name: str, repo_dir: str) -> str:
    run_dvc_stage(name, repo_dir, log=get_run_logger().info, extra_env=_lineage_env())
    return name


@flow(name="skinflow-pipeline", log_prints=True)
def pipeline(repo_dir: str = ".", only: list[str] | None = None, gpu: bool | None = None,
             retries: int = 2, commit_lock: bool = False) -> list[str]:
    """Run the DAG's stages in order (``only``: a subset; ``gpu``: only the stages whose dvc.yaml ``meta.pool`` is
    gpu, or only the others).

    ``retries`` covers transient failures (a killed worker, a full disk freed meanwhile); a stage
    that fails deterministically fails the flow with the stage's last output lines, and a checkout
    already in use (another flow run or ``dvc repro``) fails it at once with CheckoutBusy.
    After every stage succeeded, dvc.lock is attached as an artifact (and committed to git, alone,
    if ``commit_lock``)."""
    with checkout_lock(repo_dir), stage_runner(repo_dir, extra_env=_lineage_env()):
        futures = {}
        for name, pool, upstream in stage_graph(repo_dir):
            if (only and name not in only) or (gpu is not None and (pool == "gpu") != gpu):
                continue
            run = dvc_stage.with_options(task_run_name=f"dvc:{name}", retries=retries)
            # The UI draws these edges: the flow's graph is DVC's (stages outside this run are not waited for).
            futures[name] = run.submit(name, repo_dir, wait_for=[futures[u] for u in upstream if u in futures])
        done = [future.result() for future in futures.values()]  # dependency order: the first failure is raised
        record = record_dvc_lock(repo_dir, commit=commit_lock,
                                 message=f"dvc.lock after pipeline stages: {', '.join(done) or 'none'}")
        table = headline_table(repo_dir)
    _artifacts(done, table, record)
    return done


def _artifacts(done: list[str], table: str, record) -> None:
    create_markdown_artifact(key="skinflow-metrics", markdown=(
        "# SkinFlow run\n\nStages: " + ", ".join(done) + "\n\n" + (table or "(no results yet)")
        + "\n\nFull tables: `reports/ablation.md` (paired differences with CIs), `reports/report.html`, "
        "`data/reports/validation.md`, `data/reports/captions.md`; every metric: `dvc metrics show`\n"),
        description="Headline results after this run")
    create_markdown_artifact(key="skinflow-dvc-lock", markdown=record.markdown(),
                             description="dvc.lock after this run (sha256 of the file)")


@flow(name=STAGE_FLOW, persist_result=True, log_prints=True)
def stage_in_checkout(name: str, package: dict | None = None, repo_dir: str = ".") -> dict:
    """One stage in this worker's own checkout: its inputs from the package and the DVC remote, DVC runs it (or
    finds it up to date), its outputs go to the remote; returns its package (lock entry, uncached outputs)."""
    log = get_run_logger().info
    env = stage_env(_lineage_env())
    with checkout_lock(repo_dir):
        io = handoff.stage_io(repo_dir, name)   # one DVC index for both ends of the hand-off
        handoff.receive(repo_dir, handoff.Package.from_json(package), stage=io, env=env, log=log)
        run_dvc_stage(name, repo_dir, log=log, extra_env=_lineage_env())
        return handoff.send(repo_dir, io, env=env, log=log).to_json()


@task(retry_delay_seconds=30)
def dispatch(io: handoff.StageIO, pool: str, repo_dir: str, base: dict, upstream: list[dict]) -> dict:
    """Run one stage on its pool's worker (a run of ``skinflow-stage/stage-<pool>``) and take its package back."""
    name = io.name
    package = handoff.upstream_package(handoff.Package.from_json(base).merged(
        *(handoff.Package.from_json(u) for u in upstream)), io)
    child = run_deployment(f"{STAGE_FLOW}/stage-{pool}", parameters={"name": name, "package": package.to_json()},
                           timeout=None, as_subflow=True)
    if not child.state.is_completed():
        raise StageFailed(name, 1, f"{STAGE_FLOW}/stage-{pool} run {child.id} ended {child.state.type.value}: "
                                   f"{child.state.message or ''}")
    result = child.state.result()
    with _RECEIVE:
        handoff.receive(repo_dir, handoff.Package.from_json(result), pull=False)
    return result


@flow(name="skinflow-distributed", log_prints=True)
def distributed(repo_dir: str = ".", only: list[str] | None = None, retries: int = 1,
                commit_lock: bool = False) -> list[str]:
    """Every stage (or those in ``only``) on a worker of its dvc.yaml ``meta.pool``, in that worker's checkout.

    Each task passes on what its stage needs: the lock entries and uncached outputs of its upstream stages (from
    this run's finished tasks, or this checkout for stages the run skips); cached outputs go through the DVC
    remote. Every returned lock entry is merged into this checkout's dvc.lock, attached (and committed if
    ``commit_lock``) at the end, like ``pipeline``'s."""
    with checkout_lock(repo_dir):
        ios = handoff.all_stage_io(repo_dir)   # one DVC index for the whole run, not one per stage
        base = handoff.local_package(repo_dir, ios).to_json()
        futures = {}
        for name, pool, upstream in stage_graph(repo_dir):
            if only and name not in only:
                continue
            run = dispatch.with_options(task_run_name=f"{pool}:{name}", retries=retries)
            futures[name] = run.submit(ios[name], pool, repo_dir, base, [futures[u] for u in upstream if u in futures])
        for future in futures.values():
            future.result()
        done = list(futures)
        record = record_dvc_lock(repo_dir, commit=commit_lock,
                                 message=f"dvc.lock after distributed stages: {', '.join(done) or 'none'}")
        table = headline_table(repo_dir)
    _artifacts(done, table, record)
    return done


if __name__ == "__main__":
    pipeline()
