"""Warm-up SFT: teach a from-scratch base the two output formats before RL.

SkinFlow starts RL from an instruction-tuned model; the embedded tiny base starts from random
weights and cannot discover either format by sampling, so this stage runs TRL's SFTTrainer on the
training split (prompt -> schema caption, prompt -> ranked diagnosis list). With a pretrained base
it is switched off in params and the base directory passes through unchanged.
"""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path

import pandas as pd
import torch
from pydantic import Field

from skinflow.config import Section
from skinflow.io import atomic_dir
from skinflow.model.examples import TASKS, build_examples
from skinflow.model.prompts import model_prompt_style, write_model_meta


class WarmupConfig(Section):
    enabled: bool = True
    max_steps: int = Field(300, ge=1)
    learning_rate: float = Field(2e-3, gt=0)
    warmup_ratio: float = Field(0.05, ge=0, lt=1)
    batch_size: int = Field(8, ge=1)
    max_length: int = Field(1024, ge=64)
    train_limit: int | None = None         # cap on training images (None = whole train split)
    eval_images: int = Field(32, ge=0)     # test images generated from after training
    max_new_tokens: int = Field(200, ge=8)
    logging_steps: int = Field(10, ge=1)
    seed: int = 0
    threads: int = Field(0, ge=0)          # torch threads; 0 = library default
    gradient_checkpointing: bool = False   # TRL turns it on by default; it only costs time at tiny sizes
    vision_lr_scale: float = Field(1.0, gt=0)  # lr multiplier for the vision tower + merger


def _sft_dataset(examples: list[dict]):
    from datasets import Dataset

    return Dataset.from_list([{
        "images": ex["images"], "prompt": ex["prompt"],
        "completion": [{"role": "assistant", "content": [{"type": "text", "text": ex["target"]}]}],
    } for ex in examples])


def _optimizer(model, cfg: WarmupConfig) -> torch.optim.Optimizer:
    """AdamW with the vision tower in its own group: a from-scratch ViT learns from the few
    image-dependent answer tokens only, so it may need a larger step than the text model."""
    vision = [p for n, p in model.named_parameters() if p.requires_grad and ".visual." in f".{n}"]
    ids = {id(p) for p in vision}
    text = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
    return torch.optim.AdamW([{"params": text, "lr": cfg.learning_rate},
                              {"params": vision, "lr": cfg.learning_rate * cfg.vision_lr_scale}],
                             lr=cfg.learning_rate, weight_decay=0.0)


def run_warmup(base_dir: str, out_dir: str, manifest: pd.DataFrame, captions: pd.DataFrame,
               taxonomy: pd.DataFrame, cfg: WarmupConfig) -> dict:
    """Train (or pass through) and write ``out_dir``; returns the training history + summary."""
    if not cfg.enabled:
        with atomic_dir(out_dir) as tmp:
            shutil.copytree(base_dir, tmp, dirs_exist_ok=True)
        return {"enabled": False, "history": []}

    from trl import SFTConfig, SFTTrainer

    from skinflow.model.base import load_model

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    train = manifest[manifest["split"] == "train"].sort_values("image_id")
    if cfg.train_limit:
        train = train.head(cfg.train_limit)
    style = model_prompt_style(base_dir)
    examples = build_examples(train, captions, taxonomy, TASKS, style)
    model, processor = load_model(base_dir)
    work = Path(out_dir).with_name(Path(out_dir).name + ".work")
    args = SFTConfig(
        output_dir=str(work), max_steps=cfg.max_steps, learning_rate=cfg.learning_rate,
        lr_scheduler_type="cosine", warmup_steps=math.ceil(cfg.warmup_ratio * cfg.max_steps),
        per_device_train_batch_size=cfg.batch_size, max_length=cfg.max_length,
        logging_steps=cfg.logging_steps, save_strategy="no", report_to="none", seed=cfg.seed,
        data_seed=cfg.seed, use_cpu=not torch.cuda.is_available(), bf16=False,
        dataloader_num_workers=0, disable_tqdm=True, completion_only_loss=True,
        gradient_checkpointing=cfg.gradient_checkpointing,
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=_sft_dataset(examples),
                         processing_class=processor, optimizers=(_optimizer(model, cfg), None))
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    with atomic_dir(out_dir) as tmp:
        trainer.model.save_pretrained(tmp, safe_serialization=True)
        processor.save_pretrained(tmp)
        chat = Path(base_dir, "chat_template.jinja")
        if chat.exists():
            shutil.copy(chat, tmp / chat.name)
        # Record the prompt style trained with: without it the output reads as "full" and every later
        # stage (format_check, GRPO, eval) asks with 1.7k-char prompts this model never saw.
        write_model_meta(tmp, style)
    shutil.rmtree(work, ignore_errors=True)
    history = [h for h in trainer.state.log_history if "loss" in h]
    return {"enabled": True, "history": history, "train_examples": len(examples),
            "train_seconds": round(seconds, 2), "steps": cfg.max_steps,
            "seconds_per_step": round(seconds / cfg.max_steps, 4)}
