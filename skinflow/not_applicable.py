"""Stages that cannot apply to a configuration say so instead of failing or pretending.

Stage I rewards descriptions against reference captions, so with ``caption.captioner.kind: none`` it has nothing to
learn from. DVC still needs every declared output, so such a stage passes its start model through with a
``NOT_APPLICABLE.json`` marker beside the weights; every stage that starts from a marked model is not applicable in
turn (the reason names the chain), and evaluation, attention, the ablation and the report list the row as not
produced, with the reason, instead of scoring an untrained copy as if it were a result.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from skinflow.io import atomic_dir

MARKER = "NOT_APPLICABLE.json"
NO_CAPTIONS = "caption.captioner.kind is none: there are no captions"


def not_applicable_reason(model_dir: str | os.PathLike) -> str | None:
    """The reason a model directory is a pass-through rather than a trained model, or None if it was trained."""
    path = Path(model_dir) / MARKER
    return json.loads(path.read_text(encoding="utf-8"))["reason"] if path.exists() else None


def upstream_reason(in_dir: str | os.PathLike) -> str | None:
    """A stage starting from a marked model is not applicable either; its reason says where the chain broke."""
    reason = not_applicable_reason(in_dir)
    return None if reason is None else f"starts from {Path(in_dir).as_posix()}, which is not applicable ({reason})"


def pass_through(in_dir: str | os.PathLike, out_dir: str | os.PathLike, reason: str) -> dict:
    """Write ``out_dir`` as ``in_dir`` plus the marker (atomically); returns the stage summary to record."""
    with atomic_dir(out_dir) as tmp:
        shutil.copytree(in_dir, tmp, dirs_exist_ok=True)
        (tmp / MARKER).write_text(json.dumps({"reason": reason}, indent=2) + "\n", encoding="utf-8")
    return {"enabled": False, "not_applicable": reason, "history": []}
