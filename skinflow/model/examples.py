"""Training/eval examples for both tasks: (image, prompt messages, target text) per manifest row.

Shared by warm-up SFT, both GRPO stages and evaluation so they all ask the same questions. The
diagnosis target ranks the true label first, then a deterministic differential: labels of the same
nine-partition group, then the same three-partition group, then the rest.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Sequence

import pandas as pd
from PIL import Image

from skinflow.data.manifest import image_paths
from skinflow.captions.parser import MAX_DIAGNOSES, render_diagnoses
from skinflow.model.prompts import CAPTION_TASK, DIAGNOSIS_TASK, PromptStyle, messages


def differential(label: str, taxonomy: pd.DataFrame, key: str, k: int = MAX_DIAGNOSES) -> list[str]:
    """True label first, then clinically nearest labels (same nine group, same three group, rest)."""
    by_label = taxonomy.set_index("label")
    nine, three = by_label.at[label, "nine_partition_label"], by_label.at[label, "three_partition_label"]

    def rank(other: str) -> tuple[int, str]:
        row = by_label.loc[other]
        tier = 0 if row["nine_partition_label"] == nine else 1 if row["three_partition_label"] == three else 2
        return tier, hashlib.sha1(f"{key}:{other}".encode(), usedforsecurity=False).hexdigest()

    others = sorted((o for o in by_label.index if o != label), key=rank)
    return [label] + others[: k - 1]


# Decoded images keep at most this many times the model's pixel budget (2x per side); the processor does the final
# resize. A 1022 x 767 dermoscopic JPEG was otherwise carried at full size into the datasets table (PNG-encoded
# there: 60 of 89 s of a 40-step warm-up) and resized again at every step. SkinSynth's 128 px images are untouched.
LOAD_MARGIN = 4


def load_rgb(path: str | os.PathLike, max_pixels: int | None = None) -> Image.Image:
    """The image as RGB; with ``max_pixels`` (the model's budget) larger images are shrunk once, aspect kept."""
    with Image.open(path) as img:
        image = img.convert("RGB")
    area = image.width * image.height
    if max_pixels and area > LOAD_MARGIN * max_pixels:
        scale = math.sqrt(LOAD_MARGIN * max_pixels / area)
        image = image.resize((max(1, int(image.width * scale)), max(1, int(image.height * scale))),
                             Image.Resampling.BICUBIC)
    return image


def model_max_pixels(model_dir: str | os.PathLike) -> int | None:
    """The pixel budget of a model directory's image processor (``max_pixels`` or ``size.longest_edge``)."""
    for name in ("processor_config.json", "preprocessor_config.json"):
        path = Path(model_dir, name)
        if path.exists():
            config = json.loads(path.read_text(encoding="utf-8"))
            config = config.get("image_processor", config)
            value = config.get("max_pixels") or (config.get("size") or {}).get("longest_edge")
            if value:
                return int(value)
    return None


def build_examples(rows: pd.DataFrame, captions: pd.DataFrame | None, taxonomy: pd.DataFrame,
                   tasks: Sequence[str], style: PromptStyle = "full", max_pixels: int | None = None) -> list[dict]:
    """One example per (row, task): ``images``, ``prompt`` (messages), ``target``, plus metadata columns.
    ``max_pixels``: the model's pixel budget (:func:`model_max_pixels`), so large images are shrunk once."""
    labels = sorted(taxonomy["label"])
    caption_by_id = {} if captions is None else dict(zip(captions["image_id"], captions["caption_json"]))
    examples = []
    for row, path in zip(rows.itertuples(), image_paths(rows)):
        image = load_rgb(path, max_pixels)
        for task in tasks:
            if task == CAPTION_TASK:
                target = caption_by_id.get(row.image_id)
                if target is None and captions is not None:
                    continue  # training needs a reference; evaluation (captions=None) does not
            else:
                target = render_diagnoses(differential(row.label, taxonomy, row.image_id))
            examples.append({
                "images": [image], "prompt": messages(task, labels, style), "target": target, "task": task,
                "image_id": row.image_id, "label": row.label,
                "reference_caption": caption_by_id.get(row.image_id, ""),
                "fitzpatrick_scale": int(row.fitzpatrick_scale) if pd.notna(row.fitzpatrick_scale) else -1,
            })
    return examples


TASKS = (CAPTION_TASK, DIAGNOSIS_TASK)
