"""Everything the run report reads, loaded once, each file with its provenance.

Every input is optional: a file that is not there is an ``Artifact`` with ``data=None``, which the
renderer shows as "not produced in this run". Provenance comes from ``dvc.lock``: the stage whose
``outs`` hold the file (a foreach stage reads ``evaluate@stage1``), the md5 DVC recorded for that
out (a ``.dir`` hash when the file sits inside a directory out), whether the file on disk still
has that md5, and the params the stage ran with. The code revision is ``git rev-parse HEAD`` plus
a dirty flag: uncommitted changes to tracked files, not counting pipeline outputs (``dvc.lock`` and
every out it lists, which a run rewrites by design) nor untracked files.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import pandas as pd
import yaml

from skinflow.config import Section
from skinflow.io import md5_file

# logical name -> path, in report order; ``GLOBS`` add one artifact per matching file.
SOURCES: dict[str, str] = {
    "ingest": "data/interim/ingest_report.json",
    "validation": "data/reports/validation.json",
    "data_metrics": "metrics/data.json",
    "captions": "data/reports/captions.json",
    "base_model": "metrics/base_model.json",
    "warmup_summary": "metrics/warmup.json",
    "warmup_curve": "metrics/warmup_curve.csv",
    "stage1_summary": "metrics/rl/stage1-s0.json",
    "stage1_log": "metrics/rl/stage1-s0_log.csv",
    "stage2_summary": "metrics/rl/stage2-s0.json",
    "stage2_log": "metrics/rl/stage2-s0_log.csv",
    "ablation": "reports/ablation.json",
    "attention": "metrics/attention.json",
    "attention_png": "reports/attention.png",
}
GLOBS: dict[str, str] = {"eval": "metrics/eval/*.json", "baselines": "metrics/baselines/*.json"}


class ReportConfig(Section):
    title: str = "SkinFlow run report"
    chart_max_points: int = 400      # longer curves are thinned evenly (the CSVs keep every point)
    git_revision: bool = False       # name the git commit in the report (then it changes with every commit)


@dataclass(frozen=True)
class Provenance:
    path: str
    stage: str | None = None          # producing DVC stage; None = not in dvc.lock
    lock_path: str | None = None      # the locked out holding the file (itself, or a directory)
    lock_md5: str | None = None
    current_md5: str | None = None    # md5 of the file as read; None when it is absent
    params: dict[str, Any] = field(default_factory=dict)   # the stage's locked params, by section

    @property
    def state(self) -> str:
        if self.stage is None:
            return "not tracked by dvc.lock"
        if self.lock_path != self.path:
            return f"inside locked directory {self.lock_path}"
        if self.current_md5 is None:
            return "locked, file absent"
        return "matches dvc.lock" if self.current_md5 == self.lock_md5 else "differs from dvc.lock"


@dataclass(frozen=True)
class Artifact:
    name: str
    path: str
    data: Any                          # dict/list (JSON), DataFrame (CSV), bytes (PNG); None = absent
    provenance: Provenance

    @property
    def present(self) -> bool:
        return self.data is not None


@dataclass(frozen=True)
class ReportInputs:
    config: ReportConfig
    code: dict[str, Any]               # {"commit": str | None, "dirty": bool | None}
    artifacts: dict[str, Artifact]     # logical name (``eval/stage1``, ``baselines/cfa``, ...) -> artifact

    def get(self, name: str) -> Artifact | None:
        return self.artifacts.get(name)

    def group(self, prefix: str) -> list[Artifact]:
        return [a for n, a in self.artifacts.items() if n.startswith(prefix + "/")]


# ---- dvc.lock and git ---------------------------------------------------------------------------------


def lock_index(lock: dict | None) -> list[tuple[str, str, str | None, dict]]:
    """``(out path, stage, md5, params)`` for every out of every locked stage."""
    index = []
    for stage, body in ((lock or {}).get("stages") or {}).items():
        params = {}
        for values in (body.get("params") or {}).values():
            params.update(values or {})
        for out in body.get("outs") or []:
            index.append((str(out["path"]).rstrip("/"), stage, out.get("md5"), params))
    return index


def provenance_of(path: str, index: list[tuple[str, str, str | None, dict]],
                  current_md5: str | None) -> Provenance:
    """The locked out that is ``path`` or the closest directory containing it."""
    best = None
    for out, stage, md5, params in index:
        if path == out or path.startswith(out + "/"):
            if best is None or len(out) > len(best[0]):
                best = (out, stage, md5, params)
    if best is None:
        return Provenance(path, current_md5=current_md5)
    out, stage, md5, params = best
    return Provenance(path, stage, out, md5, current_md5, params)


def code_revision(root: str | os.PathLike = ".", outputs: Iterable[str] = ()) -> dict[str, Any]:
    """``{"commit", "dirty", "changed"}`` from git (None outside a checkout); ``outputs`` are paths
    (files or directories) whose changes are results, not code."""
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return None
        # rstrip only: porcelain lines start with a status column that may be a space.
        return done.stdout.rstrip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    if commit is None or status is None:
        return {"commit": commit, "dirty": None, "changed": []}
    skip = ["dvc.lock", *(o.rstrip("/") for o in outputs)]
    changed = []
    for line in status.splitlines():
        path = line[3:].split(" -> ")[-1].strip('"')
        if not any(path == s or path.startswith(s + "/") for s in skip):
            changed.append(path)
    return {"commit": commit, "dirty": bool(changed), "changed": changed}


# ---- loading ------------------------------------------------------------------------------------------


def _read(path: Path) -> Any:
    if path.suffix == ".json":
        return json.loads(path.read_text(encoding="utf-8"))
    if path.suffix == ".csv":
        return pd.read_csv(path)
    return path.read_bytes()


def load_inputs(config: ReportConfig, root: str | os.PathLike = ".", lock_file: str = "dvc.lock") -> ReportInputs:
    """Read every report input under ``root``; absent or unreadable files become absent artifacts."""
    root = Path(root)
    lock_path = root / lock_file
    lock = yaml.safe_load(lock_path.read_text(encoding="utf-8")) if lock_path.exists() else None
    index = lock_index(lock)
    named = dict(SOURCES)
    for prefix, pattern in GLOBS.items():
        for path in sorted(root.glob(pattern)):
            named[f"{prefix}/{path.stem}"] = path.relative_to(root).as_posix()
    artifacts = {}
    for name, rel in named.items():
        path = root / rel
        data, digest = None, None
        if path.is_file():
            digest = md5_file(path)
            try:
                data = _read(path)
            except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as exc:
                print(f"report: {rel} unreadable ({exc}); shown as not produced")
        artifacts[name] = Artifact(name, rel, data, provenance_of(rel, index, digest))
    return ReportInputs(config, code_revision(root, [out for out, *_ in index]), artifacts)
