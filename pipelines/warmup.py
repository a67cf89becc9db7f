"""DVC stage `warmup`: SFT on both output formats, then a parse-rate check on test images."""

from __future__ import annotations

import pandas as pd

from skinflow.io import write_csv
from skinflow.timing import write_results
from skinflow.model.warmup import WarmupConfig, run_warmup
from skinflow.stage import stage_config

IN_BASE = "models/base"
IN_MANIFEST = "data/manifest.parquet"
IN_CAPTIONS = "data/captions/captions.parquet"
IN_TAXONOMY = "data/interim/taxonomy.csv"
OUT_DIR = "models/warmup"
OUT_CURVE = "metrics/warmup_curve.csv"
OUT_METRICS = "metrics/warmup.json"


def main(argv: list[str] | None = None) -> dict:
    cfg, _ = stage_config("warmup", WarmupConfig, argv)
    manifest = pd.read_parquet(IN_MANIFEST)
    taxonomy = pd.read_csv(IN_TAXONOMY)
    summary = run_warmup(IN_BASE, OUT_DIR, manifest, pd.read_parquet(IN_CAPTIONS), taxonomy, cfg)
    curve = pd.DataFrame(summary.pop("history"), columns=["step", "loss", "learning_rate", "grad_norm"])
    write_csv(OUT_CURVE, curve)
    if cfg.enabled and cfg.eval_images:
        from skinflow.model.format_check import format_check

        summary["format_check"] = format_check(OUT_DIR, manifest, taxonomy, cfg.eval_images, cfg.max_new_tokens)
    summary = write_results(OUT_METRICS, summary)
    print(f"warm-up: {summary}")
    return summary


if __name__ == "__main__":
    main()
