"""Stage I / Stage II GRPO with TRL on the base (or warmed-up) model.

Both stages share one runner; they differ in the task (schema caption vs ranked diagnosis list),
the reward components and their starting model. Rollouts use Hugging Face ``generate`` on the
training model itself, so a DVE (FDLinear) vision tower is exactly the one being trained.
A stage checkpoints into a work directory outside its DVC outputs and resumes from it after a
crash; the final model is renamed into place only when training finished.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import ClassVar, Literal

import pandas as pd
import torch
from pydantic import Field, model_validator
from transformers import TrainerCallback

from skinflow.config import Section
from skinflow.io import atomic_dir
from skinflow.model.examples import build_examples, model_max_pixels
from skinflow.model.fdlinear import DVEConfig
from skinflow.model.policy import LoraSettings
from skinflow.model.prompts import CAPTION_TASK, DIAGNOSIS_TASK, model_prompt_style
from skinflow.rl.rewards import Stage1RewardConfig, Stage2RewardConfig

# bf16 dense peak of one H100 SXM, for MFU on GPU runs.
PEAK_FLOPS = {"cuda": 989e12}


class RLStageConfig(Section):
    RUNTIME: ClassVar[frozenset[str]] = frozenset({"work_dir"})  # under runtime.<section> in params.yaml
    enabled: bool = True
    max_steps: int = Field(40, ge=1)
    learning_rate: float = Field(1e-4, gt=0)
    prompts_per_step: int = Field(4, ge=1)
    num_generations: int = Field(4, ge=2)     # GRPO group size
    beta: float = Field(0.02, ge=0)           # KL coefficient against the reference model
    temperature: float = Field(1.0, gt=0)
    max_completion_length: int = Field(192, ge=8)  # a compact schema caption is ~135 tokens
    train_limit: int | None = 256             # training images (None = whole train split)
    train_vision: bool = True                 # False freezes the vision tower (DVE heads stay trainable)
    dve: DVEConfig = DVEConfig()
    lora: LoraSettings = LoraSettings()
    save_steps: int = Field(10, ge=1)         # checkpoint cadence for resume
    logging_steps: int = Field(1, ge=1)
    gradient_checkpointing: bool = False
    seed: int = 0
    work_dir: str = ".cache/rl"
    # hf: rollouts by Hugging Face generate on the training model. vllm: TRL's vLLM rollouts (GPU
    # workers with vLLM installed); vLLM runs its own vision tower without FDLinear, so only with DVE off.
    rollout_engine: Literal["hf", "vllm"] = "hf"
    # Every n-th step the frozen starting policy answers the same prompts: control_reward and reward_gain in the
    # log (skinflow.rl.control). It doubles rollout generation on those steps; 0 turns it off.
    control_every: int = Field(1, ge=0)

    @model_validator(mode="after")
    def _rollouts_match_the_model(self) -> "RLStageConfig":
        if self.rollout_engine == "vllm" and self.dve.enabled:
            raise ValueError("vLLM rollouts would skip the DVE (FDLinear) vision tower; use rollout_engine: hf")
        return self


class Stage1Config(RLStageConfig):
    reward: Stage1RewardConfig = Stage1RewardConfig()


class Stage2Config(RLStageConfig):
    learning_rate: float = Field(5e-5, gt=0)
    prompts_per_step: int = Field(8, ge=1)
    num_generations: int = Field(8, ge=2)
    beta: float = Field(0.1, ge=0)
    max_completion_length: int = Field(64, ge=8)
    reward: Stage2RewardConfig = Stage2RewardConfig()


class ThroughputCallback(TrainerCallback):
    """Adds tokens/s (and MFU on GPU) to every log line from TRL's own token counter."""

    def __init__(self, n_params: int):
        self.n_params = n_params
        self._last = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is None or "num_tokens" not in logs:
            return
        now, tokens = time.perf_counter(), float(logs["num_tokens"])
        if self._last is not None and now > self._last[0]:
            rate = (tokens - self._last[1]) / (now - self._last[0])
            logs["tokens_per_second"] = round(rate, 2)
            if torch.cuda.is_available():
                logs["mfu"] = round(6 * self.n_params * rate / PEAK_FLOPS["cuda"], 5)
            # Trainer.log stores a copy of the logs before callbacks run: update the stored line too,
            # or the per-step CSV (built from log_history) never sees these columns.
            if state.log_history and state.log_history[-1].get("step") == state.global_step:
                state.log_history[-1].update({k: logs[k] for k in ("tokens_per_second", "mfu") if k in logs})
        self._last = (now, tokens)


