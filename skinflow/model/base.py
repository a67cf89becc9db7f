"""The base model: a tiny Qwen2.5-VL built locally from a config, or a real local checkpoint.

The tiny model is a normal Hugging Face model directory (config, safetensors weights, tokenizer,
image processor, chat template), so every later stage loads it exactly as it would load
``Qwen2.5-VL-7B-Instruct``. Its tokenizer is a byte-level BPE trained here on the project's own
vocabulary (caption schema terms, taxonomy labels, prompt words) and carries Qwen's special tokens.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Iterable, Literal

import torch
from pydantic import Field
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from skinflow.config import Section
from skinflow.io import atomic_dir
from skinflow.model.processor import SkinFlowVLProcessor, load_processor
from skinflow.model.prompts import write_model_meta

QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
)

# Qwen2-VL's chat format: images become <|vision_start|><|image_pad|><|vision_end|>, which the
# processor expands to one pad token per merged image patch.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a dermatology assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


class TinyVLConfig(Section):
    vocab_size: int = 1024
    text_hidden: int = 96
    text_layers: int = 2
    text_heads: int = 4
    text_kv_heads: int = 2
    text_intermediate: int = 256
    vision_hidden: int = 64
    vision_depth: int = 2
    vision_heads: int = 4
    vision_intermediate: int = 128
    fullatt_block_indexes: list[int] = [1]
    window_size: int = 56
    image_size: int = 112       # images are resized to this square (multiple of 28)
    seed: int = 0


class BaseModelConfig(Section):
    kind: Literal["tiny", "pretrained"] = "tiny"
    path: str | None = None          # a local Qwen2.5-VL directory when kind = pretrained
    tiny: TinyVLConfig = TinyVLConfig()
    corpus_taxonomy: str = "data/interim/taxonomy.csv"
    min_pixels: int = Field(112 * 112, ge=28 * 28)
    max_pixels: int = Field(112 * 112, ge=28 * 28)


def train_tokenizer(corpus: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE on the project's own text; any string stays encodable (byte fallback)."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(QWEN_SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tokenizer.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        additional_special_tokens=list(QWEN_SPECIAL_TOKENS[1:]), model_max_length=4096,
        padding_side="left",
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def tokenizer_corpus(labels: Iterable[str]) -> list[str]:
    """Text the model will read and write: schema captions, diagnosis lists, prompts, labels."""
    from skinflow import vocab
    from skinflow.model.prompts import corpus_examples

    lines = list(labels)
    for tuple_ in list(vocab.SCALAR_FIELDS.values()) + list(vocab.SET_FIELDS.values()):
        lines.extend(tuple_)
    lines.extend(list(vocab.SCALAR_FIELDS) + list(vocab.SET_FIELDS))
    lines.extend(corpus_examples(list(labels)))
    return lines * 4


def build_tiny(out_dir: str | os.PathLike, cfg: BaseModelConfig, labels: list[str],
               device: str | None = None, dtype: torch.dtype | None = None) -> dict:
    """Write a randomly initialised tiny Qwen2.5-VL model directory.

    ``device``/``dtype`` build the weights directly there (e.g. a 7B-shaped model on a GPU in bf16, which
    would need a 33 GB fp32 copy on the host otherwise); the default is the pipeline's CPU fp32 build."""
    tiny = cfg.tiny
    tokenizer = train_tokenizer(tokenizer_corpus(labels), tiny.vocab_size)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}
    head_dim = tiny.text_hidden // tiny.text_heads
    quarter = head_dim // 2 // 3
    mrope = [head_dim // 2 - 2 * quarter, quarter, quarter]  # temporal, height, width halves
    config = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer), hidden_size=tiny.text_hidden, intermediate_size=tiny.text_intermediate,
            num_hidden_layers=tiny.text_layers, num_attention_heads=tiny.text_heads,
            num_key_value_heads=tiny.text_kv_heads, max_position_embeddings=4096,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": mrope},
            bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
        ),
        vision_config=dict(
            depth=tiny.vision_depth, hidden_size=tiny.vision_hidden, intermediate_size=tiny.vision_intermediate,
            num_heads=tiny.vision_heads, out_hidden_size=tiny.text_hidden, patch_size=14,
            spatial_merge_size=2, temporal_patch_size=2, window_size=tiny.window_size,
            fullatt_block_indexes=list(tiny.fullatt_block_indexes),
        ),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    torch.manual_seed(tiny.seed)
    if device is None and dtype is None:
        model = Qwen2_5_VLForConditionalGeneration(config)
    else:
        with torch.device(device or "cpu"):
            model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=dtype or torch.float32)
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    image_processor = Qwen2VLImageProcessorPil(min_pixels=cfg.min_pixels, max_pixels=cfg.max_pixels,
                                               patch_size=14, merge_size=2, temporal_patch_size=2)
    processor = SkinFlowVLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                    chat_template=CHAT_TEMPLATE)
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        processor.save_pretrained(tmp)
        (tmp / "chat_template.jinja").write_text(CHAT_TEMPLATE)
        write_model_meta(tmp, "compact")
    params = sum(p.numel() for p in model.parameters())
    return {"kind": "tiny", "parameters": params,
            "vision_parameters": sum(p.numel() for p in model.model.visual.parameters()),
            "vocab_size": len(tokenizer)}


def prepare_base(out_dir: str | os.PathLike, cfg: BaseModelConfig, labels: list[str]) -> dict:
    """Tiny: build from config. Pretrained: copy the local directory (never downloads)."""
    if cfg.kind == "tiny":
        return build_tiny(out_dir, cfg, labels)
    if not cfg.path or not Path(cfg.path, "config.json").exists():
        raise FileNotFoundError(f"base_model.path {cfg.path!r} is not a local model directory "
                                "(nothing is downloaded; point it at a Qwen2.5-VL checkout)")
    with atomic_dir(out_dir) as tmp:
        shutil.copytree(cfg.path, tmp, dirs_exist_ok=True)
    config = json.loads(Path(cfg.path, "config.json").read_text())
    return {"kind": "pretrained", "source": cfg.path, "architectures": config.get("architectures")}


def load_model(model_dir: str | os.PathLike, dtype: torch.dtype = torch.float32):
    """Load (model, processor) from a local directory; a DVE-converted model comes back converted."""
    from skinflow.model.fdlinear import load_dve_model, stored_dve_config

    config = Qwen2_5_VLConfig.from_pretrained(model_dir, local_files_only=True)
    if stored_dve_config(config) is not None:
        model = load_dve_model(model_dir, dtype=dtype, local_files_only=True)
    else:
        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(model_dir, dtype=dtype,
                                                                   local_files_only=True)
    return model, load_processor(model_dir)
