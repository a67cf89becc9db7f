"""Compare two `dvc.lock` files output by output: what a rerun reproduced and what it did not.

Run facts (``metrics/timing/``, see ``skinflow.timing``) are excluded: they are meant to differ. Used by the
reproducibility test (two clean clones, same seed) and by ``skinflow verify-lock`` / ``make verify-repro``
(a fresh ``dvc repro`` against the committed lock).
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import yaml

from skinflow.timing import TIMING_DIR

EXCLUDED = (f"{TIMING_DIR}/",)


def output_hashes(lock: dict[str, Any], excluded: tuple[str, ...] = EXCLUDED) -> dict[tuple[str, str], str]:
    """{(stage, out path): md5} of every output in a parsed dvc.lock, run-fact files left out."""
    hashes = {}
    for stage, entry in (lock.get("stages") or {}).items():
        for out in entry.get("outs") or []:
            if not out["path"].startswith(excluded):
                hashes[(stage, out["path"])] = out.get("md5") or out.get("hash") or ""
    return hashes


def lock_differences(a: dict[str, Any], b: dict[str, Any], excluded: tuple[str, ...] = EXCLUDED) -> list[str]:
    """One line per output whose hash differs or that only one lock has; empty when they agree."""
    ha, hb = output_hashes(a, excluded), output_hashes(b, excluded)
    lines = []
    for key in sorted(set(ha) | set(hb)):
        stage, path = key
        if key not in ha:
            lines.append(f"{stage}: {path} only in the second lock")
        elif key not in hb:
            lines.append(f"{stage}: {path} only in the first lock")
        elif ha[key] != hb[key]:
            lines.append(f"{stage}: {path} differs ({ha[key]} vs {hb[key]})")
    return lines


def read_lock(path: str | Path) -> dict[str, Any]:
    return yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}


def committed_lock(rev: str = "HEAD", repo: str | Path = ".") -> dict[str, Any]:
    """The dvc.lock of git revision ``rev``."""
    text = subprocess.run(["git", "show", f"{rev}:dvc.lock"], cwd=repo, capture_output=True, text=True,
                          check=True).stdout
    return yaml.safe_load(text) or {}
