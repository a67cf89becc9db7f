"""Decoding images for the model: large real images are shrunk once to a margin over the model's pixel budget."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from skinflow.model.examples import LOAD_MARGIN, load_rgb, model_max_pixels


def _jpeg(path, width, height):
    pixels = np.random.default_rng(0).integers(0, 255, size=(height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, quality=90)
    return path


def test_a_large_image_is_shrunk_once_with_its_aspect_kept(tmp_path):
    image = load_rgb(_jpeg(tmp_path / "big.jpg", 1022, 767), max_pixels=12544)
    assert image.mode == "RGB" and image.width * image.height <= LOAD_MARGIN * 12544
    assert abs(image.width / image.height - 1022 / 767) < 0.02
    assert load_rgb(tmp_path / "big.jpg").size == (1022, 767)  # no budget: full size


def test_an_image_within_the_margin_is_untouched(tmp_path):
    path = _jpeg(tmp_path / "small.jpg", 128, 128)  # SkinSynth's size against the tiny model's 112 x 112 budget
    assert np.array_equal(np.asarray(load_rgb(path, max_pixels=12544)), np.asarray(load_rgb(path)))


def test_the_pixel_budget_is_read_from_either_processor_file(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a/processor_config.json").write_text(json.dumps({"image_processor": {"size": {"longest_edge": 12544}}}))
    (tmp_path / "b").mkdir()
    (tmp_path / "b/preprocessor_config.json").write_text(json.dumps({"max_pixels": 12845056}))
    (tmp_path / "c").mkdir()
    assert model_max_pixels(tmp_path / "a") == 12544
    assert model_max_pixels(tmp_path / "b") == 12845056
    assert model_max_pixels(tmp_path / "c") is None
