"""DVC stage `ingest`: read a source table + images into the canonical manifest (nothing dropped)."""

from __future__ import annotations

from skinflow.data.ingest import IngestConfig, ingest
from skinflow.io import write_csv, write_parquet
from skinflow.timing import write_results
from skinflow.stage import show_progress, stage_config

OUT_ROWS = "data/interim/ingested.parquet"
OUT_TAXONOMY = "data/interim/taxonomy.csv"
OUT_REPORT = "data/interim/ingest_report.json"


def main(argv: list[str] | None = None) -> dict:
    cfg, _ = stage_config("ingest", IngestConfig, argv)
    rows, taxonomy, report = ingest(cfg, progress=show_progress())
    write_parquet(OUT_ROWS, rows)
    write_results(OUT_REPORT, report)
    write_csv(OUT_TAXONOMY, taxonomy)
    print(f"ingested {report['rows']} rows ({report['rows_with_ingest_error']} unreadable) "
          f"in {report['seconds']} s — {report['images_per_second']} images/s")
    return report


if __name__ == "__main__":
    main()
