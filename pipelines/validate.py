"""DVC stage `validate`: GX suites, quarantine with reasons, manifest + report outputs."""

from __future__ import annotations

import json
import sys

import pandas as pd

from skinflow.data.taxonomy import load_taxonomy
from skinflow.data.validation import ValidateConfig, render_markdown, validate
from skinflow.io import write_json, write_parquet, write_text
from skinflow.stage import stage_config

IN_ROWS = "data/interim/ingested.parquet"
IN_TAXONOMY = "data/interim/taxonomy.csv"
IN_INGEST_REPORT = "data/interim/ingest_report.json"
OUT_MANIFEST = "data/manifest.parquet"
OUT_QUARANTINE = "data/quarantine/validate.parquet"
OUT_REPORT = "data/reports/validation.json"
OUT_MARKDOWN = "data/reports/validation.md"
OUT_METRICS = "metrics/data.json"


def main(argv: list[str] | None = None) -> dict:
    cfg, _ = stage_config("validate", ValidateConfig, argv)
    rows = pd.read_parquet(IN_ROWS)
    manifest, quarantine, report = validate(rows, load_taxonomy(IN_TAXONOMY), cfg)
    with open(IN_INGEST_REPORT, encoding="utf-8") as handle:
        ingest_report = json.load(handle)
    write_parquet(OUT_MANIFEST, manifest)
    write_parquet(OUT_QUARANTINE, quarantine)
    write_json(OUT_REPORT, report)
    write_text(OUT_MARKDOWN, render_markdown(report, ingest_report))
    write_json(OUT_METRICS, {
        "rows_in": report["rows_in"], "accepted": report["accepted"],
        "quarantined": report["quarantined"],
        "quarantine_fraction": report["thresholds"][0]["value"],
        "classes": sum(1 for v in report["class_counts"].values() if v > 0),
        "probable_label_noise": report["oddities"]["probable_label_noise"],
    })
    print(f"validation {report['status']}: {report['rows_in']} in = {report['accepted']} accepted + "
          f"{report['quarantined']} quarantined; report in {OUT_MARKDOWN}")
    if report["status"] == "fail":
        failed = [c["check"] for c in report["thresholds"] if c["status"] == "fail"]
        failed += [t["name"] for t in report["table_expectations"] if not t["success"]]
        print(f"validation FAILED on: {', '.join(failed)} (see {OUT_MARKDOWN})", file=sys.stderr)
        sys.exit(1)
    return report


if __name__ == "__main__":
    main()
