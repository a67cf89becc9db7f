"""Validation tuning of the baselines: shipped sweep files load, the ranking rule, per-image SkinVL indicators."""

from pathlib import Path

import numpy as np
import pytest
import yaml
from pydantic import ValidationError

from skinflow.baselines.tuning import BaselineSweep, _config, _skinvl_evaluation, choose, markdown, rank

REPO = Path(__file__).resolve().parents[2]


def _baseline_sweeps():
    return [p for p in sorted((REPO / "configs" / "tuning").glob("*.yaml"))
            if yaml.safe_load(p.read_text())["stage"] in ("cfa", "skinvl")]


def test_both_baselines_ship_a_sweep_whose_candidates_are_valid_configs():
    files = _baseline_sweeps()
    assert {yaml.safe_load(p.read_text())["stage"] for p in files} == {"cfa", "skinvl"}
    for path in files:
        spec = BaselineSweep.model_validate({**yaml.safe_load(path.read_text()), "params": str(REPO / "params.yaml")})
        assert spec.candidates[spec.reference] == [], "the reference must be the committed settings"
        for name in spec.candidates:
            _config(spec, name, 0)   # raises on an unknown key or a bad value


def test_the_test_split_cannot_be_tuned_on_and_the_reference_must_exist():
    with pytest.raises(ValidationError):
        BaselineSweep(stage="cfa", split="test", candidates={"current": []})
    with pytest.raises(ValidationError, match="reference"):
        BaselineSweep(stage="cfa", candidates={"other": []})


def _diff(diff, low, high):
    return {"diff": diff, "ci_low": low, "ci_high": high, "effect": not (low <= 0 <= high)}


def test_cfa_ranking_puts_safety_before_accuracy():
    def cand(gain, miss=(0.0, -0.02, 0.02)):
        return {"vs_reference": {"top1_exact": _diff(gain, gain - 0.01, gain + 0.01),
                                 "top6_exact": _diff(gain, gain - 0.01, gain + 0.01),
                                 "malignant_miss_at1": _diff(*miss), "dangerous_error_rate": _diff(*miss),
                                 "format_compliance": _diff(0.0, 0.0, 0.0)}}
    metrics = ("top1_exact", "top6_exact", "malignant_miss_at1", "dangerous_error_rate", "format_compliance")
    order = rank("cfa", {"current": cand(0.0), "reckless": cand(0.05, miss=(0.06, 0.02, 0.1)),
                         "better": cand(0.03)}, metrics)
    assert [r["candidate"] for r in order] == ["better", "current", "reckless"]
    assert order[2]["worse_on"] == ["malignant_miss_at1", "dangerous_error_rate"]
    assert order[0]["beats_reference"] == ["top1_exact", "top6_exact"]
    assert choose(order, "current") == "better"


def test_skinvl_ranking_needs_short_answers_kept():
    def cand(zero_shot, short):
        return {"vs_reference": {"zero_shot_accuracy": _diff(*zero_shot), "short_answer_exact": _diff(*short)}}
    order = rank("skinvl", {"current": cand((0, 0, 0), (0, 0, 0)), "forgets": cand((0.1, 0.05, 0.15), (-0.1, -0.2, -0.05)),
                            "small": cand((0.02, -0.01, 0.05), (0.0, -0.02, 0.02))}, ())
    assert [r["candidate"] for r in order] == ["small", "current", "forgets"]
    assert order[2]["worse_on"] == ["short_answer_exact"] and order[0]["beats_reference"] == []
    assert choose(order, "current") == "current"   # a gain inside the noise never moves a setting


def test_skinvl_per_image_indicators_are_sorted_and_pooled_by_type():
    per_image = {"image_ids": ["b", "a"], "zero_shot_correct": [True, False],
                 "qa": [{"index": 0, "type": "colour", "correct": True}, {"index": 0, "type": "border", "correct": False},
                        {"index": 1, "type": "colour", "correct": False}]}
    ev = _skinvl_evaluation("x", 0, per_image)
    assert ev.image_ids == ("a", "b")
    assert ev.metrics == ("zero_shot_accuracy", "short_answer_exact", "exact_border", "exact_colour")
    np.testing.assert_array_equal(ev.num, [[0, 0, 0, 0], [1, 1, 0, 1]])
    np.testing.assert_array_equal(ev.den, [[1, 1, 0, 1], [1, 2, 1, 1]])
    assert ev.values()["short_answer_exact"] == pytest.approx(1 / 3)


def test_markdown_names_the_reference_and_the_rule():
    diff = _diff(0.01, -0.01, 0.03)
    row = {"metrics": {m: {"mean": 0.5} for m in ("zero_shot_accuracy", "short_answer_exact")}}
    result = {"stage": "skinvl", "split": "val", "n_images": 10, "seeds": [0], "reference": "current",
              "metrics": ["zero_shot_accuracy", "short_answer_exact"],
              "start": {"row": row, "vs_reference": {"zero_shot_accuracy": diff, "short_answer_exact": diff}},
              "candidates": {"current": {"overrides": [], "runs": [{"seconds": 1.0}], "row": row,
                                         "vs_reference": {"zero_shot_accuracy": diff, "short_answer_exact": diff}}},
              "ranking": [{"candidate": "current", "eligible": True, "worse_on": [], "gain": 0.0,
                           "beats_reference": []}]}
    text = markdown(result)
    assert "Reference: `current`" in text and "start model" in text and "zero-shot difference" in text
