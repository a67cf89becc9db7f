"""GRPO stages on CPU: same-seed determinism and resume after SIGKILL.

A tiny SkinSynth dataset and a tiny random base model are built in a temp dir; the Stage II runner trains a few
steps with an extra length reward (the micro model never writes a valid list, so the Stage II reward alone is
constant and nothing is learnt). Two uninterrupted runs with one seed must end byte-identical and away from the
start; a run killed right after its first checkpoint must resume from it. That the resumed run ends with the
uninterrupted weights is a known failure, kept as a strict xfail.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[2]

DRIVER = textwrap.dedent("""
    import json, sys
    import pandas as pd
    from skinflow.rl.grpo import Stage2Config, run_grpo
    root, out, work, hold = sys.argv[1:5]
    if hold == "hold":
        # The run to be killed blocks right after its first checkpoint is complete, so the kill
        # lands at a known point however fast the machine is (a timing race otherwise).
        import time, transformers
        save = transformers.Trainer._save_checkpoint
        def save_then_hold(self, *args, **kwargs):
            save(self, *args, **kwargs)
            if self.state.global_step == 2:
                print("HOLDING", flush=True)
                time.sleep(3600)
        transformers.Trainer._save_checkpoint = save_then_hold
    # The micro model never writes a valid diagnosis list, so the Stage II reward alone is 0 for every
    # completion and nothing would be learnt (identical weights whatever the randomness): a length reward
    # gives the groups a reward spread, so the weights move and this test can catch nondeterminism.
    from skinflow.rl import rewards
    from skinflow.rl.rewards import completion_text
    stage2_funcs = rewards.make_stage2_reward_funcs
    def length_reward(prompts=None, completions=(), **kwargs):
        return [len(completion_text(c)) / 40 for c in completions]
    rewards.make_stage2_reward_funcs = lambda c, space: stage2_funcs(c, space) + [length_reward]
    cfg = Stage2Config(max_steps=4, save_steps=2, prompts_per_step=2, num_generations=2, train_limit=8,
                       max_completion_length=12, learning_rate=1e-2, beta=0.02, dve={"enabled": False},
                       work_dir=work, seed=3)
    summary = run_grpo("stage2", f"{root}/base", out, pd.read_parquet(f"{root}/manifest.parquet"),
                       pd.read_parquet(f"{root}/captions.parquet"), pd.read_csv(f"{root}/taxonomy.csv"), cfg)
    summary.pop("history")
    print("SUMMARY " + json.dumps(summary))
