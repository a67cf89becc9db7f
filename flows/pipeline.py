"""Prefect flow: one task per DVC stage, wired as dvc.yaml's DAG (each task waits for the stages it depends on,
independent branches are submitted together), DVC decides what is stale.

Thin by design: the stage list, the runner and the metric table live in
``skinflow.orchestration.dvc_stages``; the checkout lock and the dvc.lock record in
``skinflow.orchestration.checkout``. Run locally with ``python -m flows.pipeline``.
"""

from __future__ import annotations

from prefect import flow, get_run_logger, runtime, task
from prefect.artifacts import create_markdown_artifact

from skinflow.orchestration.checkout import CheckoutBusy, checkout_lock, record_dvc_lock
from skinflow.orchestration.dvc_stages import headline_table, run_dvc_stage, stage_graph, stage_runner


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
    create_markdown_artifact(key="skinflow-metrics", markdown=(
        "# SkinFlow run\n\nStages: " + ", ".join(done) + "\n\n" + (table or "(no results yet)")
        + "\n\nFull tables: `reports/ablation.md` (paired differences with CIs), `reports/report.html`, "
        "`data/reports/validation.md`, `data/reports/captions.md`; every metric: `dvc metrics show`\n"),
        description="Headline results after this run")
    create_markdown_artifact(key="skinflow-dvc-lock", markdown=record.markdown(),
                             description="dvc.lock after this run (sha256 of the file)")
    return done


if __name__ == "__main__":
    pipeline()
