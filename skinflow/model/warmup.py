"""Warm-up SFT: teach a from-scratch base the two output formats before RL.

SkinFlow starts RL from an instruction-tuned model; the embedded tiny base starts from random
weights and cannot discover either format by sampling, so this stage runs TRL's SFTTrainer on the
training split (prompt -> schema caption, prompt -> ranked diagnosis list). With a pretrained base
it is switched off in params and the base directory passes through unchanged.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

import pandas as pd
import torch
from typing import ClassVar, Literal

from pydantic import Field

from skinflow.config import Section
from skinflow.io import atomic_dir
from skinflow.model.examples import TASKS, build_examples, model_max_pixels
from skinflow.model.prompts import CAPTION_TASK, model_prompt_style, write_model_meta


class WarmupConfig(Section):
    RUNTIME: ClassVar[frozenset[str]] = frozenset({"threads"})  # under runtime.<section> in params.yaml
    enabled: bool = True
    max_steps: int = Field(1600, ge=1)
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
    vision_lr_scale: float = Field(0.1, gt=0)   # SFT lr multiplier for the vision tower + merger
    diagnosis_repeat: int = Field(2, ge=1)      # copies of each diagnosis example in the SFT set
    vision_pretrain_steps: int = Field(3000, ge=0)  # supervised vision warm start before SFT (0 = off)
    vision_pretrain_lr: float = Field(1e-3, gt=0)
    vision_pretrain_batch_size: int = Field(16, ge=1)
    # How the throwaway head pools the image tokens: mean/max/min statistics, or learned attention queries
    # (the way the decoder itself reads the image: a query scoring each token, softmax, weighted sum).
    vision_pretrain_pooling: Literal["stats", "attention"] = "attention"


def _sft_dataset(examples: list[dict]):
    from datasets import Dataset

    return Dataset.from_list([{
        "images": ex["images"], "prompt": ex["prompt"],
        "completion": [{"role": "assistant", "content": [{"type": "text", "text": ex["target"]}]}],
    } for ex in examples])


class _StatsPool(torch.nn.Module):
    def width(self, dim: int) -> int:
        return 3 * dim

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return torch.cat([tokens.mean(0), tokens.amax(0), tokens.amin(0)])


class _AttentionPool(torch.nn.Module):
    """Learned queries over RMS-normalised tokens, as a decoder attention head would read them."""

    def __init__(self, dim: int, queries: int = 4):
        super().__init__()
        self.norm = torch.nn.RMSNorm(dim)
        self.queries = torch.nn.Parameter(torch.randn(queries, dim) * dim**-0.5)

    def width(self, dim: int) -> int:
        return self.queries.shape[0] * dim

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        weights = torch.softmax(self.queries @ self.norm(tokens).T * tokens.shape[-1] ** -0.5, dim=-1)
        return (weights @ tokens).flatten()


def _pretrain_vision(model, processor, examples: list[dict], cfg: WarmupConfig) -> list[float]:
    """Warm-start the from-scratch vision tower: predict each train image's label and caption
    attributes from pooled merger outputs through a throwaway linear head.

    Why: a random ViT trained only through the few image-dependent answer tokens of SFT never develops
    lesion features, so SFT settles on the marginal answer. The pooling matters: mean/max/min statistics
    learn features a linear probe reads (24 % test) but the decoder does not (its attention is a softmax-
    weighted mean, not a max: a diagnosis-only decoder probe stayed at chance). Learned attention queries
    pool the tokens the way a decoder head does, and the decoder then reads them (probe: 23-30 % test).
    """
    gen = torch.Generator().manual_seed(cfg.seed)
    rows = {ex["image_id"]: ex for ex in examples if ex["task"] != CAPTION_TASK}
    attrs = {ex["image_id"]: {f"{k}={v}" for k, vs in json.loads(ex["target"]).items()
                              if k not in ("summary", "schema_version")
                              for v in (vs if isinstance(vs, list) else [vs])}
             for ex in examples if ex["task"] == CAPTION_TASK}
    ids = sorted(rows)
    names = sorted({rows[i]["label"] for i in ids}) + sorted(set().union(*attrs.values()) if attrs else set())
    col = {n: j for j, n in enumerate(names)}
    y = torch.zeros(len(ids), len(names))
    for r, i in enumerate(ids):
        for n in [rows[i]["label"], *attrs.get(i, ())]:
            y[r, col[n]] = 1.0
    n_labels = len({rows[i]["label"] for i in ids})
    pix = processor.image_processor(images=[rows[i]["images"][0] for i in ids], return_tensors="pt")
    grid = pix["image_grid_thw"]
    start = torch.cat([torch.zeros(1, dtype=torch.long), grid.prod(-1).cumsum(0)])
    vis = model.model.visual
    dim = vis.merger.mlp[-1].out_features
    pool = _AttentionPool(dim) if cfg.vision_pretrain_pooling == "attention" else _StatsPool()
    width = pool.width(dim)
    head = torch.nn.Sequential(torch.nn.LayerNorm(width), torch.nn.Linear(width, len(names)))
    opt = torch.optim.AdamW([*vis.parameters(), *pool.parameters(), *head.parameters()],
                            lr=cfg.vision_pretrain_lr, weight_decay=0.0)
    warm = max(1, math.ceil(cfg.warmup_ratio * cfg.vision_pretrain_steps))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: min(1.0, (t + 1) / warm) * 0.5 * (
        1 + math.cos(math.pi * t / cfg.vision_pretrain_steps)))
    model.train()
    losses, hits = [], []
    for _ in range(cfg.vision_pretrain_steps):
        idx = torch.randint(0, len(ids), (min(cfg.vision_pretrain_batch_size, len(ids)),), generator=gen)
        rows_ = torch.cat([torch.arange(start[i], start[i + 1]) for i in idx.tolist()])
        merged = vis(pix["pixel_values"][rows_], grid_thw=grid[idx]).pooler_output
        pooled = torch.stack([pool(t) for t in
                              torch.split(merged, (grid[idx].prod(-1) // vis.spatial_merge_size**2).tolist())])
        logits = head(pooled)
        loss = torch.nn.functional.cross_entropy(logits[:, :n_labels], y[idx, :n_labels].argmax(-1))
        if len(names) > n_labels:
            loss = loss + torch.nn.functional.binary_cross_entropy_with_logits(logits[:, n_labels:], y[idx, n_labels:])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        hits.append((logits[:, :n_labels].argmax(-1) == y[idx, :n_labels].argmax(-1)).float().mean().item())
    tail = max(1, len(hits) // 10)
    return {"loss": losses, "label_accuracy_last_tenth": round(sum(hits[-tail:]) / tail, 4)}


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

    from skinflow.determinism import seed_everything

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)  # the vision pre-training's pool and head are drawn from the global generator
    train = manifest[manifest["split"] == "train"].sort_values("image_id")
    if cfg.train_limit:
        train = train.head(cfg.train_limit)
    style = model_prompt_style(base_dir)
    examples = build_examples(train, captions, taxonomy, TASKS, style, max_pixels=model_max_pixels(base_dir))
    model, processor = load_model(base_dir)
    started = time.perf_counter()
    pre = _pretrain_vision(model, processor, examples, cfg) if cfg.vision_pretrain_steps else {"loss": []}
    pre_losses = pre["loss"]
    pre_seconds = time.perf_counter() - started
    # Diagnosis answers are ~20 tokens against ~140 for a caption, so with one copy each the label
    # token is ~1% of the SFT loss; extra copies are cheap (short) and give it a real share.
    examples += [ex for ex in examples if ex["task"] != CAPTION_TASK] * (cfg.diagnosis_repeat - 1)
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
            "seconds_per_step": round(seconds / cfg.max_steps, 4),
            "vision_pretrain": {"steps": len(pre_losses), "seconds": round(pre_seconds, 2),
                                "loss_first": round(sum(pre_losses[:20]) / max(1, len(pre_losses[:20])), 4),
                                "loss_last": round(sum(pre_losses[-20:]) / max(1, len(pre_losses[-20:])), 4),
                                "train_label_accuracy": pre.get("label_accuracy_last_tenth")}
            if pre_losses else None}
