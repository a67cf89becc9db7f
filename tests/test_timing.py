"""Run facts (seconds, throughput, cache hits) are split from results, so results can be byte-identical."""

from __future__ import annotations

import json

import pandas as pd

from skinflow.timing import is_timing, split_timing, split_timing_columns, timing_path, write_results


def test_run_facts_are_recognised_by_name():
    for key in ("seconds", "train_seconds", "wall_s", "tokens_per_second", "images_per_second", "train_runtime",
                "step_time", "mfu", "reused_from_progress", "progress_file", "feature_cache_hit", "resumed_from"):
        assert is_timing(key), key
    for key in ("steps", "max_new_tokens", "parse_rate", "train_examples", "seed", "loss", "reward", "mfu_like_x"):
        assert not is_timing(key), key


def test_split_keeps_structure_and_moves_nested_facts():
    data = {"steps": 4, "train_seconds": 1.5, "vision_pretrain": {"steps": 3, "seconds": 0.5},
            "encoder": {"name": "x", "feature_cache_hit": True}, "history": [{"loss": 1}]}
    result, timing = split_timing(data)
    assert result == {"steps": 4, "vision_pretrain": {"steps": 3}, "encoder": {"name": "x"},
                      "history": [{"loss": 1}]}
    assert timing == {"train_seconds": 1.5, "vision_pretrain": {"seconds": 0.5},
                      "encoder": {"feature_cache_hit": True}}
    assert split_timing({"a": 1}) == ({"a": 1}, None)


def test_timing_paths_mirror_result_paths():
    assert timing_path("metrics/rl/stage2-s1.json") == "metrics/timing/rl/stage2-s1.json"
    assert timing_path("metrics/rl/stage2-s1_log.csv") == "metrics/timing/rl/stage2-s1_log.csv"
    assert timing_path("data/interim/ingest_report.json") == "metrics/timing/ingest_report.json"


def test_write_results_writes_both_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    merged = write_results("metrics/warmup.json", {"steps": 2, "train_seconds": 3.0})
    assert merged == {"steps": 2, "train_seconds": 3.0}
    assert json.loads((tmp_path / "metrics/warmup.json").read_text()) == {"steps": 2}
    assert json.loads((tmp_path / "metrics/timing/warmup.json").read_text()) == {"train_seconds": 3.0}


def test_log_columns_split():
    frame = pd.DataFrame({"step": [1, 2], "reward": [0.1, 0.2], "tokens_per_second": [5.0, 6.0], "mfu": [0.1, 0.2]})
    result, timing = split_timing_columns(frame)
    assert list(result.columns) == ["step", "reward"] and list(timing.columns) == ["step", "tokens_per_second", "mfu"]