def _dataset(examples: list[dict]):
    from datasets import Dataset

    return Dataset.from_list([{"prompt": ex["prompt"], "images": ex["images"], "label": ex["label"],
                               "reference_caption": ex["reference_caption"]} for ex in examples])


def align_reference(trainer) -> bool:
    """Make TRL's KL reference the starting policy itself.

    TRL rebuilds the reference with a plain ``from_pretrained`` on the policy's path. For a DVE model
    (a Stage II run starting from a DVE Stage I, or Stage I after conversion) that is a vision tower
    without FDLinear: the stored spectra are dropped and the dense linears re-initialised, so the KL
    term compared the policy with a model that sees a different image (measured: KL 0.08 at step 1
    instead of ~0, and Stage II reward falling over training). Returns whether the reference changed."""
    from skinflow.model.fdlinear import FDLinear, convert_vision_tower, stored_dve_config

    ref = trainer.ref_model
    dve = stored_dve_config(trainer.model.config)
    if ref is None or dve is None:
        return False
    if not any(isinstance(m, FDLinear) for m in ref.modules()):  # its config may say DVE; its modules don't
        convert_vision_tower(ref, dve)
    ref.load_state_dict(trainer.model.state_dict(), strict=True)  # policy weights before any update
    ref.requires_grad_(False)
    ref.eval()
    return True


WEIGHT_SUFFIXES = (".safetensors", ".safetensors.index.json", ".bin", ".pt")


