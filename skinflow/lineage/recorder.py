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


def stage_plan(repo, stage_name: str) -> dict:
    """What to record for a stage, read through DVC's index (``foreach`` resolved as ``dvc repro``
    resolves it): its deps and outs as (path, hash algorithm), its params values, and every output
    path of the DAG (for the dirty check)."""
    from dvc.dependency.param import ParamsDependency

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


class Recording(threading.Thread):
    """One run's record in two halves.

    ``run`` (a background thread while the command runs) collects what does not depend on the
    outcome: the git state, the stage's definition and params as the command starts (what ran is
    what was there at start), environment facts, and the heavy imports of DVC and DuckDB.
    ``finish`` (after the command) hashes the stage's artifacts as the command left them and
    appends the record, so the stage waits only for hashing and one insert."""

    def __init__(self, root: Path, stage: str):
        super().__init__(name="lineage-prepare", daemon=True)
        self.root, self.stage = root, stage
        self.git: tuple[str | None, list[str] | None] = (None, None)
        self.plan: dict = {}
        self.notes: list[str] = []
        self.facts: dict = {}
        self.repo = None

    def run(self) -> None:
        self.git = context.git_state(self.root)
        self.facts = {**context.host_info(), "packages": context.package_versions(),
                      "accelerator": context.accelerator(), "prefect_flow_run_id": context.prefect_flow_run_id()}
        try:
            from dvc.repo import Repo

            self.repo = Repo(str(self.root))
            self.plan = stage_plan(self.repo, self.stage)
            self.notes += self.plan["notes"]
            import duckdb  # noqa: F401
            from dvc_data.hashfile import build  # noqa: F401
        except Exception as exc:  # not a DVC repo, unknown stage, unreadable dvc.yaml
            self.notes.append(f"stage not resolved: {exc}")

    def _hash(self, path: str, name: str) -> Digest:
        # Through DVC's hash cache: `dvc repro` reuses these hashes for dvc.lock a moment later.
        try:
            return hash_path(self.repo.root_dir, path, name=name, state=self.repo.state, ignore=self.repo.dvcignore)
        except OSError:
            return Digest(path, None)

    def finish(self, command: list[str], exit_code: int, started_at: datetime, ended_at: datetime) -> ledger.RunRecord:
        own = ledger.record_file(self.stage)   # the record cannot hold its own hash
        try:
            deps = [self._hash(*d) for d in self.plan.get("deps", [])]
            outs = [self._hash(*o) for o in self.plan.get("outs", []) if o[0] != own]
        finally:
            if self.repo is not None:
                self.repo.close()
        commit, changed = self.git
        ledger_file = ledger.ledger_path(self.root)
        # The ledger itself changes with every run; were it committed by mistake, it is not code either.
        generated = [*self.plan.get("generated", []), *_inside(self.root, ledger_file, f"{ledger_file}.wal")]
        dirty_paths = context.code_changes(changed, generated) if changed is not None else []
        record = ledger.RunRecord(
            run_id=str(uuid.uuid4()), stage=self.stage, command=shlex.join(command),
            status="succeeded" if exit_code == 0 else "failed", exit_code=exit_code, started_at=started_at,
            ended_at=ended_at, params=self.plan.get("params", {}), git_commit=commit,
            git_dirty=None if changed is None else bool(dirty_paths), dirty_paths=dirty_paths,
            repo_root=str(self.root), note="; ".join(self.notes) or None, deps=deps, outs=outs, **self.facts)
        ledger.append(ledger_file, record)
        if any(path == own for path, _ in self.plan.get("outs", [])):   # declared: it travels with the results
            ledger.write_record_file(self.root, record)
        return record


def _inside(root: Path, *paths: str | os.PathLike) -> list[str]:
    """``paths`` that lie under ``root``, relative to it."""
    inside = []
    for path in paths:
        try:
            inside.append(Path(path).resolve().relative_to(root.resolve()).as_posix())
        except ValueError:
            continue
    return inside


def record_run(stage: str, command: list[str], exit_code: int, started_at: datetime, ended_at: datetime,
               root: Path) -> ledger.RunRecord:
    """Record a run that has already happened (both halves in the calling thread)."""
    recording = Recording(root, stage)
    recording.run()
    return recording.finish(command, exit_code, started_at, ended_at)


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
    recording = Recording(repo_root(), stage)
    recording.start()
    exit_code = wait_command(proc)
    ended_at = datetime.now(timezone.utc)
    tick = time.perf_counter()
    try:
        recording.join()
        record = recording.finish(command, exit_code, started_at, ended_at)
        if record.note:
            print(f"lineage: {stage}: {record.note}", file=sys.stderr)
        if os.environ.get("SKINFLOW_LINEAGE_VERBOSE"):
            print(f"lineage: recorded {stage} ({record.status}) {time.perf_counter() - tick:.3f} s "
                  f"after the command", file=sys.stderr)
    except Exception as exc:
        print(f"lineage: warning: run of {stage!r} NOT recorded in the ledger: {exc}", file=sys.stderr)
    return exit_code
