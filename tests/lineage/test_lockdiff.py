"""dvc.lock comparison: every output named when it differs; run facts excluded."""

from __future__ import annotations

import copy

from skinflow.lineage.lockdiff import lock_differences, output_hashes

LOCK = {"schema": "2.0", "stages": {
    "warmup": {"cmd": "x", "outs": [{"path": "models/warmup", "md5": "a.dir"},
                                    {"path": "metrics/timing/warmup.json", "md5": "t1"}]},
    "stage2_rl@0": {"cmd": "y", "outs": [{"path": "models/stage2-s0", "md5": "b.dir"}]},
}}


def test_identical_locks_agree_and_timing_is_ignored():
    other = copy.deepcopy(LOCK)
    other["stages"]["warmup"]["outs"][1]["md5"] = "t2"  # a run fact: allowed to differ
    assert lock_differences(LOCK, other) == []
    assert ("warmup", "metrics/timing/warmup.json") not in output_hashes(LOCK)


def test_every_difference_is_named():
    other = copy.deepcopy(LOCK)
    other["stages"]["stage2_rl@0"]["outs"][0]["md5"] = "c.dir"
    other["stages"]["stage2_rl@1"] = {"cmd": "z", "outs": [{"path": "models/stage2-s1", "md5": "d.dir"}]}
    del other["stages"]["warmup"]
    assert lock_differences(LOCK, other) == [
        "stage2_rl@0: models/stage2-s0 differs (b.dir vs c.dir)",
        "stage2_rl@1: models/stage2-s1 only in the second lock",
        "warmup: models/warmup only in the first lock",
    ]
