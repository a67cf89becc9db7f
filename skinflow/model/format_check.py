"""Does a model directory emit the two output formats? Parse rates on a few test images."""

from __future__ import annotations

import pandas as pd

from skinflow.captions.parser import parse_caption, parse_diagnoses
from skinflow.model.examples import TASKS, build_examples, model_max_pixels
from skinflow.model.generation import generate_texts
from skinflow.model.prompts import CAPTION_TASK, model_prompt_style


def format_check(model_dir: str, manifest: pd.DataFrame, taxonomy: pd.DataFrame, n_images: int,
                 max_new_tokens: int) -> dict:
    from skinflow.model.base import load_model

    test = manifest[manifest["split"] == "test"].sort_values("image_id").head(n_images)
    examples = build_examples(test, None, taxonomy, TASKS, model_prompt_style(model_dir),
                              max_pixels=model_max_pixels(model_dir))
    model, processor = load_model(model_dir)
    texts = generate_texts(model, processor, examples, max_new_tokens)
    result: dict = {"images": len(test)}
    for task in TASKS:
        pairs = [(ex, t) for ex, t in zip(examples, texts) if ex["task"] == task]
        if task == CAPTION_TASK:
            ok = [parse_caption(t).ok for _, t in pairs]
        else:
            parsed = [parse_diagnoses(t) for _, t in pairs]
            ok = [p.ok for p in parsed]
            top1 = [p.ok and p.diagnoses[0] == ex["label"] for p, (ex, _) in zip(parsed, pairs)]
            result["diagnosis_top1_exact"] = sum(top1) / len(top1) if top1 else 0.0
            result["distinct_top1"] = len({p.diagnoses[0] for p in parsed if p.ok})
        result[f"{task}_parse_rate"] = sum(ok) / len(ok) if ok else 0.0
    result["samples"] = {task: next((t for ex, t in zip(examples, texts) if ex["task"] == task), "")[:300]
                         for task in TASKS}
    return result
