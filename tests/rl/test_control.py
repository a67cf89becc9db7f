"""No-update control of a GRPO run (skinflow.rl.control) on the micro model and the tiny corpus.

The micro model never writes a parseable diagnosis list, so the Stage II rewards alone are constant within a group
and nothing would be learnt; the runs here add a reward on the completion's length so the policy does move away
from its start and the control is compared with a policy that changes. Four short runs are shared by the tests:

    on     control every step, beta 0.02 (the control is TRL's KL reference)
    again  the same config and seed
    off    control_every 0
    copy   beta 0 (no KL reference: the control is a copy taken before training), control every 2nd step
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from safetensors.torch import load_file

STEPS = 4


def _length_reward(prompts=None, completions=(), **kwargs):
    from skinflow.rl.rewards import completion_text

    assert "label" in kwargs and "images" in kwargs  # dataset columns reach the control's scoring too
    return [len(completion_text(c)) / 40 for c in completions]


def _run(workspace: Path, name: str, **overrides) -> dict:
    from skinflow.rl import rewards
    from skinflow.rl.grpo import Stage2Config, run_grpo

    settings = dict(max_steps=STEPS, save_steps=100, prompts_per_step=2, num_generations=2, train_limit=8,
                    max_completion_length=12, learning_rate=1e-2, beta=0.02, dve={"enabled": False},
                    work_dir=str(workspace / name / "work"), seed=3)
    cfg = Stage2Config(**{**settings, **overrides})
    stage2 = rewards.make_stage2_reward_funcs
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(rewards, "make_stage2_reward_funcs", lambda c, space: stage2(c, space) + [_length_reward])
        summary = run_grpo("stage2", str(workspace / "base"), str(workspace / name / "out"),
                           pd.read_parquet(workspace / "manifest.parquet"),
                           pd.read_parquet(workspace / "captions.parquet"), pd.read_csv(workspace / "taxonomy.csv"),
                           cfg)
    summary["weights"] = load_file(str(workspace / name / "out" / "model.safetensors"))
    return summary


@pytest.fixture(scope="module")
def runs(workspace) -> dict[str, dict]:
    return {"on": _run(workspace, "on"), "again": _run(workspace, "again"),
            "off": _run(workspace, "off", control_every=0),
            "copy": _run(workspace, "copy", beta=0.0, control_every=2)}


def _column(summary: dict, key: str) -> list:
    return [h.get(key) for h in summary["history"]]


def _same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(bool((a[k] == b[k]).all()) for k in a)


@pytest.mark.slow
def test_every_step_logs_the_control_and_the_gain(runs, workspace):
    from skinflow.rl.grpo import history_frame

    on = runs["on"]
    assert on["control_model"] == "reference"
    assert [h["step"] for h in on["history"]] == list(range(1, STEPS + 1))
    for row in on["history"]:
        assert math.isfinite(row["control_reward"]) and math.isfinite(row["reward_gain"])
        assert row["reward_gain"] == pytest.approx(row["reward"] - row["control_reward"], abs=1e-5)
    frame = history_frame(on["history"])
    assert {"control_reward", "reward_gain", "reward"} <= set(frame.columns)
    assert frame["control_reward"].notna().all()
    # the policy did move away from its start, so the comparison with the control is not a trivial one
    assert not _same_weights(on["weights"], load_file(str(workspace / "base" / "model.safetensors")))


@pytest.mark.slow
def test_summary_has_the_control_block(runs):
    control = runs["on"]["control"]
    assert control["steps"] == STEPS
    assert set(control) >= {"reward_first_third", "reward_last_third", "gain_mean", "gain_last_third",
                            "gain_ci_low", "gain_ci_high"}
    gains = np.array(_column(runs["on"], "reward_gain"))
    assert control["gain_mean"] == pytest.approx(gains.mean(), abs=1e-4)
    assert control["gain_ci_low"] <= control["gain_last_third"] <= control["gain_ci_high"]


@pytest.mark.slow
def test_same_seed_same_control_and_weights(runs):
    on, again = runs["on"], runs["again"]
    for key in ("control_reward", "reward_gain", "reward"):
        assert _column(on, key) == _column(again, key)
    assert on["control"] == again["control"]
    assert _same_weights(on["weights"], again["weights"])


@pytest.mark.slow
def test_control_off_logs_nothing_and_leaves_the_policy_untouched(runs):
    from skinflow.rl.grpo import history_frame

    off = runs["off"]
    assert off["control"] is None and off["control_model"] is None
    assert not any(k in row for row in off["history"] for k in ("control_reward", "reward_gain"))
    assert not any(c.startswith("control") or c == "reward_gain" for c in history_frame(off["history"]).columns)
    # the control samples from its own generator inside fork_rng: the policy's run is the one without it
    assert _column(off, "reward") == _column(runs["on"], "reward")
    assert _same_weights(off["weights"], runs["on"]["weights"])


@pytest.mark.slow
def test_control_is_the_starting_policy_with_or_without_a_kl_reference(runs):
    """beta 0: TRL has no reference model, the control is a copy taken before training. Its answers on the same
    prompts with the same per-step seeds equal those of the KL reference in the beta 0.02 run, although the two
    policies trained differently; and only every 2nd step (1, 3) has a control."""
    copy, on = runs["copy"], runs["on"]
    assert copy["control_model"] == "copy"
    assert not _same_weights(copy["weights"], on["weights"])
    assert [h["step"] for h in copy["history"] if "control_reward" in h] == [1, 3]
    assert [h.get("control_reward") for h in copy["history"]] == [
        h["control_reward"] if h["step"] in (1, 3) else None for h in on["history"]]
    assert copy["control"]["steps"] == 2


def test_control_summary_statistics():
    from skinflow.rl.control import control_summary

    history = [{"step": s, "reward": 0.1 * s, "control_reward": 0.05, "reward_gain": 0.1 * s - 0.05}
               for s in range(1, 10)] + [{"step": 10, "reward": 1.0}]  # a step without a control
    summary = control_summary(history, seed=0)
    assert summary["steps"] == 9
    assert summary["reward_first_third"] == summary["reward_last_third"] == 0.05
    assert summary["gain_mean"] == pytest.approx(0.45)
    assert summary["gain_last_third"] == pytest.approx(0.75)  # steps 7, 8, 9
    assert 0.65 <= summary["gain_ci_low"] <= 0.75 <= summary["gain_ci_high"] <= 0.85
    assert control_summary(history, seed=0) == summary  # the bootstrap is seeded
    assert control_summary([{"step": 1, "reward": 0.0}], seed=0) is None


def test_step_seeds_differ_by_step_and_seed():
    from skinflow.rl.control import step_seed

    seeds = {step_seed(s, t) for s in range(3) for t in range(1, 50)}
    assert len(seeds) == 3 * 49
    assert step_seed(3, 7) == step_seed(3, 7)
