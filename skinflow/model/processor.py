"""An image-only Qwen2.5-VL processor, and the one place that loads processors.

The stock ``Qwen2_5_VLProcessor`` insists on a video processor, which needs torchvision; the CPU
torch wheel this project pins has no matching torchvision. Images are all this pipeline feeds the
model, so this subclass drops the video attribute and keeps everything else (image-token
expansion, chat template, batch decoding) from the stock class. It loads real Qwen2.5-VL
directories too: ``load_processor`` assembles it from the directory's image processor, tokenizer
and chat template.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer, Qwen2_5_VLConfig
from transformers.models.qwen2_5_vl.processing_qwen2_5_vl import Qwen2_5_VLProcessor
from transformers.processing_utils import ProcessorMixin


class SkinFlowVLProcessor(Qwen2_5_VLProcessor):
    """Qwen2.5-VL processor without a video processor (no torchvision needed)."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        self.image_token = getattr(tokenizer, "image_token", None) or "<|image_pad|>"
        self.video_token = getattr(tokenizer, "video_token", None) or "<|video_pad|>"
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)

    @property
    def model_input_names(self):
        return list(dict.fromkeys(self.tokenizer.model_input_names + self.image_processor.model_input_names))


AutoProcessor.register(Qwen2_5_VLConfig, SkinFlowVLProcessor, exist_ok=True)


def load_processor(model_dir: str | os.PathLike) -> SkinFlowVLProcessor:
    """Build the image-only processor from a local model directory (ours or a real Qwen2.5-VL)."""
    model_dir = Path(model_dir)
    image_processor = AutoImageProcessor.from_pretrained(model_dir, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    chat_template = getattr(tokenizer, "chat_template", None)
    template_file = model_dir / "chat_template.json"
    if template_file.exists():
        chat_template = json.loads(template_file.read_text())["chat_template"]
    elif (model_dir / "chat_template.jinja").exists():
        chat_template = (model_dir / "chat_template.jinja").read_text()
    return SkinFlowVLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                               chat_template=chat_template)
