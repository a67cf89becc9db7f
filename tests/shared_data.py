"""Where the read-only reference tables live (../shared/ beside the repo, or $SKINFLOW_SHARED)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SKINFLOW_SHARED", REPO.parent / "shared")) / "data"


def shared_file(relative: str) -> Path:
    path = SHARED / relative
    if not path.exists():
        pytest.skip(f"reference data {relative} not found under {SHARED} (set SKINFLOW_SHARED)")
    return path
