"""Shared body of the two RL stage entry points (they differ only in names and config class)."""

from __future__ import annotations

import pandas as pd

from skinflow.io import write_csv
from skinflow.rl.control import third_means
from skinflow.rl.grpo import history_frame, run_grpo
from skinflow.timing import split_timing_columns, timing_path, write_results

IN_MANIFEST = "data/manifest.parquet"
IN_CAPTIONS = "data/captions/captions.parquet"
IN_TAXONOMY = "data/interim/taxonomy.csv"


def run_rl_stage(stage: str, cfg, in_dir: str, out_dir: str, metrics_prefix: str | None = None) -> dict:
    """Train ``stage`` from ``in_dir`` into ``out_dir``; metrics go to ``<metrics_prefix>.json`` and ``_log.csv``."""
    prefix = metrics_prefix or f"metrics/{stage}"
    summary = run_grpo(stage, in_dir, out_dir, pd.read_parquet(IN_MANIFEST),
                       pd.read_parquet(IN_CAPTIONS), pd.read_csv(IN_TAXONOMY), cfg)
    history, timing = split_timing_columns(history_frame(summary.pop("history")))
    write_csv(f"{prefix}_log.csv", history)
    write_csv(timing_path(f"{prefix}_log.csv"), timing)
    if len(history) and "reward" in history:
        summary["reward_first_third"], summary["reward_last_third"] = third_means(history["reward"])
    summary = write_results(f"{prefix}.json", summary)
    print(f"{stage}: {summary}")
    return summary
