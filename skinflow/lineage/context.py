"""Facts about the environment a stage ran in, each cheap to collect (no torch or prefect import).

The ``run`` wrapper must stay cheap for every stage, so the accelerator is read from the
NVIDIA driver's /proc entries instead of initialising CUDA, package versions come from installed
metadata instead of imports, and the Prefect flow-run id from the environment.
"""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Iterable

PACKAGES = ("torch", "transformers", "trl", "peft", "dvc", "prefect")
# Files DVC itself rewrites during `dvc repro`: changes to them do not make the code tree dirty.
DVC_BOOKKEEPING = ("dvc.lock",)


def package_versions(names: Iterable[str] = PACKAGES) -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def host_info() -> dict[str, str]:
    return {"host": socket.gethostname(), "platform": f"{platform.system()}-{platform.machine()}",
            "python": platform.python_version()}


NVIDIA_PROC = Path("/proc/driver/nvidia/gpus")


def accelerator(driver_dir: Path = NVIDIA_PROC) -> str:
    """GPU models visible to CUDA programs started from here, or ``cpu``. Indices in
    CUDA_VISIBLE_DEVICES are mapped in PCI bus order (the driver's directory order)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    models = []
    for info in sorted(driver_dir.glob("*/information")):
        try:
            for line in info.read_text().splitlines():
                if line.startswith("Model:"):
                    models.append(line.split(":", 1)[1].strip())
        except OSError:
            continue
    if models:
        if visible is not None and visible.strip() in ("", "-1"):
            return f"cpu ({len(models)} GPU(s) hidden by CUDA_VISIBLE_DEVICES={visible!r})"
        if visible:
            picked = [models[int(i)] for i in visible.split(",") if i.strip().isdigit() and int(i) < len(models)]
            return f"{', '.join(picked) or 'GPU'} (CUDA_VISIBLE_DEVICES={visible})"
        return ", ".join(models)
    if sys.platform == "darwin" and platform.machine() == "arm64":
        return "apple-mps"
    return "cpu"


def prefect_flow_run_id() -> str | None:
    """The flow run this process belongs to: the env var Prefect sets for flow-run processes and
    their children, or the live run context when Prefect is already imported in this process."""
    value = os.environ.get("PREFECT__FLOW_RUN_ID")
    if value:
        return value
    if "prefect" in sys.modules:
        try:
            from prefect.runtime import flow_run

            return str(flow_run.id) if flow_run.id else None
        except Exception:  # no run context: not under Prefect
            return None
    return None


def git_state(root: str | os.PathLike) -> tuple[str | None, list[str] | None]:
    """(HEAD commit, tracked paths that differ from HEAD, staged or not) of the git work tree at
    ``root``, paths relative to ``root``; (None, None) outside git. Untracked files are ignored."""
    root = os.fspath(root)
    try:
        commit = subprocess.run(["git", "rev-parse", "--verify", "-q", "HEAD"], cwd=root,
                                capture_output=True, text=True, timeout=30)
        if commit.returncode != 0:
            inside = subprocess.run(["git", "rev-parse", "--is-inside-work-tree"], cwd=root,
                                    capture_output=True, text=True, timeout=30)
            # A repository without commits: nothing that ran is committed.
            return (None, ["(no commits yet)"]) if inside.returncode == 0 else (None, None)
        status = subprocess.run(["git", "status", "--porcelain=v1", "-z", "--untracked-files=no"],
                                cwd=root, capture_output=True, timeout=60, check=True).stdout
        prefix = subprocess.run(["git", "rev-parse", "--show-prefix"], cwd=root, capture_output=True,
                                text=True, timeout=30, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None, None
    paths = []
    entries = status.decode("utf-8", "surrogateescape").split("\0")
    i = 0
    while i < len(entries):
        entry = entries[i]
        i += 1
        if len(entry) < 4:
            continue
        code, path = entry[:2], entry[3:]
        if "R" in code or "C" in code:
            i += 1  # the rename's source path follows as its own entry
        # porcelain paths are relative to the top level; callers work relative to ``root``.
        paths.append(path[len(prefix):] if prefix and path.startswith(prefix) else path)
    return commit.stdout.strip(), sorted(paths)


def code_changes(changed: list[str], generated: Iterable[str] = ()) -> list[str]:
    """The changed paths that make a run's code tree dirty.

    Pipeline outputs (``generated``: files or directories relative to the repo root), dvc.lock and
    the .gitignore files DVC maintains next to outputs are left out: ``dvc repro`` rewrites them
    between stages, so they say nothing about the code that ran."""
    excluded = _generated_paths(generated)
    return [p for p in changed if not _is_generated(p, excluded)]


def _generated_paths(generated: Iterable[str]) -> set[str]:
    excluded = set(DVC_BOOKKEEPING)
    for path in generated:
        path = path.strip("/").replace(os.sep, "/")
        excluded.add(path)
        parent = path.rsplit("/", 1)[0] if "/" in path else ""
        excluded.add(f"{parent}/.gitignore" if parent else ".gitignore")
    return excluded


def _is_generated(path: str, excluded: set[str]) -> bool:
    return any(path == e or path.startswith(e + "/") for e in excluded)
