"""An ``Audit`` as a text tree (for people) or a JSON document (for tools)."""

from __future__ import annotations

import json
import textwrap
from typing import Any

from skinflow.lineage.audit import Audit, StageNode
from skinflow.lineage.hashing import Digest

WIDTH = 110


def _fmt_value(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 400 else text[:400] + " …"


def _flatten(prefix: str, value: Any) -> list[str]:
    if isinstance(value, dict) and value:
        return [item for k, v in value.items() for item in _flatten(f"{prefix}.{k}" if prefix else str(k), v)]
    return [f"{prefix}={json.dumps(value, default=str)}"]


def _params_text(params: dict[str, dict]) -> str:
    items = []
    for file, values in params.items():
        for item in _flatten("", values):
            items.append(item if file == "params.yaml" else f"{file}:{item}")
    return ", ".join(items) or "(none)"


def _digest(d: Digest) -> str:
    if d.md5 is None:
        return "MISSING"
    files = f", {d.nfiles} files" if d.nfiles is not None else ""
    size = f"{d.size:,} B" if d.size is not None else "? B"
    return f"md5 {d.md5} ({size}{files})"


def _run_lines(node: StageNode) -> list[str]:
    record = node.record
    if record is None:
        if node.runs_recorded:
            latest = node.latest
            return [f"run: NO LEDGER RECORD matches dvc.lock's outputs ({node.runs_recorded} run(s) of this "
                    f"stage recorded; latest {latest.status} at {latest.ended_at.isoformat(timespec='seconds')}, "
                    f"rev {(latest.git_commit or '?')[:10]}); params below are dvc.lock's"]
        return ["run: no ledger record for this stage (ran without the lineage wrapper, or the ledger "
                "is elsewhere); params below are dvc.lock's, code revision unknown"]
    flow = f", Prefect flow run {record.prefect_flow_run_id}" if record.prefect_flow_run_id else ""
    lines = [f"run: {record.status} {record.started_at.isoformat(timespec='seconds')} -> "
             f"{record.ended_at.isoformat(timespec='seconds')} ({record.seconds:.1f} s){flow}; "
             f"ledger run {record.run_id[:8]}"]
    if record.git_dirty:
        shown = ", ".join(record.dirty_paths[:8]) + (" …" if len(record.dirty_paths) > 8 else "")
        lines.append(f"code: rev {(record.git_commit or '(none)')[:12]} + UNCOMMITTED CHANGES (dirty): {shown}")
    else:
        state = "clean" if record.git_dirty is False else "not a git checkout"
        lines.append(f"code: rev {(record.git_commit or '(none)')[:12]} ({state})")
    packages = ", ".join(f"{k} {v or '-'}" for k, v in record.packages.items())
    lines.append(f"env: {record.host} ({record.platform}, python {record.python}), accelerator "
                 f"{record.accelerator}; {packages}")
    return lines


def _raw_note(audit: Audit, path: str) -> str:
    if (audit.root / f"{path}.dvc").exists():
        return f"raw input, tracked by {path}.dvc"
    return "raw input, in git" if path in audit.tracked else "raw input, not in git"


def render_tree(audit: Audit) -> str:
    shown = f":{audit.key}" if audit.key else ""
    lines = [f"{audit.metric}{shown} = {_fmt_value(audit.value)}"]
    if audit.metric_matches_lock:
        lines.append(f"{audit.metric_lock.path} matches dvc.lock ({audit.metric_lock.md5}), written by stage "
                     f"{audit.stage}")
    else:
        lines.append(f"WARNING: {audit.metric_lock.path} differs from dvc.lock (workspace {audit.metric_workspace.md5}, "
                     f"dvc.lock {audit.metric_lock.md5}): this value is not the one the chain below produced")
    if audit.dirty_stages:
        lines.append("DIRTY: produced from uncommitted code (git tree dirty) in stage(s): "
                     + ", ".join(audit.dirty_stages))
    if audit.unrecorded_stages:
        lines.append("no ledger record for: " + ", ".join(audit.unrecorded_stages) + f" (ledger {audit.ledger_path})")
    stale = [(n, p) for n in audit.order for p in audit.nodes[n].stale]
    for name, path in stale:
        lines.append(f"STALE: stage {name} used {path} at a version its producer has since replaced (dvc repro)")
    seen: set[str] = set()
    _stage_lines(audit, audit.stage, "", True, seen, lines)
    if audit.problems is not None:
        lines.append("")
        if audit.problems:
            lines.append(f"VERIFY FAILED: {len(audit.problems)} artifact(s) do not match:")
            lines += [f"  {p.path}: {p.kind}: " + (f"workspace {p.workspace}; " if p.workspace else "") + p.detail
                      for p in audit.problems]
        else:
            lines.append("verify: every artifact on the chain matches dvc.lock and the ledger")
    return "\n".join(lines) + "\n"


def _stage_lines(audit: Audit, name: str, indent: str, last: bool, seen: set[str], lines: list[str]) -> None:
    node = audit.nodes[name]
    branch, child = ("└── ", "    ") if last else ("├── ", "│   ")
    if name in seen:
        lines.append(f"{indent}{branch}stage {name} (shown above)")
        return
    seen.add(name)
    dirty = "  [DIRTY]" if node.dirty else ""
    lines.append(f"{indent}{branch}stage {name}{dirty}")
    inner = indent + child
    items: list[tuple[str, str | None]] = [(text, None) for text in _run_lines(node)]
    items.append((f"params: {_params_text(node.record.params if node.record else node.lock.params)}", None))
    items += [(f"out {o.path}  {_digest(o)}", None) for o in node.lock.outs]
    for dep in node.lock.deps:
        producer = node.producers.get(dep.path)
        note = f"from stage {producer}" if producer else _raw_note(audit, dep.path)
        if dep.path in node.stale:
            note += f"; STALE: {producer} now has {node.stale[dep.path]}"
        items.append((f"dep {dep.path}  {_digest(dep)}  [{note}]", producer))
    for i, (text, producer) in enumerate(items):
        is_last = i == len(items) - 1
        b, c = ("└── ", "    ") if is_last else ("├── ", "│   ")
        wrapped = textwrap.wrap(text, max(60, WIDTH - len(inner) - 4), break_on_hyphens=False) or [""]
        lines.append(f"{inner}{b}{wrapped[0]}")
        lines += [f"{inner}{c}    {more}" for more in wrapped[1:]]
        if producer:
            _stage_lines(audit, producer, inner + c, True, seen, lines)


def to_json(audit: Audit) -> dict[str, Any]:
    """The whole audit as plain data: stages keyed by name (each dep names the stage that wrote
    it, or null for a raw input), in chain order from the metric's stage."""
    stages = {}
    for name in audit.order:
        node = audit.nodes[name]
        deps = []
        for d in node.lock.deps:
            producer = node.producers.get(d.path)
            deps.append({**d.as_dict(), "produced_by": producer, "stale": d.path in node.stale,
                         "raw_input": None if producer else _raw_note(audit, d.path)})
        stages[name] = {
            "cmd": node.lock.cmd,
            "params": node.record.params if node.record else node.lock.params,
            "params_source": "ledger" if node.record else "dvc.lock",
            "outs": [o.as_dict() for o in node.lock.outs],
            "deps": deps,
            "dirty": node.dirty,
            "ledger": node.record.as_dict() if node.record else None,
            "ledger_runs_of_stage": node.runs_recorded,
        }
    raw = sorted({d.path for n in audit.order for d in audit.nodes[n].lock.deps
                  if d.path not in audit.nodes[n].producers})
    result = {
        "metric": audit.metric, "key": audit.key, "value": audit.value,
        "metric_file": {"artifact": audit.metric_lock.path, "md5_workspace": audit.metric_workspace.md5,
                        "md5_dvc_lock": audit.metric_lock.md5,
                        "matches_dvc_lock": audit.metric_matches_lock},
        "produced_by": audit.stage, "dirty": bool(audit.dirty_stages), "dirty_stages": audit.dirty_stages,
        "unrecorded_stages": audit.unrecorded_stages, "order": audit.order, "stages": stages,
        "raw_inputs": raw, "ledger": str(audit.ledger_path),
    }
    if audit.problems is not None:
        result["verify"] = {"ok": not audit.problems, "problems": [p.as_dict() for p in audit.problems]}
    return result