def run_grpo(stage: Literal["stage1", "stage2"], in_dir: str, out_dir: str, manifest: pd.DataFrame,
             captions: pd.DataFrame, taxonomy: pd.DataFrame, cfg: RLStageConfig) -> dict:
    """Train one RL stage (or pass ``in_dir`` through when disabled); returns summary + history."""
    if not cfg.enabled:
        with atomic_dir(out_dir) as tmp:
            shutil.copytree(in_dir, tmp, dirs_exist_ok=True)
        return {"enabled": False, "history": []}
    from skinflow.not_applicable import NO_CAPTIONS, pass_through, upstream_reason

    reason = upstream_reason(in_dir) or (f"Stage I needs reference captions; {NO_CAPTIONS}"
                                         if stage == "stage1" and captions.empty else None)
    if reason:
        return pass_through(in_dir, out_dir, reason)

    from trl import GRPOConfig, GRPOTrainer

    from skinflow.eval.equivalence import LabelSpace
    from skinflow.model.base import load_model
    from skinflow.model.policy import build_policy
    from skinflow.rl.control import attach_control, control_summary, frozen_copy, needs_copy
    from skinflow.rl.rewards import make_stage1_reward_funcs, make_stage2_reward_funcs

    task = CAPTION_TASK if stage == "stage1" else DIAGNOSIS_TASK
    train = manifest[manifest["split"] == "train"].sort_values("image_id")
    if task == CAPTION_TASK:  # captions may cover a subset (a captions table): prompt only images that have one
        train = train[train["image_id"].isin(captions["image_id"])]
    if cfg.train_limit:
        train = train.head(cfg.train_limit)
    examples = build_examples(train, captions, taxonomy, [task], model_prompt_style(in_dir),
                              max_pixels=model_max_pixels(in_dir))
    labels = sorted(taxonomy["label"])
    if stage == "stage1":
        reward_funcs = make_stage1_reward_funcs(cfg.reward, labels)
    else:
        reward_funcs = make_stage2_reward_funcs(cfg.reward, LabelSpace(taxonomy))

    from skinflow.determinism import seed_everything

    seed_everything(cfg.seed)  # LoRA adapters and the DVE heads are initialised before TRL seeds anything
    model, processor = load_model(in_dir, dtype=torch.bfloat16 if torch.cuda.is_available() else torch.float32)
    policy = build_policy(model, cfg.dve, cfg.lora, cfg.train_vision, cfg.learning_rate)
    model, info = policy.model, policy.info
    work = Path(cfg.work_dir) / stage
    batch = cfg.prompts_per_step * cfg.num_generations
    args = GRPOConfig(
        output_dir=str(work), max_steps=cfg.max_steps, learning_rate=cfg.learning_rate,
        per_device_train_batch_size=batch, num_generations=cfg.num_generations,
        max_completion_length=cfg.max_completion_length, beta=cfg.beta, temperature=cfg.temperature,
        logging_steps=cfg.logging_steps, save_strategy="steps", save_steps=cfg.save_steps,
        save_only_model=False, report_to="none", seed=cfg.seed, data_seed=cfg.seed,
        use_cpu=not torch.cuda.is_available(), bf16=torch.cuda.is_available(),
        gradient_checkpointing=cfg.gradient_checkpointing, dataloader_num_workers=0,
        disable_tqdm=True, lr_scheduler_type="constant", remove_unused_columns=False,
        use_vllm=cfg.rollout_engine == "vllm",
    )
    optimizers = (torch.optim.AdamW(policy.param_groups), None) if policy.param_groups else (None, None)
    # Taken before TRL patches the model's forward (a later copy would run the policy); only without a KL reference.
    frozen = frozen_copy(model) if cfg.control_every and needs_copy(model, cfg.beta) else None
    trainer = GRPOTrainer(model=model, reward_funcs=reward_funcs, args=args, optimizers=optimizers,
                          train_dataset=_dataset(examples), processing_class=processor)
    trainer.add_callback(ThroughputCallback(info["parameters"]))
    info["reference_aligned"] = align_reference(trainer)
    control = attach_control(trainer, cfg.control_every, cfg.seed, frozen)
    info["control_model"] = control.source if control else None
    resume = latest_complete_checkpoint(work)
    started = time.perf_counter()
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    seconds = time.perf_counter() - started

    final = trainer.model.merge_and_unload() if cfg.lora.enabled else trainer.model
    with atomic_dir(out_dir) as tmp:
        final.save_pretrained(tmp, safe_serialization=True)
        # The processor is the start model's, byte for byte: saving the live one would record whatever
        # padding state the last rollout left in the tokenizer (it made model dirs depend on the control schedule).
        for extra in sorted(Path(in_dir).iterdir()):
            if extra.is_file() and not (tmp / extra.name).exists() and not extra.name.endswith(WEIGHT_SUFFIXES):
                shutil.copy(extra, tmp / extra.name)
    shutil.rmtree(work, ignore_errors=True)
    history = [h for h in trainer.state.log_history if "reward" in h]
    return {"enabled": True, "task": task, "history": history, "resumed_from": resume.name if resume else None,
            "train_seconds": round(seconds, 2), "steps": cfg.max_steps,
            "seconds_per_step": round(seconds / cfg.max_steps, 4),
            "train_images": len(examples), "control": control_summary(history, cfg.seed), **info}


def latest_complete_checkpoint(work: Path) -> Path | None:
    """Newest checkpoint whose trainer state was written; a checkpoint torn by a kill is removed."""
    found = sorted(work.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
    for path in reversed(found):
        if (path / "trainer_state.json").exists() and (path / "model.safetensors").exists():
            return path
        shutil.rmtree(path, ignore_errors=True)
    return None


def history_frame(history: list[dict]) -> pd.DataFrame:
    """Per-step log as a flat table (reward components, KL, entropy, tokens/s) for DVC plots."""
    frame = pd.DataFrame(history)
    keep = [c for c in frame.columns if c == "step" or c.startswith(("reward", "rewards/", "control_", "kl",
                                                                    "entropy", "tokens_per_second", "mfu", "loss",
                                                                    "completions/mean_length"))]
    frame = frame[keep] if keep else frame
    frame.columns = [c.replace("/", "_") for c in frame.columns]
    return frame.apply(pd.to_numeric, errors="coerce").round(6)

