"""A stage's inputs and outputs between checkouts, through the DVC remote, with one ``dvc.lock`` of record.

A stage may run in a checkout that did not run its parents (a GPU worker's own checkout, at the same git
commit). Around the stage, in that checkout:

1. :func:`receive` takes a :class:`Package` from the orchestrating checkout: the ``dvc.lock`` entries of the
   stage's upstream stages (merged into this checkout's ``dvc.lock``, so DVC knows their outputs' hashes) and
   their uncached outputs (``cache: false`` metrics, written as files: the remote never holds them). Then
   ``dvc pull`` fetches exactly the cached outputs the stage's deps name (an out equal to a dep, a directory
   out holding a dep, or the outs inside a directory dep), nothing else.
2. The stage runs as always (``run_dvc_stage``): DVC judges staleness and writes the stage's lock entry.
3. :func:`send` pushes the stage's cached outputs to the remote and returns a package: its lock entry and its
   uncached files.

The orchestrating checkout :func:`receive`\\ s every stage's package (``pull=False``: only the lock entry and the
uncached files; cached outputs stay on the remote until a stage there needs them, or ``dvc pull``). It is the
one writer of record: its ``dvc.lock`` holds every entry, and it is the file committed at the end of a run.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import yaml

LOCK = "dvc.lock"


@dataclass
class Package:
    """What travels with a task between checkouts: lock entries by stage, and uncached files by path (base64)."""

    stages: dict[str, dict] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"stages": self.stages, "files": self.files}

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> "Package":
        return cls(dict((data or {}).get("stages") or {}), dict((data or {}).get("files") or {}))

    def merged(self, *others: "Package") -> "Package":
        out = Package(dict(self.stages), dict(self.files))
        for other in others:
            out.stages.update(other.stages)
            out.files.update(other.files)
        return out

    def only(self, stages: set[str], paths: set[str]) -> "Package":
        """The entries of ``stages`` and the files at (or under) ``paths``."""
        return Package({s: e for s, e in self.stages.items() if s in stages},
                       {p: b for p, b in self.files.items() if any(_within(p, q) for q in paths)})


@dataclass(frozen=True)
class StageIO:
    name: str
    deps: tuple[str, ...]                 # file/directory deps (params excluded), repo-relative
    cached_outs: tuple[str, ...]
    uncached_outs: tuple[str, ...]
    inputs: tuple[tuple[str, str, bool], ...]   # (upstream stage, its out the deps need, cached)


def _within(path: str, other: str) -> bool:
    return path == other or path.startswith(other.rstrip("/") + "/")


def all_stage_io(repo_dir: str | os.PathLike) -> dict[str, StageIO]:
    """Every stage's deps and outs, and which outputs of which upstream stages its deps need (one DVC index)."""
    from dvc.dependency.param import ParamsDependency
    from dvc.repo import Repo

    with Repo(str(repo_dir)) as repo:
        stages = {s.name: s for s in repo.index.stages}
        outs = {name: [(o.def_path, bool(o.use_cache)) for o in stage.outs] for name, stage in stages.items()}
        result = {}
        for name, stage in stages.items():
            deps = tuple(d.def_path for d in stage.deps if not isinstance(d, ParamsDependency))
            inputs = sorted({(other, path, cached) for other, listed in outs.items() if other != name
                             for path, cached in listed for d in deps if _within(d, path) or _within(path, d)})
            result[name] = StageIO(name, deps, tuple(p for p, c in outs[name] if c),
                                   tuple(p for p, c in outs[name] if not c), tuple(inputs))
    return result


def stage_io(repo_dir: str | os.PathLike, name: str) -> StageIO:
    """One stage's :class:`StageIO`."""
    every = all_stage_io(repo_dir)
    if name not in every:
        raise KeyError(f"no stage {name!r} in {repo_dir}/dvc.yaml")
    return every[name]


def read_lock(repo_dir: str | os.PathLike) -> dict:
    path = Path(repo_dir) / LOCK
    return yaml.safe_load(path.read_text(encoding="utf-8")) if path.exists() else {}


def merge_lock_entries(repo_dir: str | os.PathLike, entries: dict[str, dict]) -> None:
    """Replace (or add) these stages' entries in the checkout's dvc.lock, atomically; other entries stay."""
    from skinflow.io import atomic_path   # lazily: importing the flow module stays light (pandas)

    if not entries:
        return
    lock = read_lock(repo_dir) or {"schema": "2.0", "stages": {}}
    lock.setdefault("stages", {}).update(entries)
    with atomic_path(Path(repo_dir) / LOCK) as tmp:
        Path(tmp).write_text(yaml.safe_dump(lock, sort_keys=False), encoding="utf-8")