""")


def _start(workspace: Path, name: str, hold: bool = False) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-c", DRIVER, str(workspace), str(workspace / name / "out"),
                             str(workspace / name / "work"), "hold" if hold else "run"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO)


def _finish(proc: subprocess.Popen) -> dict:
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, output[-3000:]
    line = next(l for l in output.splitlines() if l.startswith("SUMMARY "))
    return json.loads(line.removeprefix("SUMMARY "))


def _weights(path: Path) -> dict:
    return load_file(str(path / "model.safetensors"))


@pytest.fixture(scope="module")
def uninterrupted(workspace) -> dict:
    first = _finish(_start(workspace, "a"))
    return {"summary": first, "weights": _weights(workspace / "a/out")}


@pytest.mark.slow
def test_same_seed_same_weights(workspace, uninterrupted):
    second = _finish(_start(workspace, "b"))
    assert uninterrupted["summary"]["resumed_from"] is None and second["resumed_from"] is None
    a, b = uninterrupted["weights"], _weights(workspace / "b/out")
    assert a.keys() == b.keys()
    assert all((a[k] == b[k]).all() for k in a), "same seed must give identical weights"
    base = load_file(str(workspace / "base" / "model.safetensors"))
    assert any(not (a[k] == base[k]).all() for k in a if k in base), "training must move the weights"


@pytest.mark.slow
def test_trained_model_keeps_the_start_models_processor_files(workspace, uninterrupted):
    """Byte-identical, so a model dir's hash depends on its weights and not on the tokenizer's last padding."""
    start, out = workspace / "base", workspace / "a/out"
    kept = [p.name for p in sorted(start.iterdir()) if p.is_file() and p.suffix in (".json", ".jinja")
            and p.name not in ("config.json", "generation_config.json")]
    assert "tokenizer.json" in kept
    for name in kept:
        assert (out / name).read_bytes() == (start / name).read_bytes(), name


@pytest.fixture(scope="module")
def resumed(workspace) -> dict:
    """Run "c" killed right after its first checkpoint, then started again."""
    killed = _start(workspace, "c", hold=True)
    for line in killed.stdout:  # blocks until the run holds after checkpoint-2 (or ends)
        if line.startswith("HOLDING"):
            break
    held = killed.poll() is None
    checkpoint = (workspace / "c/work/stage2/checkpoint-2/trainer_state.json").exists()
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    left_output = (workspace / "c/out").exists()
    summary = _finish(_start(workspace, "c"))
    return {"held": held, "checkpoint": checkpoint, "left_output": left_output, "summary": summary,
            "work_left": (workspace / "c/work/stage2").exists(), "weights": _weights(workspace / "c/out")}


@pytest.mark.slow
def test_killed_run_resumes_from_its_checkpoint(resumed):
    assert resumed["held"], "run ended before its first checkpoint"
    assert resumed["checkpoint"]
    assert not resumed["left_output"], "a killed run must not leave a finished-looking output"
    assert resumed["summary"]["resumed_from"] in ("checkpoint-2", "checkpoint-4")
    assert not resumed["work_left"], "work dir is removed after success"


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="known: a GRPO run resumed from a checkpoint does not end with the "
                   "uninterrupted run's weights once the policy actually learns (found when this test's reward "
                   "stopped being constant); strict, so a fix turns this test red until the mark is removed")
def test_resumed_run_ends_with_the_uninterrupted_weights(uninterrupted, resumed):
    a, c = uninterrupted["weights"], resumed["weights"]
    assert all((a[k] == c[k]).all() for k in a), "resumed run must end with the uninterrupted weights"


@pytest.mark.gpu
def test_one_grpo_step_on_a_7b_shaped_model_in_bf16(workspace, tmp_path):
    """The scale-up path: real Qwen2.5-VL-7B dimensions (random weights), bf16, DVE on, one step."""
    import pandas as pd
    import torch

    from skinflow.model.base import BaseModelConfig, TinyVLConfig, build_tiny
    from skinflow.model.fdlinear import DVEConfig
    from skinflow.rl.grpo import Stage2Config, run_grpo

    shape = TinyVLConfig(vocab_size=1024, text_hidden=3584, text_layers=28, text_heads=28, text_kv_heads=4,
                         text_intermediate=18944, vision_hidden=1280, vision_depth=32, vision_heads=16,
                         vision_intermediate=3420, fullatt_block_indexes=[7, 15, 23, 31], window_size=112)
    build_tiny(tmp_path / "base7b", BaseModelConfig(tiny=shape, min_pixels=56 * 56, max_pixels=112 * 112),
               sorted(pd.read_csv(workspace / "taxonomy.csv")["label"]), device="cuda", dtype=torch.bfloat16)
    cfg = Stage2Config(max_steps=1, prompts_per_step=2, num_generations=2, train_limit=4,
                       max_completion_length=16, gradient_checkpointing=True, work_dir=str(tmp_path / "work"),
                       dve=DVEConfig(enabled=True, projections=["gate_proj", "up_proj", "down_proj"]))
    summary = run_grpo("stage2", str(tmp_path / "base7b"), str(tmp_path / "out"),
                       pd.read_parquet(workspace / "manifest.parquet"), pd.read_parquet(workspace / "captions.parquet"),
                       pd.read_csv(workspace / "taxonomy.csv"), cfg)
    assert summary["parameters"] > 7e9 and torch.cuda.max_memory_allocated() > 0
    assert (tmp_path / "out" / "config.json").exists()



def test_kl_reference_of_a_dve_model_is_the_starting_policy(workspace, tmp_path):
    """TRL rebuilds the reference with plain from_pretrained on the policy's path, which drops FDLinear
    (spectra ignored, dense linears re-initialised); align_reference restores the DVE architecture and
    the starting weights, so reference and policy see the same image."""
    from types import SimpleNamespace

    import torch
    from trl.trainer.utils import create_model_from_path

    from skinflow.model.base import load_model
    from skinflow.model.fdlinear import DVEConfig, FDLinear, convert_vision_tower
    from skinflow.rl.grpo import align_reference

    model, processor = load_model(workspace / "base")
    convert_vision_tower(model, DVEConfig(enabled=True))
    model.save_pretrained(tmp_path / "dve", safe_serialization=True)
    processor.save_pretrained(tmp_path / "dve")
    policy, _ = load_model(tmp_path / "dve")
    reference = create_model_from_path(str(tmp_path / "dve"), dtype=torch.float32)  # what TRL does
    assert not any(isinstance(m, FDLinear) for m in reference.modules())

    pixels = processor.image_processor(images=[torch.rand(3, 56, 56)], return_tensors="pt", do_rescale=False)
    def image_features(m):
        with torch.no_grad():
            return m.model.visual(pixels["pixel_values"], grid_thw=pixels["image_grid_thw"]).pooler_output

    assert not torch.allclose(image_features(reference), image_features(policy), atol=1e-4)
    assert align_reference(SimpleNamespace(model=policy, ref_model=reference))
    assert any(isinstance(m, FDLinear) for m in reference.modules())
    torch.testing.assert_close(image_features(reference), image_features(policy))
    assert not any(p.requires_grad for p in reference.parameters())
