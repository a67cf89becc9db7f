"""Audit one metric: its value, and the chain of stages and artifacts back to the raw inputs.

The chain comes from dvc.lock (present in every clone): the stage that wrote the metric file, its
outs and deps with hashes, the stages that wrote those deps, and so on until deps no stage wrote.
Each stage gets the latest *succeeded* ledger record whose output hashes equal dvc.lock's, which
adds what dvc.lock lacks: code revision and dirty flag, package versions, host, times, flow run.
``verify`` re-hashes every artifact on the chain and names each one that no longer matches.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


from skinflow.lineage import LineageError, ledger
from skinflow.lineage.hashing import Digest, hash_path, lock_digest, lock_hash_name

METRIC_SUFFIXES = (".json", ".yaml", ".yml")


@dataclass
class LockStage:
    name: str
    cmd: str
    deps: list[Digest]
    outs: list[Digest]
    params: dict[str, dict[str, Any]]
    hash_names: dict[str, str]            # path -> algorithm, from each entry's `hash:` field


@dataclass
class StageNode:
    """One stage on the chain, with the ledger's record of the run that dvc.lock describes."""

    lock: LockStage
    record: ledger.RunRecord | None
    runs_recorded: int
    latest: ledger.RunRecord | None       # newest record of any outcome, for the "no match" note
    producers: dict[str, str] = field(default_factory=dict)   # dep path -> stage that wrote it
    stale: dict[str, str] = field(default_factory=dict)       # dep path -> producer's current md5

    @property
    def dirty(self) -> bool:
        return bool(self.record and self.record.git_dirty)


@dataclass
class Problem:
    path: str
    kind: str                              # missing | changed | params
    detail: str
    workspace: str | None = None
    expected: list[dict] = field(default_factory=list)   # [{source, md5}] that disagree

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "kind": self.kind, "detail": self.detail,
                "workspace": self.workspace, "expected": self.expected}


@dataclass
class Audit:
    root: Path
    ledger_path: Path
    metric: str
    key: str | None
    value: Any
    metric_lock: Digest                    # the metric file's dvc.lock entry (or its directory's)
    metric_workspace: Digest               # the same path hashed now
    stage: str
    order: list[str]
    nodes: dict[str, StageNode]
    tracked: set[str]
    problems: list[Problem] | None = None  # None: not verified

    @property
    def dirty_stages(self) -> list[str]:
        return [name for name in self.order if self.nodes[name].dirty]

    @property
    def unrecorded_stages(self) -> list[str]:
        return [name for name in self.order if self.nodes[name].record is None]

    @property
    def metric_matches_lock(self) -> bool:
        return self.metric_workspace.md5 == self.metric_lock.md5


# --- dvc.lock ----------------------------------------------------------------------------------

def read_lock(root: Path) -> dict[str, LockStage]:
    path = root / "dvc.lock"
    if not path.exists():
        raise LineageError(f"no dvc.lock in {root}: no stage has run yet (run `dvc repro`)")
    data = _load(path) or {}
    stages = {}
    for name, entry in (data.get("stages") or {}).items():
        deps, outs = entry.get("deps") or [], entry.get("outs") or []
        stages[name] = LockStage(
            name=name, cmd=entry.get("cmd", ""), deps=[lock_digest(d) for d in deps],
            outs=[lock_digest(o) for o in outs], params=entry.get("params") or {},
            hash_names={e["path"]: lock_hash_name(e) for e in deps + outs})
    return stages


def producer_of(stages: dict[str, LockStage], path: str) -> tuple[str, Digest] | None:
    """The stage whose out is ``path`` or a directory containing it."""
    for stage in stages.values():
        for out in stage.outs:
            if path == out.path or path.startswith(out.path.rstrip("/") + "/"):
                return stage.name, out
    return None


# --- the metric --------------------------------------------------------------------------------

def split_target(target: str, root: Path, stages: dict[str, LockStage]) -> tuple[str, str | None]:
    """``file[:dotted.key]`` -> (repo-relative file, key). The split is the first ``:`` whose left
    side names an existing file or a dvc.lock output, so paths and keys may contain ``:``."""
    outs = {o.path for s in stages.values() for o in s.outs}
    candidates = [i for i, ch in enumerate(target) if ch == ":"]
    for i in candidates:
        left = _relative(target[:i], root)
        if left in outs or (root / left).is_file():
            return left, target[i + 1:] or None
    if candidates and not (root / _relative(target, root)).exists():
        i = candidates[0]
        return _relative(target[:i], root), target[i + 1:] or None
    return _relative(target, root), None


def _relative(path: str, root: Path) -> str:
    p = Path(path)
    if p.is_absolute():
        try:
            p = p.resolve().relative_to(root.resolve())
        except ValueError:
            raise LineageError(f"{path} is outside the repository {root}") from None
    return os.path.normpath(p.as_posix()).replace(os.sep, "/")


