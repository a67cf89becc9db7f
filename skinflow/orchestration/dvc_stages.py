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
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from skinflow.orchestration.checkout import CheckoutBusy, dvc_lock_error
from skinflow.orchestration.dvc_worker import DvcWorker, WorkerGone, follow, output_lines, worker_key

_WORKERS: dict[str, DvcWorker] = {}
# One stage at a time per checkout: DVC locks the checkout while a stage runs, so stages a flow submits
# concurrently (independent branches of the DAG) queue here instead of failing with CheckoutBusy.
_CHECKOUT_LOCKS: dict[str, threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()


def _checkout_lock(repo_dir: str | os.PathLike) -> threading.Lock:
    with _LOCKS_GUARD:
        return _CHECKOUT_LOCKS.setdefault(worker_key(repo_dir), threading.Lock())

# A stage's work pool is declared once, in dvc.yaml: `meta: {pool: gpu}` (DVC ignores `meta` when hashing).
DEFAULT_POOL = "cpu"
POOLS = ("cpu", "gpu")


def stage_graph(repo_dir: str | os.PathLike = ".") -> list[tuple[str, str, list[str]]]:
    """(stage, pool, upstream stages) for every stage of dvc.yaml (foreach/matrix items expanded) in dependency
    order; the upstream stages are those whose outputs it depends on, so a flow can mirror DVC's DAG exactly."""
    import networkx as nx
    from dvc.repo import Repo

    with Repo(str(repo_dir)) as repo:
        graph = repo.index.graph
        # DVC's edges point from a stage to the stages it depends on.
        plan = [(stage.name, (stage.meta or {}).get("pool", DEFAULT_POOL),
                 sorted(upstream.name for upstream in graph.successors(stage)))
                for stage in reversed(list(nx.topological_sort(graph)))]
    unknown = sorted({pool for _, pool, _ in plan} - set(POOLS))
    if unknown:
        raise ValueError(f"dvc.yaml names unknown pools {unknown} in meta.pool; known: {list(POOLS)}")
    return plan


def stage_plan(repo_dir: str | os.PathLike = ".") -> list[tuple[str, str]]:
    """(stage, pool) for every stage of dvc.yaml (foreach/matrix items expanded) in dependency order."""
    return [(name, pool) for name, pool, _ in stage_graph(repo_dir)]


def stage_order(repo_dir: str | os.PathLike = ".") -> list[str]:
    """Every stage of dvc.yaml (foreach/matrix items expanded) in dependency order."""
    return [name for name, _ in stage_plan(repo_dir)]


class StageFailed(RuntimeError):
    def __init__(self, stage: str, returncode: int, tail: str):
        super().__init__(f"stage {stage} failed with exit code {returncode}:\n{tail}")
        self.stage, self.returncode = stage, returncode


def stage_env(extra_env: dict[str, str] | None) -> dict[str, str]:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "DO_NOT_TRACK": "1", "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", **(extra_env or {})}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


@contextmanager
def stage_runner(repo_dir: str | os.PathLike = ".", extra_env: dict[str, str] | None = None) -> Iterator[None]:
    """Within this block, :func:`run_dvc_stage` on ``repo_dir`` uses one warm DVC worker process."""
    key = worker_key(repo_dir)
    worker = DvcWorker(repo_dir, stage_env(extra_env))
    _WORKERS[key] = worker
    try:
        yield
    finally:
        _WORKERS.pop(key, None)
        worker.close()


def run_dvc_stage(name: str, repo_dir: str | os.PathLike = ".", log: Callable[[str], None] = print,
              extra_env: dict[str, str] | None = None) -> None:
    """Reproduce one stage (``dvc repro --single-item <name>``), streaming its output to ``log``.

    Raises :class:`CheckoutBusy` if another DVC process holds the checkout, else
    :class:`StageFailed` on a non-zero exit. Calls for one checkout from several threads run one after another."""
    with _checkout_lock(repo_dir):
        _run_dvc_stage(name, repo_dir, log, extra_env)


def _run_dvc_stage(name: str, repo_dir: str | os.PathLike, log: Callable[[str], None],
                   extra_env: dict[str, str] | None) -> None:
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
    env = stage_env(extra_env)
    proc = subprocess.Popen([sys.executable, "-m", "dvc", "repro", "--single-item", name],
                            cwd=repo_dir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, bufsize=0)
    assert proc.stdout is not None
    tail, _ = follow(output_lines(proc.stdout), log)
    if proc.wait() != 0:
        if dvc_lock_error("\n".join(tail)):
            raise CheckoutBusy(repo_dir, "dvc process", f"stage {name}: " + "\n".join(tail[-8:]))
        raise StageFailed(name, proc.returncode, "\n".join(tail))


def headline_table(repo_dir: str | os.PathLike = ".") -> str:
    """The run's result in a few lines: per variant Top-1 / Top-k / malignant-miss@1 (mean over seeds, 95 % CI)
    from reports/ablation.json, and the data / caption checks; empty string when the ablation has not run."""
    import json

    root = Path(repo_dir)
    lines = []
    for name, path in (("data", "metrics/data.json"), ("captions", "metrics/captions.json")):
        if (root / path).exists():
            values = json.loads((root / path).read_text())
            lines.append(f"- {name}: " + ", ".join(f"{k} {v}" for k, v in values.items()
                                                    if isinstance(v, (int, float, str))))
    ablation = root / "reports/ablation.json"
    if not ablation.exists():
        return "\n".join(lines)
    data = json.loads(ablation.read_text())
    rows, order = data.get("rows") or {}, data.get("row_order") or []

    def cell(metric: dict | None) -> str:
        if not metric or metric.get("value") is None:
            return "—"
        return f"{100 * metric['value']:.1f} [{100 * metric['ci_low']:.1f}, {100 * metric['ci_high']:.1f}]"

    topk = next((k for k in (rows[order[0]] if order else {}) if k.startswith("top") and k != "top1_exact"
                 and k.endswith("_exact")), "top6_exact")
    lines += ["", f"| variant | seeds | Top-1 % | {topk.split('_')[0].capitalize()} % | malignant miss@1 % |",
              "|---|---|---|---|---|"]
    lines += [f"| {n} | {rows[n].get('n_seeds', 1)} | {cell(rows[n].get('top1_exact'))} | {cell(rows[n].get(topk))} | "
              f"{cell(rows[n].get('malignant_miss_at1'))} |" for n in order]
    return "\n".join(lines)
