"""Prompts shared by warm-up, both RL stages and evaluation, so every stage asks the same question.

Two styles: ``full`` spells out the schema vocabularies and the candidate labels (what an
instruction-tuned Qwen2.5-VL needs), ``compact`` is a short fixed instruction for the from-scratch
tiny base, which learns the formats in warm-up and gains nothing from a 500-token prompt on CPU.
The style a model was trained with is stored in its directory (``skinflow_model.json``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal, Sequence

CAPTION_TASK = "caption"
DIAGNOSIS_TASK = "diagnosis"
PromptStyle = Literal["full", "compact"]
MODEL_META = "skinflow_model.json"


def caption_instruction(style: PromptStyle = "full") -> str:
    if style == "compact":
        return "Describe the visible skin findings as a schema caption in JSON."
    # One prompt for every captioner and for the model's own Stage I task.
    from skinflow.captions.captioners import caption_prompt

    return caption_prompt()


def diagnosis_instruction(labels: Sequence[str] | None = None, style: PromptStyle = "full") -> str:
    text = 'Give up to six diagnoses, most likely first, as JSON {"diagnoses": [...]}.'
    if labels and style == "full":
        text += " Choose from: " + "; ".join(sorted(labels)) + "."
    return text


def messages(task: str, labels: Sequence[str] | None = None, style: PromptStyle = "full") -> list[dict]:
    """A single-image user turn in the conversational format TRL and chat templates expect."""
    text = caption_instruction(style) if task == CAPTION_TASK else diagnosis_instruction(labels, style)
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]


def write_model_meta(model_dir: str | os.PathLike, prompt_style: PromptStyle) -> None:
    Path(model_dir, MODEL_META).write_text(json.dumps({"prompt_style": prompt_style}) + "\n")


def model_prompt_style(model_dir: str | os.PathLike) -> PromptStyle:
    """The prompt style a model directory was trained with (``full`` for foreign checkpoints)."""
    meta = Path(model_dir, MODEL_META)
    return json.loads(meta.read_text()).get("prompt_style", "full") if meta.exists() else "full"


def corpus_examples(labels: Sequence[str]) -> list[str]:
    """Representative strings for tokenizer training (prompts and answer formats)."""
    examples = [caption_instruction("compact"), caption_instruction("full"), diagnosis_instruction(labels)]
    examples += [json.dumps({"diagnoses": list(labels[i : i + 6])}, separators=(",", ":"))
                 for i in range(0, len(labels), 3)]
    return examples