def _load(path: Path) -> Any:
    """Read YAML/JSON/TOML with DVC's own loaders (YAML 1.2, as DVC writes dvc.lock and reads
    params), so values such as ``5e-06`` compare equal to what DVC recorded."""
    from dvc.utils.serialize import LOADERS

    return LOADERS[path.suffix.lower()](str(path))


def resolve_key(data: Any, key: str, file: str) -> Any:
    """Follow a dotted key; list items by index. A name that itself contains dots is matched whole
    (longest name first), so ``a.b.c`` finds ``{"a.b": {"c": 1}}`` too."""
    parts, node, walked, i = key.split("."), data, [], 0
    while i < len(parts):
        here = ".".join(walked) or "the top level"
        if isinstance(node, dict):
            for j in range(len(parts), i, -1):
                name = ".".join(parts[i:j])
                if name in node:
                    node, i = node[name], j
                    walked.append(name)
                    break
            else:
                keys = ", ".join(map(str, node)) or "(none)"
                raise LineageError(f"{file}: no key {parts[i]!r} at {here}; keys there: {keys}")
        elif isinstance(node, list):
            part = parts[i]
            if not part.lstrip("-").isdigit() or not -len(node) <= int(part) < len(node):
                raise LineageError(f"{file}: {here} is a list of {len(node)} items; {part!r} is not an index")
            node, i = node[int(part)], i + 1
            walked.append(part)
        else:
            raise LineageError(f"{file}: {here} is the value {node!r}; it has no key {parts[i]!r}")
    return node


def _metric_stage(stages: dict[str, LockStage], file: str, root: Path) -> tuple[str, Digest]:
    found = producer_of(stages, file)
    if found is None:
        known = sorted(o.path for s in stages.values() for o in s.outs if o.path.endswith(METRIC_SUFFIXES))
        state = "exists but is not" if (root / file).exists() else "is not"
        raise LineageError(f"{file} {state} an output of any stage in dvc.lock; metric files there: "
                           + (", ".join(known) or "(none)"))
    if not (root / file).is_file():
        raise LineageError(f"{file} is an output of stage {found[0]} in dvc.lock but is missing from the "
                           f"workspace: restore it (`dvc checkout`, or git for uncached metrics) or run "
                           f"`dvc repro {found[0]}`")
    return found  # for a file inside a directory output, the directory's entry: lock hashes it whole


# --- the chain ---------------------------------------------------------------------------------

def wrapped_command(cmd: str) -> list[str] | None:
    """The command inside ``python -m skinflow.lineage run <stage> -- <command...>``, split."""
    try:
        words = shlex.split(cmd)
    except ValueError:
        return None
    if "skinflow.lineage" in words and "--" in words:
        return words[words.index("--") + 1:]
    return None


def _pick_record(lock: LockStage, records: list[ledger.RunRecord]) -> ledger.RunRecord | None:
    """Latest succeeded run whose outputs hash as dvc.lock says (failed runs never qualify),
    preferring a run of the command dvc.lock names over, say, a manual re-run of something else."""
    # The stage's own record file is an out dvc.lock hashes but the record cannot: written after the hashing.
    wanted = {o.path: o.md5 for o in lock.outs if o.path != ledger.record_file(lock.name)}
    matching = [r for r in records if r.succeeded and wanted
                and all({o.path: o.md5 for o in r.outs}.get(p) == md5 for p, md5 in wanted.items())]
    command = wrapped_command(lock.cmd)
    same = [r for r in matching if command is not None and shlex.split(r.command) == command]
    return (same or matching or [None])[0]


def export_records(root: str | os.PathLike = ".", ledger_file: str | os.PathLike | None = None) -> dict[str, str | None]:
    """Write each locked stage's record file from the ledger: the run dvc.lock describes. For runs recorded
    before stages declared their record files (then ``dvc commit`` them), or a lost file. Only stages whose
    dvc.yaml outs list the file. Returns stage -> written path, or None where the ledger holds no matching run."""
    from dvc.repo import Repo

    root = Path(root).resolve()
    ledger_file = Path(ledger_file) if ledger_file else ledger.ledger_path(root)
    stages = read_lock(root)
    with Repo(str(root)) as repo:
        declared = {s.name: {o.def_path for o in s.outs} for s in repo.index.stages}
    by_stage: dict[str, list[ledger.RunRecord]] = {}
    for record in ledger.runs(ledger_file, stage=list(stages)):
        by_stage.setdefault(record.stage, []).append(record)
    written: dict[str, str | None] = {}
    for name, lock in stages.items():
        target = ledger.record_file(name)
        if target not in declared.get(name, set()):
            continue
        record = _pick_record(lock, by_stage.get(name, []))
        if record is not None:
            ledger.write_record_file(root, record)
        written[name] = target if record is not None else None
    return written


def git_tracked(root: Path) -> set[str]:
    """Paths git tracks under ``root`` (relative to it), plus every parent directory of them."""
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return set()
    tracked = set()
    for path in filter(None, out.stdout.decode("utf-8", "surrogateescape").split("\0")):
        tracked.add(path)
        while "/" in path:
            path = path.rsplit("/", 1)[0]
            tracked.add(path)
    return tracked


