"""Throwaway git + DVC repositories with tiny DAGs, for the orchestration tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GIT_ID = ["-c", "user.email=ci@localhost", "-c", "user.name=ci"]
# Two chained stages, listed out of DAG order (the flow must order them by the DAG, not the file).
TOY_DAG = """
stages:
  second:
    cmd: python -c "import pathlib; pathlib.Path('b.txt').write_text(pathlib.Path('a.txt').read_text() + 'b')"
    deps: [a.txt]
    outs: [b.txt]
  first:
    cmd: python -c "import pathlib; pathlib.Path('a.txt').write_text('a')"
    outs: [a.txt]
"""
# A third stage after them that fails with a message of its own.
BROKEN_STAGE = """
  broken:
    cmd: python -c "import sys; print('boom from the stage'); sys.exit(3)"
    deps: [b.txt]
    outs: [c.txt]
"""


def env() -> dict[str, str]:
    return {**os.environ, "DVC_NO_ANALYTICS": "1", "DO_NOT_TRACK": "1",
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


def run(cmd: list[str], cwd: Path, check: bool = True, timeout: float = 180) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=cwd, env=env(), capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def dvc(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "dvc", *args], cwd, check=check)


def git(*args: str, cwd: Path) -> str:
    return run(["git", *GIT_ID, *args], cwd).stdout


def make_repo(path: Path, dvc_yaml: str, files: dict[str, str] | None = None,
              with_project_config: bool = True) -> Path:
    """git + dvc init at ``path`` with ``dvc.yaml``, extra files, and the project's .dvc/config."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "dvc.yaml").write_text(dvc_yaml)
    for name, text in (files or {}).items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(text)
    run(["git", "init", "-q"], path)
    dvc("init", "-q", cwd=path)
    if with_project_config:
        shutil.copy2(REPO / ".dvc" / "config", path / ".dvc" / "config")
    git("add", "-A", cwd=path)
    git("commit", "-qm", "toy", cwd=path)
    return path


def up_to_date(repo: Path) -> bool:
    return "up to date" in dvc("status", cwd=repo).stdout.lower()
