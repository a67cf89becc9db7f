"""Evaluate one model directory on a manifest split: generate, map, score, and keep everything.

Diagnosis lists are generated for every image of the split (greedy, batched, resumable through a
progress file keyed by the model's weights), mapped to canonical labels with a logged decision per
item, and scored with bootstrap CIs overall and per Fitzpatrick group. Unparseable outputs are kept
and counted. Schema captions are generated for a subset and scored against the reference captions.

Any manifest works (Fitzpatrick17k, SkinSynth, HAM10000/ISIC, generic): the label space is the
taxonomy handed in, or ``taxonomy`` from the config (a dataset's own file, e.g.
``skinflow/data/taxonomies/ham10000.csv``, whose codes then map too); top-k shrinks to the number
of classes (``skinflow.eval.metrics``), and truths outside the taxonomy are scored as misses.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

import pandas as pd
from pydantic import Field

from skinflow.captions.metrics import FIELDS, aggregate, field_scores
from skinflow.captions.parser import parse_caption
from skinflow.config import Section
from skinflow.eval.equivalence import LabelSpace
from skinflow.eval.metrics import compute_metrics, confusion_matrix
from skinflow.eval.predictions import map_predictions
from skinflow.io import md5_file
from skinflow.data.manifest import image_paths
from skinflow.model.examples import build_examples, load_rgb, model_max_pixels
from skinflow.model.generation import generate_texts
from skinflow.model.prompts import CAPTION_TASK, DIAGNOSIS_TASK, PromptStyle, messages, model_prompt_style


class EvalConfig(Section):
    RUNTIME: ClassVar[frozenset[str]] = frozenset({"progress_dir"})  # under runtime.<section> in params.yaml
    split: str = "test"
    limit: int | None = None                 # cap on images (None = whole split)
    batch_size: int = Field(16, ge=1)
    max_new_tokens: int = Field(64, ge=8)
    caption_images: int = Field(64, ge=0)    # images whose generated captions are scored
    caption_max_new_tokens: int = Field(200, ge=8)
    n_boot: int = Field(1000, ge=0)
    seed: int = 0
    progress_dir: str = ".cache/eval"
    taxonomy: str | None = None              # a dataset's own taxonomy CSV; None = the one passed in


def _model_key(model_dir: str) -> str:
    weights = sorted(Path(model_dir).glob("*.safetensors"))
    return "-".join(md5_file(w)[:12] for w in weights) or "no-weights"


def _generate_resumable(model_dir: str, examples: list[dict], cfg: EvalConfig, max_new_tokens: int,
                        tag: str, progress: bool) -> list[str]:
    """Generate in chunks, appending finished outputs to a progress file so a rerun resumes."""
    from skinflow.model.base import load_model

    path = Path(cfg.progress_dir) / f"{_model_key(model_dir)}-{tag}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    done: dict[str, str] = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
                done[record["image_id"]] = record["text"]
            except (json.JSONDecodeError, KeyError):
                continue  # a torn line from a crash: that image is generated again
    todo = [ex for ex in examples if ex["image_id"] not in done]
    if todo:
        model, processor = load_model(model_dir)
        chunk = cfg.batch_size * 4
        with path.open("a", encoding="utf-8") as sink:
            for start in range(0, len(todo), chunk):
                part = todo[start : start + chunk]
                texts = generate_texts(model, processor, part, max_new_tokens, cfg.batch_size,
                                       progress=progress)
                for ex, text in zip(part, texts):
                    done[ex["image_id"]] = text
                    sink.write(json.dumps({"image_id": ex["image_id"], "text": text}) + "\n")
                sink.flush()
    return [done[ex["image_id"]] for ex in examples]


def diagnosis_examples(rows: pd.DataFrame, labels: list[str], style: PromptStyle,
                       max_pixels: int | None = None) -> list[dict]:
    """Image + diagnosis prompt per row. Unlike training examples these need no target, so a truth
    outside the taxonomy (or a missing one) is still evaluated, as a miss."""
    prompt = messages(DIAGNOSIS_TASK, labels, style)
    return [{"images": [load_rgb(path, max_pixels)], "prompt": prompt, "image_id": image_id}
            for image_id, path in zip(rows["image_id"], image_paths(rows))]


def evaluate_model(model_dir: str, manifest: pd.DataFrame, captions: pd.DataFrame | None,
                   taxonomy: pd.DataFrame, cfg: EvalConfig, progress: bool = False) -> dict:
    """Return predictions, match log, metrics, confusion and caption scores for one model."""
    rows = manifest[manifest["split"] == cfg.split].sort_values("image_id")
    if cfg.limit:
        rows = rows.head(cfg.limit)
    style = model_prompt_style(model_dir)
    if cfg.taxonomy:
        taxonomy = pd.read_csv(cfg.taxonomy, dtype=str, keep_default_na=False)
    space = LabelSpace(taxonomy)
    examples = diagnosis_examples(rows, list(space.labels), style, model_max_pixels(model_dir))
    texts = _generate_resumable(model_dir, examples, cfg, cfg.max_new_tokens, "diagnosis", progress)
    raw = pd.DataFrame({"image_id": rows["image_id"].to_numpy(), "label": rows["label"].to_numpy(),
                        "fitzpatrick_scale": rows["fitzpatrick_scale"].fillna(-1).astype(int).to_numpy(),
                        "raw_output": texts})
    mapped, match_log = map_predictions(raw, space)
    metrics = compute_metrics(mapped, space, n_boot=cfg.n_boot, seed=cfg.seed)

    caption_scores = caption_per_image = None
    # The first captioned images among those evaluated (a captions table may cover only some; none: no caption score).
    subset = (rows[rows["image_id"].isin(captions["image_id"])].head(cfg.caption_images)
              if cfg.caption_images and captions is not None else rows.head(0))
    if len(subset):
        cap_examples = build_examples(subset, captions, taxonomy, [CAPTION_TASK], style, model_max_pixels(model_dir))
        cap_texts = _generate_resumable(model_dir, cap_examples, cfg, cfg.caption_max_new_tokens,
                                        "caption", progress)
        parsed = [parse_caption(t) for t in cap_texts]
        refs = [parse_caption(ex["target"]).caption for ex in cap_examples]
        preds = [p.caption if p.ok else None for p in parsed]
        caption_scores = aggregate(preds, refs)
        # Per image, so that two models' caption scores can be compared on the same images (paired CI).
        caption_per_image = pd.DataFrame([{"image_id": i, **field_scores(c, r)}
                                          for i, c, r in zip(subset["image_id"].astype(str), preds, refs)])
        caption_per_image["macro"] = caption_per_image[list(FIELDS)].mean(axis=1)
    return {"mapped": mapped, "match_log": match_log, "metrics": metrics,
            "confusion": confusion_matrix(mapped, space), "caption_scores": caption_scores,
            "caption_per_image": caption_per_image}
