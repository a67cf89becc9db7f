"""Prompts shared by warm-up, both RL stages and evaluation, so every stage asks the same question."""

from __future__ import annotations

import json
from typing import Sequence


CAPTION_TASK = "caption"
DIAGNOSIS_TASK = "diagnosis"


def caption_instruction() -> str:
    # One prompt for every captioner and for the model's own Stage I task.
    from skinflow.captions.captioners import caption_prompt

    return caption_prompt()


def diagnosis_instruction(labels: Sequence[str] | None = None) -> str:
    text = ('Give up to six diagnoses, most likely first, as JSON {"diagnoses": [...]}.')
    if labels:
        text += " Choose from: " + "; ".join(sorted(labels)) + "."
    return text


def messages(task: str, labels: Sequence[str] | None = None) -> list[dict]:
    """A single-image user turn in the conversational format TRL and chat templates expect."""
    text = caption_instruction() if task == CAPTION_TASK else diagnosis_instruction(labels)
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]


def corpus_examples(labels: Sequence[str]) -> list[str]:
    """Representative strings for tokenizer training (prompts and answer formats)."""
    examples = [caption_instruction(), diagnosis_instruction(labels)]
    examples += [json.dumps({"diagnoses": list(labels[i : i + 6])}, separators=(",", ":"))
                 for i in range(0, len(labels), 3)]
    return examples
