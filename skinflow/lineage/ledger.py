"""The run ledger: an append-only DuckDB file, one row per stage run plus one per artifact hash.

Two tables, so the ledger answers SQL questions directly (``which run produced md5 X?``):

* ``runs``: stage, command, status/exit code, times, params (JSON), git commit + dirty flag and the
  dirty paths, package versions (JSON), host, platform, accelerator, Prefect flow-run id.
* ``artifacts``: (run_id, role ``dep``/``out``, path, md5, size, nfiles); md5 NULL = missing.

Default location ``<repo>/.skinflow/lineage.duckdb``; ``SKINFLOW_LEDGER`` overrides it. Writers hold
the file for milliseconds; a concurrent opener retries instead of failing.

The ledger is an index, not the only copy: a stage that declares ``metrics/timing/lineage/<stage>.json`` among its
outputs (every dvc.yaml stage does) also gets its latest record written there, so the record travels with the
stage's results (git, the hand-off between worker checkouts) and :func:`index_records` rebuilds the ledger from
those files in any checkout.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable, Iterator

from skinflow.lineage.hashing import Digest

LEDGER_ENV = "SKINFLOW_LEDGER"
DEFAULT_LEDGER = Path(".skinflow") / "lineage.duckdb"
LOCK_WAIT_S = 30.0

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS runs (
        run_id VARCHAR PRIMARY KEY, stage VARCHAR NOT NULL, command VARCHAR, status VARCHAR NOT NULL,
        exit_code INTEGER, started_at TIMESTAMPTZ, ended_at TIMESTAMPTZ, params VARCHAR,
        git_commit VARCHAR, git_dirty BOOLEAN, dirty_paths VARCHAR, packages VARCHAR, host VARCHAR,
        platform VARCHAR, python VARCHAR, accelerator VARCHAR, prefect_flow_run_id VARCHAR,
        repo_root VARCHAR, note VARCHAR)""",
    """CREATE TABLE IF NOT EXISTS artifacts (
        run_id VARCHAR NOT NULL, role VARCHAR NOT NULL, path VARCHAR NOT NULL, md5 VARCHAR,
        size BIGINT, nfiles BIGINT)""",
)
_RUN_COLUMNS = ("run_id", "stage", "command", "status", "exit_code", "started_at", "ended_at", "params",
                "git_commit", "git_dirty", "dirty_paths", "packages", "host", "platform", "python",
                "accelerator", "prefect_flow_run_id", "repo_root", "note")
_JSON_COLUMNS = {"params", "dirty_paths", "packages"}


@dataclass
class RunRecord:
    """One execution of one stage, as appended by the ``run`` wrapper."""

    run_id: str
    stage: str
    command: str
    status: str                      # "succeeded" | "failed"
    exit_code: int
    started_at: datetime
    ended_at: datetime
    params: dict[str, Any] = field(default_factory=dict)     # {params file: {key: value}}, as in dvc.lock
    git_commit: str | None = None
    git_dirty: bool | None = None
    dirty_paths: list[str] = field(default_factory=list)
    packages: dict[str, str | None] = field(default_factory=dict)
    host: str | None = None
    platform: str | None = None
    python: str | None = None
    accelerator: str | None = None
    prefect_flow_run_id: str | None = None
    repo_root: str | None = None
    note: str | None = None
    deps: list[Digest] = field(default_factory=list)
    outs: list[Digest] = field(default_factory=list)

    @property
    def succeeded(self) -> bool:
        return self.status == "succeeded"

    @property
    def seconds(self) -> float:
        return (self.ended_at - self.started_at).total_seconds()

    def as_dict(self) -> dict[str, Any]:
        data = {name: getattr(self, name) for name in _RUN_COLUMNS}
        data["started_at"], data["ended_at"] = self.started_at.isoformat(), self.ended_at.isoformat()
        data["seconds"] = round(self.seconds, 3)
        data["deps"] = [d.as_dict() for d in self.deps]
        data["outs"] = [d.as_dict() for d in self.outs]
        return data


RECORDS_DIR = "metrics/timing/lineage"   # run facts: excluded from the byte-for-byte reproducibility checks


def record_file(stage: str) -> str:
    """Where a stage's latest record is kept, relative to the repo root."""
    return f"{RECORDS_DIR}/{stage}.json"


def write_record_file(root: str | os.PathLike, record: RunRecord) -> Path:
    """Write ``record`` to its stage's record file, atomically (temp + rename; no skinflow.io, whose pandas import
    would slow every stage's exit)."""
    path = Path(root) / record_file(record.stage)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record.as_dict(), indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def record_from_dict(data: dict[str, Any]) -> RunRecord:
    fields = {c: data.get(c) for c in _RUN_COLUMNS}
    fields["started_at"] = datetime.fromisoformat(data["started_at"])
    fields["ended_at"] = datetime.fromisoformat(data["ended_at"])
    fields["params"], fields["dirty_paths"] = fields["params"] or {}, fields["dirty_paths"] or []
    fields["packages"] = fields["packages"] or {}
    return RunRecord(**fields, deps=[Digest(**d) for d in data.get("deps") or []],
                     outs=[Digest(**d) for d in data.get("outs") or []])


