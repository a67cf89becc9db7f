"""Batched generation for any local model directory: prompts + images in, decoded texts out."""

from __future__ import annotations

from typing import Iterator, Sequence

import torch


def _batches(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


@torch.no_grad()
def generate_texts(model, processor, examples: Sequence[dict], max_new_tokens: int,
                   batch_size: int = 8, do_sample: bool = False, progress: bool = False) -> list[str]:
    """``examples`` carry ``images`` (list of PIL) and ``prompt`` (chat messages); greedy by default."""
    model.eval()
    device = next(model.parameters()).device
    batches = _batches(examples, batch_size)
    if progress:
        from tqdm import tqdm

        batches = tqdm(batches, total=-(-len(examples) // batch_size), desc="generate", unit="batch")
    outputs: list[str] = []
    for batch in batches:
        texts = [processor.apply_chat_template(ex["prompt"], add_generation_prompt=True, tokenize=False)
                 for ex in batch]
        images = [img for ex in batch for img in ex["images"]]
        inputs = processor(text=texts, images=images, return_tensors="pt", padding=True,
                           padding_side="left").to(device)
        generated = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=do_sample,
                                   pad_token_id=processor.tokenizer.pad_token_id)
        new_tokens = generated[:, inputs["input_ids"].shape[1]:]
        outputs.extend(processor.batch_decode(new_tokens, skip_special_tokens=True))
    return outputs
