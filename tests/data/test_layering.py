"""The data layer imports nothing from the layers built on it (captions, model, RL, evaluation, reports)."""

from __future__ import annotations

from pathlib import Path

import pytest

from skinflow.lineage.code_deps import code_files

REPO = Path(__file__).resolve().parents[2]
UPPER = ("captions", "model", "rl", "eval", "baselines", "report", "orchestration", "lineage")
# corpus.py assembles a captioned corpus for tests and benchmarks (ingest -> validate -> caption), so it
# stands above captions by design; nothing in the pipeline's data stages imports it.
ABOVE_BY_DESIGN = {"corpus"}
MODULES = sorted(p.stem for p in (REPO / "skinflow" / "data").glob("*.py") if p.stem not in ABOVE_BY_DESIGN)


@pytest.mark.parametrize("module", MODULES)
def test_data_module_imports_no_upper_layer(module):
    upward = [f for f in code_files(REPO, [f"skinflow.data.{module}"])
              if f.split("/")[0] == "skinflow" and len(f.split("/")) > 2 and f.split("/")[1] in UPPER]
    assert not upward, f"skinflow.data.{module} reaches up into {upward}"