def index_records(path: str | os.PathLike, repo_root: str | os.PathLike = ".") -> int:
    """Add to the ledger every record file under ``RECORDS_DIR`` whose run it does not hold yet (records made in
    other checkouts, or a fresh clone's empty ledger); returns how many were added."""
    files = sorted((Path(repo_root) / RECORDS_DIR).glob("*.json"))
    if not files:
        return 0
    known = {r.run_id for r in runs(path)}
    added = 0
    for file in files:
        record = record_from_dict(json.loads(file.read_text(encoding="utf-8")))
        if record.run_id not in known:
            append(path, record)
            known.add(record.run_id)
            added += 1
    return added


def ledger_path(repo_root: str | os.PathLike = ".") -> Path:
    """``$SKINFLOW_LEDGER`` if set (relative to the working directory), else the repo default."""
    override = os.environ.get(LEDGER_ENV)
    return Path(override) if override else Path(repo_root) / DEFAULT_LEDGER


def _connect(path: Path, read_only: bool):
    import duckdb

    deadline = time.monotonic() + LOCK_WAIT_S
    delay = 0.02
    while True:
        try:
            return duckdb.connect(str(path), read_only=read_only)
        except duckdb.IOException as exc:
            # Another process holds the write lock (a stage finishing at the same moment).
            if "lock" not in str(exc).lower() or time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.5)


def append(path: str | os.PathLike, record: RunRecord) -> None:
    """Append one run and its artifact hashes in a single transaction."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    con = _connect(path, read_only=False)
    try:
        for statement in _SCHEMA:
            con.execute(statement)
        values = [json.dumps(getattr(record, c), sort_keys=True, default=str) if c in _JSON_COLUMNS
                  else getattr(record, c) for c in _RUN_COLUMNS]
        con.execute("BEGIN TRANSACTION")
        con.execute(f"INSERT INTO runs ({', '.join(_RUN_COLUMNS)}) VALUES "
                    f"({', '.join('?' * len(_RUN_COLUMNS))})", values)
        rows = [(record.run_id, role, d.path, d.md5, d.size, d.nfiles)
                for role, digests in (("dep", record.deps), ("out", record.outs)) for d in digests]
        if rows:
            con.executemany("INSERT INTO artifacts VALUES (?, ?, ?, ?, ?, ?)", rows)
        con.execute("COMMIT")
    finally:
        con.close()


def runs(path: str | os.PathLike, stage: str | Iterable[str] | None = None,
         limit: int | None = None) -> list[RunRecord]:
    """Records, newest first (optionally of one stage or of several). A missing ledger is empty."""
    stages = None if stage is None else [stage] if isinstance(stage, str) else list(stage)
    return list(_iter_runs(Path(path), stages, limit))


def _iter_runs(path: Path, stages: list[str] | None, limit: int | None) -> Iterator[RunRecord]:
    if not path.exists():
        return
    con = _connect(path, read_only=True)
    try:
        if not con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = 'runs'").fetchone()[0]:
            return
        where, args = ("WHERE list_contains(?, stage)", [stages]) if stages is not None else ("", [])
        tail = f" LIMIT {int(limit)}" if limit else ""
        rows = con.execute(f"SELECT {', '.join(_RUN_COLUMNS)} FROM runs {where} "
                           f"ORDER BY ended_at DESC, started_at DESC{tail}", args).fetchall()
        ids = [row[0] for row in rows]
        artifacts: dict[str, dict[str, list[Digest]]] = {i: {"dep": [], "out": []} for i in ids}
        if ids:
            for run_id, role, p, md5, size, nfiles in con.execute(
                    "SELECT run_id, role, path, md5, size, nfiles FROM artifacts "
                    "WHERE list_contains(?, run_id) ORDER BY rowid", [ids]).fetchall():
                artifacts[run_id][role].append(Digest(p, md5, size, nfiles))
    finally:
        con.close()
    for row in rows:
        data = dict(zip(_RUN_COLUMNS, row))
        for column in _JSON_COLUMNS:
            data[column] = json.loads(data[column]) if data[column] is not None else None
        data["params"] = data["params"] or {}
        data["dirty_paths"] = data["dirty_paths"] or []
        data["packages"] = data["packages"] or {}
        yield RunRecord(**data, deps=artifacts[data["run_id"]]["dep"], outs=artifacts[data["run_id"]]["out"])
