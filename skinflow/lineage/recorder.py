"""Run a stage's command and append what happened to the ledger.

Used as every dvc.yaml ``cmd``::

    python -m skinflow.lineage run <stage> -- <command...>

The command runs first, untouched (same stdio, same cwd). Afterwards the stage's deps, outs and
params are read from DVC's own index (so ``foreach`` stages such as ``evaluate@stage1`` resolve the
way ``dvc repro`` resolves them), hashed with DVC's code and DVC's hash cache, and one record is
appended. The wrapper exits with the command's exit code; a failed run is recorded as failed. A
problem while recording is reported on stderr but never changes the stage's outcome.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

from skinflow.lineage import LineageError, context, ledger
from skinflow.lineage.hashing import Digest, hash_path
from skinflow.lineage.process import start_command, wait_command


def repo_root(start: str | os.PathLike | None = None) -> Path:
    """The DVC repository root: ``$DVC_ROOT`` (set by ``dvc repro``), else the nearest parent of
    ``start`` with a ``.dvc`` directory, else ``start`` itself."""
    if start is None and os.environ.get("DVC_ROOT"):
        return Path(os.environ["DVC_ROOT"]).resolve()
    here = Path(start or os.getcwd()).resolve()
    for candidate in (here, *here.parents):
        if (candidate / ".dvc").is_dir():
            return candidate
    return here


def stage_plan(root: Path, stage_name: str) -> dict:
    """What to record for a stage, read through DVC's index (``foreach`` resolved as ``dvc repro``
    resolves it): its deps and outs as (path, hash algorithm), its params values, and every output
    path of the DAG (for the dirty check)."""
    from dvc.dependency.param import ParamsDependency
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        stages = list(repo.index.stages)
        by_name = {s.addressing: s for s in stages}
        stage = by_name.get(stage_name)
        if stage is None:
            raise LineageError(f"stage {stage_name!r} is not in dvc.yaml; stages: {', '.join(by_name)}")
        rel = lambda out: os.path.relpath(out.fs_path, repo.root_dir).replace(os.sep, "/")  # noqa: E731
        params: dict[str, dict] = {}
        notes, deps = [], []
        for dep in stage.deps:
            if isinstance(dep, ParamsDependency):
                try:
                    params.setdefault(dep.def_path, {}).update(dep.read_params())
                except Exception as exc:  # a missing params file is worth a note, not a crash
                    notes.append(f"params {dep.def_path}: {exc}")
            else:
                deps.append((rel(dep), dep.hash_name))
        return {"deps": deps, "outs": [(rel(out), out.hash_name) for out in stage.outs],
                "params": params, "generated": [rel(out) for s in stages for out in s.outs], "notes": notes}


def hash_artifacts(root: Path, plan: dict) -> tuple[list[Digest], list[Digest]]:
    """Hash the plan's deps and outs with DVC's code, through DVC's hash cache: the hashes computed
    here are reused when ``dvc repro`` hashes the same outputs for dvc.lock a moment later."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        def digest(path: str, name: str) -> Digest:
            try:
                return hash_path(repo.root_dir, path, name=name, state=repo.state, ignore=repo.dvcignore)
            except OSError:
                return Digest(path, None)

        return [digest(*d) for d in plan.get("deps", [])], [digest(*o) for o in plan.get("outs", [])]


class _Preparation(threading.Thread):
    """Work that does not depend on the command's outcome, done while the command runs: the git
    state and the stage's definition and params as the command starts (what ran is what was there
    at start), plus the heavy imports of DVC and DuckDB. The stage then waits only for hashing and
    one insert."""

    def __init__(self, root: Path, stage: str):
        super().__init__(name="lineage-prepare", daemon=True)
        self.root, self.stage = root, stage
        self.git: tuple[str | None, list[str] | None] = (None, None)
        self.plan: dict | None = None
        self.error: Exception | None = None

    def run(self) -> None:
        self.git = context.git_state(self.root)
        try:
            self.plan = stage_plan(self.root, self.stage)
            import duckdb  # noqa: F401
            from dvc_data.hashfile import build  # noqa: F401
        except Exception as exc:  # not a DVC repo, unknown stage, unreadable dvc.yaml
            self.error = exc


def record_run(stage: str, command: list[str], exit_code: int, started_at: datetime, ended_at: datetime,
               root: Path, plan: dict | None = None,
               git: tuple[str | None, list[str] | None] | None = None) -> ledger.RunRecord:
    """Hash the stage's artifacts as the command left them and append the record.

    ``plan`` (``stage_plan``) and ``git`` (``context.git_state``) are taken when the command starts;
    read now if not given. ``plan={}`` records a run whose stage could not be resolved."""
    notes: list[str] = []
    if plan is None:
        try:
            plan = stage_plan(root, stage)
        except Exception as exc:
            plan, notes = {}, [f"stage not resolved: {exc}"]
    notes += plan.get("notes", [])
    deps, outs = hash_artifacts(root, plan) if plan.get("deps") or plan.get("outs") else ([], [])
    commit, changed = git if git is not None else context.git_state(root)
    dirty_paths = context.code_changes(changed, plan.get("generated", [])) if changed is not None else []
    host = context.host_info()
    record = ledger.RunRecord(
        run_id=str(uuid.uuid4()), stage=stage, command=shlex.join(command),
        status="succeeded" if exit_code == 0 else "failed", exit_code=exit_code,
        started_at=started_at, ended_at=ended_at, params=plan.get("params", {}), git_commit=commit,
        git_dirty=None if changed is None else bool(dirty_paths), dirty_paths=dirty_paths,
        packages=context.package_versions(), host=host["host"], platform=host["platform"],
        python=host["python"], accelerator=context.accelerator(),
        prefect_flow_run_id=context.prefect_flow_run_id(), repo_root=str(root),
        note="; ".join(notes) or None, deps=deps, outs=outs)
    ledger.append(ledger.ledger_path(root), record)
    return record


def run(stage: str, command: list[str], proc: subprocess.Popen | None = None,
        started_at: datetime | None = None) -> int:
    """The wrapper: run (or adopt the already started ``proc``), record, return the exit code."""
    if proc is None:
        started_at = datetime.now(timezone.utc)
        proc = start_command(command)
    started_at = started_at or datetime.now(timezone.utc)
    dvc_stage = os.environ.get("DVC_STAGE")
    if dvc_stage and dvc_stage != stage:
        print(f"lineage: warning: recording as {stage!r} but DVC is running stage {dvc_stage!r}",
              file=sys.stderr)
    root = repo_root()
    preparation = _Preparation(root, stage)
    preparation.start()
    exit_code = wait_command(proc)
    ended_at = datetime.now(timezone.utc)
    tick = time.perf_counter()
    try:
        preparation.join()
        plan = {"notes": [f"stage not resolved: {preparation.error}"]} if preparation.error else preparation.plan
        record = record_run(stage, command, exit_code, started_at, ended_at, root, plan, preparation.git)
        if record.note:
            print(f"lineage: {stage}: {record.note}", file=sys.stderr)
        if os.environ.get("SKINFLOW_LINEAGE_VERBOSE"):
            print(f"lineage: recorded {stage} ({record.status}) {time.perf_counter() - tick:.3f} s "
                  f"after the command", file=sys.stderr)
    except Exception as exc:
        print(f"lineage: warning: run of {stage!r} NOT recorded in the ledger: {exc}", file=sys.stderr)
    return exit_code
