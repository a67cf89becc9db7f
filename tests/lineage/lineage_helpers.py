"""Helpers for the lineage tests: a throwaway git + DVC repository whose stage commands run
through the lineage wrapper.

Three stages: ``prep`` (a directory output) and a ``foreach`` stage ``score@x`` / ``score@y``
(metrics with a per-run nonce, so a forced re-run rewrites git-tracked files the way real metrics
do). The fixtures in conftest.py build it once per module; tests that change it use a copy.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

FLOW_RUN_ID = "0b6ad2a5-5a3c-4c54-9d8a-6a8f3f1f0c11"

FILES = {
    "params.yaml": "prep:\n  repeat: 3\nscore:\n  bias: 2\n",
    "raw/input.csv": "id,value\n1,4\n2,5\n",
    "prep.py": textwrap.dedent("""\
        import json, pathlib, yaml
        repeat = yaml.safe_load(open("params.yaml"))["prep"]["repeat"]
        out = pathlib.Path("data/prep")
        out.mkdir(parents=True, exist_ok=True)
        (out / "rows.csv").write_text(pathlib.Path("raw/input.csv").read_text() * repeat)
        (out / "summary.json").write_text(json.dumps({"repeat": repeat}))
        """),
    "score.py": textwrap.dedent("""\
        import json, pathlib, sys, uuid, yaml
        key, weight = sys.argv[1], int(sys.argv[2])
        bias = yaml.safe_load(open("params.yaml"))["score"]["bias"]
        lines = pathlib.Path("data/prep/rows.csv").read_text().splitlines()
        pathlib.Path("metrics").mkdir(exist_ok=True)
        result = {"overall": {"top1": {"value": weight * len(lines) + bias}}, "nonce": uuid.uuid4().hex}
        pathlib.Path(f"metrics/{key}.json").write_text(json.dumps(result))
        """),
    "notes.md": "an unrelated tracked file\n",
    "dvc.yaml": textwrap.dedent("""\
        stages:
          prep:
            cmd: python -m skinflow.lineage run prep -- python prep.py
            deps: [prep.py, raw/input.csv]
            params: [prep]
            outs: [data/prep]
          score:
            foreach:
              x: 1
              y: 2
            do:
              cmd: python -m skinflow.lineage run score@${key} -- python score.py ${key} ${item}
              deps: [score.py, data/prep]
              params: [score.bias]
              metrics:
                - metrics/${key}.json:
                    cache: false
        """),
}


def lineage_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("SKINFLOW_LEDGER", "PREFECT__FLOW_RUN_ID",
                                                            "DVC_ROOT", "DVC_STAGE")}
    env.update({"DVC_NO_ANALYTICS": "1", "DO_NOT_TRACK": "1",
                "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}", **extra})
    return env


def sh(cmd: list[str], cwd: Path, check: bool = True, **env: str) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=cwd, env=lineage_env(**env), capture_output=True, text=True, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def dvc(repo: Path, *args: str, check: bool = True, **env: str) -> subprocess.CompletedProcess:
    return sh([sys.executable, "-m", "dvc", *args], repo, check, **env)


def git_commit(repo: Path, message: str) -> str:
    sh(["git", "add", "-A"], repo)
    sh(["git", "-c", "user.email=ci@localhost", "-c", "user.name=ci", "commit", "-qm", message], repo)
    return sh(["git", "rev-parse", "HEAD"], repo).stdout.strip()