def build_audit(target: str, root: str | os.PathLike = ".", ledger_file: str | os.PathLike | None = None) -> Audit:
    """Resolve ``file[:key]`` and walk dvc.lock from its stage back to the raw inputs."""
    root = Path(root).resolve()
    stages = read_lock(root)
    file, key = split_target(target, root, stages)
    if not file.endswith(METRIC_SUFFIXES):
        raise LineageError(f"{file}: metric files are JSON or YAML ({', '.join(METRIC_SUFFIXES)})")
    stage_name, metric_lock = _metric_stage(stages, file, root)
    try:
        data = _load(root / file)
    except Exception as exc:  # DVC wraps parser errors in its own exception types
        raise LineageError(f"{file} is not valid {Path(file).suffix[1:].upper()}: {exc}") from None
    value = resolve_key(data, key, file) if key else data
    order, nodes, queue = [], {}, [stage_name]
    while queue:
        name = queue.pop(0)
        if name in nodes:
            continue
        node = nodes[name] = StageNode(stages[name], None, 0, None)
        order.append(name)
        for dep in node.lock.deps:
            found = producer_of(stages, dep.path)
            if found is None or found[0] == name:
                continue
            node.producers[dep.path] = found[0]
            if found[1].path == dep.path and found[1].md5 != dep.md5:
                node.stale[dep.path] = found[1].md5
            queue.append(found[0])

    ledger_file = Path(ledger_file) if ledger_file else ledger.ledger_path(root)
    ledger.index_records(ledger_file, root)   # records that came with the results (other checkouts, a clone)
    by_stage: dict[str, list[ledger.RunRecord]] = {}
    for record in ledger.runs(ledger_file, stage=order):
        by_stage.setdefault(record.stage, []).append(record)
    for name, node in nodes.items():
        records = by_stage.get(name, [])
        node.record, node.runs_recorded = _pick_record(node.lock, records), len(records)
        node.latest = records[0] if records else None
    workspace = hash_path(root, metric_lock.path, name=stages[stage_name].hash_names.get(metric_lock.path, "md5"))
    return Audit(root, ledger_file, file, key, value, metric_lock, workspace, stage_name, order, nodes,
                 git_tracked(root))


# --- verification ------------------------------------------------------------------------------

def verify(audit: Audit) -> list[Problem]:
    """Re-hash every artifact on the chain, reading every byte (DVC's mtime-keyed hash cache is
    bypassed), and compare with each hash dvc.lock and the ledger recorded for it."""
    from dvc.repo import Repo

    expected: dict[str, list[dict]] = {}
    names: dict[str, str] = {}
    for name in audit.order:
        node = audit.nodes[name]
        for role, digests in (("out", node.lock.outs), ("dep", node.lock.deps)):
            for d in digests:
                expected.setdefault(d.path, []).append({"source": f"dvc.lock {role} of {name}", "md5": d.md5})
                names.setdefault(d.path, node.lock.hash_names.get(d.path, "md5"))
        if node.record is not None:
            tag = f"ledger run {node.record.run_id[:8]} of {name}"
            for role, digests in (("out", node.record.outs), ("dep", node.record.deps)):
                for d in digests:
                    if d.path in expected:
                        expected[d.path].append({"source": f"{tag} ({role})", "md5": d.md5})
    problems = []
    try:
        repo = Repo(str(audit.root))
    except Exception:  # a dvc.lock without a DVC repository around it: no .dvcignore rules
        repo = None
    try:
        ignore = repo.dvcignore if repo is not None else None
        for path, sources in expected.items():
            got = hash_path(audit.root, path, name=names[path], ignore=ignore)
            if got.md5 is None:
                problems.append(Problem(path, "missing", "not in the workspace (dvc checkout / dvc pull?)",
                                        None, sources))
                continue
            wrong = [s for s in sources if s["md5"] != got.md5]
            if wrong:
                problems.append(Problem(path, "changed", "; ".join(f"{s['source']} has {s['md5']}" for s in wrong),
                                        got.md5, wrong))
    finally:
        if repo is not None:
            repo.close()
    problems += _params_problems(audit)
    audit.problems = problems
    return problems


def _params_problems(audit: Audit) -> list[Problem]:
    """Params files whose current values differ from those dvc.lock recorded for a chain stage."""
    problems = []
    cache: dict[str, Any] = {}
    for name in audit.order:
        for file, values in audit.nodes[name].lock.params.items():
            if file not in cache:
                path = audit.root / file
                cache[file] = _load(path) if path.exists() else None
            for key, recorded in values.items():
                try:
                    current = resolve_key(cache[file], key, file) if cache[file] is not None else None
                except LineageError:
                    current = None
                if current != recorded:
                    problems.append(Problem(f"{file}:{key}", "params",
                                            f"stage {name} ran with {recorded!r}, the file now has {current!r}"))
    return problems