def _encoded_files(root: Path, outs: Iterable[str]) -> dict[str, str]:
    """Every file at or under ``outs`` (uncached outputs), base64 by repo-relative path."""
    found = []
    for rel in outs:
        path = root / rel
        if path.is_dir():
            found += sorted(str(p.relative_to(root)) for p in path.rglob("*") if p.is_file())
        elif path.is_file():
            found.append(rel)
    return {rel: base64.b64encode((root / rel).read_bytes()).decode("ascii") for rel in found}


def _dvc(repo_dir: str | os.PathLike, args: list[str], env: dict[str, str] | None,
         log: Callable[[str], None]) -> None:
    done = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo_dir, env=env, capture_output=True,
                          text=True)
    for line in (done.stdout + done.stderr).splitlines():
        if line.strip():
            log(line)
    if done.returncode != 0:
        raise RuntimeError(f"dvc {' '.join(args)} failed in {repo_dir} ({done.returncode}):\n{done.stderr[-2000:]}")


def receive(repo_dir: str | os.PathLike, package: Package, stage: str | StageIO | None = None, pull: bool = True,
            env: dict[str, str] | None = None, log: Callable[[str], None] = print) -> list[str]:
    """Merge the package's lock entries and write its uncached files; with ``stage`` (a name, or its
    :class:`StageIO` when the caller has it) and ``pull``, then pull the cached outputs that stage's deps need.
    Returns the pulled paths."""
    from skinflow.io import atomic_path

    root = Path(repo_dir)
    merge_lock_entries(root, package.stages)
    for rel, blob in sorted(package.files.items()):
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(target) as tmp:
            Path(tmp).write_bytes(base64.b64decode(blob))
    if stage is None or not pull:
        return []
    io = stage if isinstance(stage, StageIO) else stage_io(root, stage)
    stage = io.name
    missing = sorted({s for s, _, _ in io.inputs} - set(read_lock(root).get("stages") or {}))
    if missing:
        raise RuntimeError(f"stage {stage}: no dvc.lock entry for upstream {missing}; run them first or pass "
                           "their package")
    needed = sorted({out for _, out, cached in io.inputs if cached})
    if needed:
        _dvc(root, ["pull", *needed], env, log)
    if stage in package.stages and io.cached_outs:
        # The stage's own entry came along: fetch its outputs where the remote has them, so DVC can see the
        # stage is up to date instead of re-running it in a checkout that never had them.
        _dvc(root, ["pull", "--allow-missing", *io.cached_outs], env, log)
    return needed


def send(repo_dir: str | os.PathLike, stage: str | StageIO, env: dict[str, str] | None = None,
         log: Callable[[str], None] = print) -> Package:
    """Push the stage's cached outputs to the default remote; return its lock entry and uncached files."""
    root = Path(repo_dir)
    io = stage if isinstance(stage, StageIO) else stage_io(root, stage)
    stage = io.name
    entry = (read_lock(root).get("stages") or {}).get(stage)
    if entry is None:
        raise RuntimeError(f"stage {stage} has no dvc.lock entry in {repo_dir}: did it run?")
    if io.cached_outs:
        _dvc(root, ["push", *io.cached_outs], env, log)
    return Package({stage: entry}, _encoded_files(root, io.uncached_outs))


def upstream_package(package: Package, io: StageIO) -> Package:
    """The part of an accumulated package one stage needs: its upstream stages' entries and uncached outputs,
    and its own entry (when there is one) so that an up-to-date stage is not re-run elsewhere."""
    return package.only({io.name, *(s for s, _, _ in io.inputs)},
                        {out for _, out, cached in io.inputs if not cached})


def local_package(repo_dir: str | os.PathLike, ios: dict[str, StageIO], stages: set[str] | None = None) -> Package:
    """What this checkout already holds, as a package: the dvc.lock entries of ``stages`` (default: all) and the
    uncached outputs on disk. The orchestrating checkout starts from it, so stages a run skips still hand on."""
    root = Path(repo_dir)
    locked = read_lock(root).get("stages") or {}
    names = set(ios) if stages is None else stages
    files = _encoded_files(root, [out for name in names if name in ios for out in ios[name].uncached_outs])
    return Package({n: e for n, e in locked.items() if n in names}, files)
