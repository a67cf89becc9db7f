"""Run facts (wall times, throughput, MFU, cache hits) kept apart from results.

A stage's result files are hashed by DVC and must be byte-identical when the inputs, params and seed are the same.
Seconds, tokens/s and "reused from an earlier run" depend on the machine and its cache, so each stage writes them
beside them under ``metrics/timing/`` (``timing_path``; declared in dvc.yaml as timing outputs and excluded from
reproducibility checks) and never into its results. One rule decides what is a run fact: a key named like
``TIMING_KEY``.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from typing import Any

import pandas as pd

from skinflow.io import write_json

TIMING_DIR = "metrics/timing"
# seconds / *_s / per-second rates / runtimes / step times / MFU / cache hits and paths / resumption after a kill /
# host load: all vary from run to run on the same inputs
TIMING_KEY = re.compile(r"(seconds|_s$|per_second|runtime|step_time|^mfu$|_mfu$|reused|resumed|progress_file|cache_hit|loadavg)")


def is_timing(key: str) -> bool:
    return bool(TIMING_KEY.search(str(key)))


def split_timing(data: Any) -> tuple[Any, Any]:
    """(result, timing): the same nested dict with run-fact keys moved to the second one (None if there are none)."""
    if not isinstance(data, dict):
        return data, None
    result, timing = {}, {}
    for key, value in data.items():
        if is_timing(key):
            timing[key] = value
            continue
        kept, moved = split_timing(value)
        result[key] = kept
        if moved:
            timing[key] = moved
    return result, (timing or None)


def split_timing_columns(frame: pd.DataFrame, keep: tuple[str, ...] = ("step",)) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(result columns, timing columns plus ``keep``) of a per-step log."""
    timing = [c for c in frame.columns if is_timing(c)]
    return frame.drop(columns=timing), frame[[c for c in keep if c in frame.columns] + timing]


def timing_path(result_path: str) -> str:
    """Where the run facts of ``result_path`` go: metrics/x/y.json -> metrics/timing/x/y.json; other files by name
    (data/interim/ingest_report.json -> metrics/timing/ingest_report.json)."""
    parts = PurePosixPath(result_path).parts
    rel = parts[1:] if parts[:1] == ("metrics",) else parts[-1:]
    return str(PurePosixPath(TIMING_DIR, *rel))


def write_results(path: str, data: dict) -> dict:
    """Write ``data`` without its run facts to ``path`` and the run facts to ``timing_path(path)``; returns
    ``data`` whole (for printing)."""
    result, timing = split_timing(data)
    write_json(path, result)
    write_json(timing_path(path), timing or {})
    return data
