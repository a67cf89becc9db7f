"""Great Expectations 1.x suites over the manifest, run in an ephemeral context (no network, no files).

Row-level expectations carry the quarantine reason they map to; their unexpected row ids come back
from GX itself (``unexpected_index_list``), so GX decides which rows fail and this module only
routes them. Table-level expectations feed the validation report.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import pandas as pd

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

import great_expectations as gx  # noqa: E402
import great_expectations.expectations as gxe  # noqa: E402

from skinflow.data.manifest import MANIFEST_COLUMNS, Reason  # noqa: E402

logging.getLogger("great_expectations").setLevel(logging.ERROR)

ROW_ID = "row_id"


@dataclass(frozen=True)
class Outcome:
    name: str
    success: bool
    reason: str | None          # quarantine reason for row-level expectations
    failing_rows: tuple[int, ...]
    observed: object = None


def run_expectations(frame: pd.DataFrame, expectations: list[tuple[str, str | None, object]]) -> list[Outcome]:
    context = gx.get_context(mode="ephemeral")
    try:
        context.variables.progress_bars = {"globally": False, "metric_calculations": False}
    except Exception:  # older/newer GX without this knob: bars are cosmetic only
        pass
    batch = (context.data_sources.add_pandas("manifest_source")
             .add_dataframe_asset("manifest").add_batch_definition_whole_dataframe("all"))
    suite = context.suites.add(gx.ExpectationSuite(name="manifest_suite"))
    # GX returns results grouped by column, not in suite order: match them back by expectation id.
    ids = [suite.add_expectation(expectation).id for _, _, expectation in expectations]
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name="manifest_validation", data=batch, suite=suite))
    result = definition.run(
        batch_parameters={"dataframe": frame},
        result_format={"result_format": "COMPLETE", "unexpected_index_column_names": [ROW_ID]},
    )
    by_id = {res.expectation_config.id: res for res in result.results}
    outcomes = []
    for (name, reason, _), expectation_id in zip(expectations, ids, strict=True):
        res = by_id[expectation_id]
        rows = tuple(int(item[ROW_ID]) for item in res.result.get("unexpected_index_list") or [])
        observed = res.result.get("observed_value")
        outcomes.append(Outcome(name, bool(res.success), reason, rows, observed))
    return outcomes


def row_outcomes(frame: pd.DataFrame, labels: list[str], label_paths: list[str],
                 allowed_modes: list[str], min_side: int) -> list[Outcome]:
    """Row-level checks; every failing row is quarantined with the expectation's reason."""
    fitz = [-1, 1, 2, 3, 4, 5, 6]
    expectations = [
        ("ingest_ok", None, gxe.ExpectColumnValuesToBeNull(column="ingest_error")),
        ("label_present", Reason.MISSING_LABEL, gxe.ExpectColumnValuesToNotBeNull(column="label")),
        ("label_in_vocabulary", Reason.UNKNOWN_LABEL,
         gxe.ExpectColumnValuesToBeInSet(column="label", value_set=labels)),
        ("label_partition_consistent", Reason.PARTITION_MISMATCH,
         gxe.ExpectColumnValuesToBeInSet(column="label_path", value_set=label_paths)),
        ("fitzpatrick_scale_domain", Reason.BAD_FITZPATRICK,
         gxe.ExpectColumnValuesToBeInSet(column="fitzpatrick_scale", value_set=fitz)),
        ("fitzpatrick_centaur_domain", Reason.BAD_FITZPATRICK,
         gxe.ExpectColumnValuesToBeInSet(column="fitzpatrick_centaur", value_set=fitz)),
        ("fitzpatrick_scale_present", Reason.BAD_FITZPATRICK,
         gxe.ExpectColumnValuesToNotBeNull(column="fitzpatrick_scale")),
        ("fitzpatrick_centaur_present", Reason.BAD_FITZPATRICK,
         gxe.ExpectColumnValuesToNotBeNull(column="fitzpatrick_centaur")),
        ("content_hash_format", Reason.CORRUPT_IMAGE,
         gxe.ExpectColumnValuesToMatchRegex(column="content_md5", regex=r"^[0-9a-f]{32}$")),
        ("decoded_mode_allowed", Reason.NON_RGB,
         gxe.ExpectColumnValuesToBeInSet(column="mode", value_set=allowed_modes)),
        ("min_width", Reason.TINY_IMAGE,
         gxe.ExpectColumnValuesToBeBetween(column="width", min_value=min_side)),
        ("min_height", Reason.TINY_IMAGE,
         gxe.ExpectColumnValuesToBeBetween(column="height", min_value=min_side)),
    ]
    return run_expectations(frame, expectations)


def table_outcomes(accepted: pd.DataFrame, labels: list[str], min_rows: int) -> list[Outcome]:
    """Table-level checks over the accepted manifest; they go into the report, not quarantine."""
    expectations = [
        ("schema_matches_contract", None,
         gxe.ExpectTableColumnsToMatchSet(column_set=list(MANIFEST_COLUMNS) + [ROW_ID, "label_path"],
                                          exact_match=False)),
        ("row_count", None, gxe.ExpectTableRowCountToBeBetween(min_value=min_rows)),
        ("image_id_unique", None, gxe.ExpectColumnValuesToBeUnique(column="image_id")),
        ("content_hash_unique", None, gxe.ExpectColumnValuesToBeUnique(column="content_md5")),
        ("labels_in_vocabulary", None, gxe.ExpectColumnValuesToBeInSet(column="label", value_set=labels)),
        ("split_values", None,
         gxe.ExpectColumnValuesToBeInSet(column="split", value_set=["train", "val", "test", "unused"])),
        ("mode_is_rgb", None, gxe.ExpectColumnValuesToBeInSet(column="mode", value_set=["RGB"])),
        ("label_distinct_count", None,
         gxe.ExpectColumnUniqueValueCountToBeBetween(column="label", min_value=1)),
    ]
    return run_expectations(accepted, expectations)
