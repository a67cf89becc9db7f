"""Great Expectations checks on the captions table (same ephemeral runner as the manifest suites)."""

from __future__ import annotations

import great_expectations.expectations as gxe
import pandas as pd

from skinflow.vocab import SCHEMA_VERSION
from skinflow.data.gx_suites import ROW_ID, run_expectations


def caption_expectations(table: pd.DataFrame, labels: list[str], min_per_class: int) -> list[dict]:
    """``table`` has the caption columns plus ``parses`` (bool) and ``summary_diagnoses`` (str)."""
    frame = table.reset_index(drop=True).assign(**{ROW_ID: lambda f: range(len(f))})
    frame["parses"] = frame["parses"].astype(bool)
    expectations = [
        ("captions_parse_under_schema", None, gxe.ExpectColumnValuesToBeInSet(column="parses", value_set=[True])),
        ("schema_version_current", None,
         gxe.ExpectColumnValuesToBeInSet(column="schema_version", value_set=[SCHEMA_VERSION])),
        ("no_diagnosis_in_description", None,
         gxe.ExpectColumnValuesToBeInSet(column="summary_diagnoses", value_set=[""])),
        ("one_caption_per_image", None, gxe.ExpectColumnValuesToBeUnique(column="image_id")),
        ("every_class_captioned", None,
         gxe.ExpectColumnDistinctValuesToContainSet(column="label", value_set=labels)),
    ]
    outcomes = run_expectations(frame, expectations) if len(frame) else []
    result = [{"name": o.name, "success": o.success, "failing_rows": len(o.failing_rows)} for o in outcomes]
    counts = frame["label"].value_counts()
    short = {label: int(counts.get(label, 0)) for label in labels if counts.get(label, 0) < min_per_class}
    result.append({"name": f"min_{min_per_class}_captions_per_class", "success": not short,
                   "failing_rows": 0, "short_classes": short})
    return result
