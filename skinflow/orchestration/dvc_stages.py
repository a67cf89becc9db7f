"""DVC stages as units of work: the order comes from dvc.yaml's DAG, DVC decides what is stale.

An orchestrator (the Prefect flow in ``flows/``) runs each stage as ``dvc repro --single-item`` would,
so DVC keeps checking hashes and writing ``dvc.lock``; no second hand-written stage list exists.
Inside :func:`stage_runner` the stages go to one warm DVC process (``dvc_worker``) instead of a new
``dvc`` process each; outside it (or if that process dies) each stage gets its own ``dvc repro``.
A stage that loses the race for the checkout's DVC locks raises :class:`CheckoutBusy` (not
:class:`StageFailed`), so retry policies can tell "wait for the other run" from a transient failure.
"""

from __future__ import annotations

import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from skinflow.orchestration.checkout import CheckoutBusy, dvc_lock_error
from skinflow.orchestration.dvc_worker import DvcWorker, WorkerGone, follow, output_lines, worker_key

_WORKERS: dict[str, DvcWorker] = {}

# Stages that want an accelerator when one is available (routed to the `gpu` work pool).
GPU_STAGE_PREFIXES = ("stage1_rl", "stage2_rl", "evaluate@")


def stage_order(repo_dir: str | os.PathLike = ".") -> list[str]:
    """Every stage of dvc.yaml (foreach items expanded) in dependency order."""
    import networkx as nx
    from dvc.repo import Repo

    with Repo(str(repo_dir)) as repo:
        graph = repo.index.graph
        # DVC's edges point from a stage to the stages it depends on.
        return [stage.name for stage in reversed(list(nx.topological_sort(graph)))]


def is_gpu_stage(name: str) -> bool:
    return name.startswith(GPU_STAGE_PREFIXES)


class StageFailed(RuntimeError):
    def __init__(self, stage: str, returncode: int, tail: str):
        super().__init__(f"stage {stage} failed with exit code {returncode}:\n{tail}")
        self.stage, self.returncode = stage, returncode


def _stage_env(extra_env: dict[str, str] | None) -> dict[str, str]:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "DO_NOT_TRACK": "1", "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", **(extra_env or {})}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


@contextmanager
def stage_runner(repo_dir: str | os.PathLike = ".", extra_env: dict[str, str] | None = None) -> Iterator[None]:
    """Within this block, :func:`run_stage` on ``repo_dir`` uses one warm DVC worker process."""
    key = worker_key(repo_dir)
    worker = DvcWorker(repo_dir, _stage_env(extra_env))
    _WORKERS[key] = worker
    try:
        yield
    finally:
        _WORKERS.pop(key, None)
        worker.close()


def run_stage(name: str, repo_dir: str | os.PathLike = ".", log: Callable[[str], None] = print,
              extra_env: dict[str, str] | None = None) -> None:
    """Reproduce one stage (``dvc repro --single-item <name>``), streaming its output to ``log``.

    Raises :class:`CheckoutBusy` if another DVC process holds the checkout, else
    :class:`StageFailed` on a non-zero exit."""
    worker = _WORKERS.get(worker_key(repo_dir))
    if worker is not None and worker.alive():
        try:
            status, code, tail = worker.run(name, log)
        except WorkerGone as exc:  # e.g. killed mid-stage: this attempt fails, a retry runs standalone
            _WORKERS.pop(worker_key(repo_dir), None)
            raise StageFailed(name, -1, str(exc)) from exc
        if status == "busy" or (status != "ok" and dvc_lock_error("\n".join(tail))):
            raise CheckoutBusy(repo_dir, "dvc process", f"stage {name}: " + "\n".join(tail[-8:]))
        if status != "ok":
            raise StageFailed(name, code, "\n".join(tail))
        return
    env = _stage_env(extra_env)
    proc = subprocess.Popen([sys.executable, "-m", "dvc", "repro", "--single-item", name],
                            cwd=repo_dir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, bufsize=0)
    assert proc.stdout is not None
    tail, _ = follow(output_lines(proc.stdout), log)
    if proc.wait() != 0:
        if dvc_lock_error("\n".join(tail)):
            raise CheckoutBusy(repo_dir, "dvc process", f"stage {name}: " + "\n".join(tail[-8:]))
        raise StageFailed(name, proc.returncode, "\n".join(tail))


def metrics_table(repo_dir: str | os.PathLike = ".") -> str:
    """``dvc metrics show --md`` for the run artifact (empty string if DVC cannot show metrics)."""
    result = subprocess.run([sys.executable, "-m", "dvc", "metrics", "show", "--md"], cwd=repo_dir,
                            capture_output=True, text=True,
                            env={**os.environ, "DVC_NO_ANALYTICS": "1", "DO_NOT_TRACK": "1"})
    return result.stdout if result.returncode == 0 else ""
