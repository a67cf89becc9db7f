"""DVC stage `caption`: a schema caption for every validated image (oracle / local VLM / HTTP)."""

from __future__ import annotations

import sys

import pandas as pd

from skinflow.captions.captioning import CaptionStageConfig, run_captions
from skinflow.io import write_json, write_parquet, write_text
from skinflow.timing import write_results
from skinflow.stage import show_progress, stage_config

IN_MANIFEST = "data/manifest.parquet"
OUT_CAPTIONS = "data/captions/captions.parquet"
OUT_QUARANTINE = "data/quarantine/caption.parquet"
OUT_REPORT = "data/reports/captions.json"
OUT_MARKDOWN = "data/reports/captions.md"
OUT_METRICS = "metrics/captions.json"


def render_markdown(report: dict) -> str:
    lines = [f"# Caption report — status: **{report['status'].upper()}**", "",
             f"Captioner `{report['captioner']}` ({report['captioner_version']}), schema "
             f"`{report['schema_version']}`.", ""]
    if report["parse_rate"] is None:
        return "\n".join(lines + [f"Rows in **{report['rows_in']}**, none captioned: {report['reason']}."]) + "\n"
    lines += [f"Rows in **{report['rows_in']}** = captioned **{report['captioned']}** + quarantined "
              f"**{report['quarantined']}**; parse rate {report['parse_rate']:.3f}.", "",
              "| check | success | failing rows |", "|---|---|---|"]
    lines += [f"| {e['name']} | {e['success']} | {e['failing_rows']} |" for e in report["expectations"]]
    coverage = report.get("source_coverage", {}).get("fields")
    if coverage:
        lines += ["", "## What the caption source stated", "", "| field | stated | from defaults | missing |",
                  "|---|---|---|---|"]
        lines += [f"| {k} | {v['stated']} | {v['defaulted']} | {v['missing']} |" for k, v in coverage.items()]
    if "quality_vs_reference" in report:
        quality = report["quality_vs_reference"]
        lines += ["", "## Agreement with reference captions", "", "| field | score |", "|---|---|"]
        lines += [f"| {k} | {v:.3f} |" for k, v in quality.items() if isinstance(v, float)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    cfg, _ = stage_config("caption", CaptionStageConfig, argv)
    table, quarantine, report = run_captions(pd.read_parquet(IN_MANIFEST), cfg, progress=show_progress())
    write_parquet(OUT_CAPTIONS, table)
    write_parquet(OUT_QUARANTINE, quarantine)
    write_results(OUT_REPORT, report)
    write_text(OUT_MARKDOWN, render_markdown(report))
    metrics = {"rows_in": report["rows_in"], "captioned": report["captioned"],
               "quarantined": report["quarantined"]}
    if report["parse_rate"] is not None:  # captioner none: no rate to report (DVC metrics take no nulls)
        metrics["parse_rate"] = report["parse_rate"]
    if "quality_vs_reference" in report:
        metrics["field_macro_vs_reference"] = report["quality_vs_reference"]["macro"]
    write_json(OUT_METRICS, metrics)
    print(f"captions {report['status']}: {report['rows_in']} in = {report['captioned']} captioned + "
          f"{report['quarantined']} quarantined")
    if report["status"] == "fail":
        print(f"caption checks FAILED: {report['failures']}", file=sys.stderr)
        sys.exit(1)
    return report


if __name__ == "__main__":
    main()
