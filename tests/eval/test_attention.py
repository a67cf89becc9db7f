"""Attention maps: entropy, token grid back-projection, lesion share, and a tiny-model run that must
agree with transformers' own ``output_attentions`` and go end to end through the DVC stage."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from skinflow.eval.attention import (
    AttentionConfig, Explanation, back_project, explain_image, image_token_positions, lesion_disc,
    lesion_geometry, mask_share, merged_grid, normalised_entropy, reduce_attention, score_explanation,
    use_eager_text_attention, variant_summary,
)

# ---- pure pieces ------------------------------------------------------------------------------------


def test_entropy_uniform_one_onehot_zero():
    assert normalised_entropy(np.ones(16)) == pytest.approx(1.0)
    assert normalised_entropy(np.full((4, 4), 0.3)) == pytest.approx(1.0)
    assert normalised_entropy(np.eye(1, 16).ravel()) == 0.0
    assert normalised_entropy([1, 1, 0, 0]) == pytest.approx(math.log(2) / math.log(4))
    assert normalised_entropy([5.0]) == 0.0
    for bad in ([], [0, 0], [1, -1], [1, np.nan]):
        with pytest.raises(ValueError):
            normalised_entropy(bad)


def test_grid_and_token_positions():
    assert merged_grid([1, 8, 8], 2) == (4, 4) and merged_grid([1, 6, 10], 2) == (3, 5)
    with pytest.raises(ValueError):
        merged_grid([2, 8, 8], 2)
    with pytest.raises(ValueError):
        merged_grid([1, 7, 8], 2)
    ids = np.array([5, 9] + [12] * 6 + [9, 7])
    assert image_token_positions(ids, 12, (2, 3)).tolist() == list(range(2, 8))
    with pytest.raises(ValueError, match="image tokens"):
        image_token_positions(ids, 12, (4, 4))


def _synthetic_attention(layers=3, heads=2, prefix=3, grid=(4, 4), n_answer=5, hot=(1, 2)):
    """Prompt queries look at cell (0, 0); answer-producing queries split between a sink (token 0)
    and the ``hot`` cell, with a little uniform spill over the image."""
    n_img = grid[0] * grid[1]
    prompt_len = prefix + n_img + 2
    length = prompt_len + n_answer
    w = torch.zeros(layers, heads, length, length)
    w[:, :, :, 0] = 1.0
    image = torch.arange(prefix, prefix + n_img)
    w[:, :, :prompt_len - 1, prefix] = 5.0                       # ignored: not answer-producing
    hot_pos = prefix + hot[0] * grid[1] + hot[1]
    queries = slice(prompt_len - 1, length - 1)
    w[:, :, queries, hot_pos] = 3.0
    w[:, :, queries, prefix:prefix + n_img] += 0.1
    w = w / w.sum(-1, keepdim=True)
    return w, queries, image.numpy()


def test_reduce_and_back_project_synthetic_tensor():
    w, queries, image = _synthetic_attention()
    per_token, mass = reduce_attention(list(w[:, None]), queries, image)   # (1, heads, L, L) per layer
    assert per_token.shape == (16,) and 0 < mass < 1
    grid = (per_token / per_token.sum()).reshape(4, 4)
    assert np.unravel_index(grid.argmax(), grid.shape) == (1, 2)
    assert normalised_entropy(grid) < 0.6
    dense = back_project(grid, 112, 112)
    assert dense.sum() == pytest.approx(1.0)
    block = np.zeros((112, 112), bool)
    block[28:56, 56:84] = True                                  # merged cell (1, 2) at 28 px per cell
    assert mask_share(dense, block) == pytest.approx(grid[1, 2])
    # Sizes that do not divide by the grid keep the total and each cell's own mass.
    odd = back_project(grid, 101, 130)
    assert odd.sum() == pytest.approx(1.0)
    rows = np.minimum(np.arange(101) * 4 // 101, 3)
    cols = np.minimum(np.arange(130) * 4 // 130, 3)
    assert odd[np.ix_(rows == 1, cols == 2)].sum() == pytest.approx(grid[1, 2])


def test_lesion_share_uniform_map_is_chance_and_focused_map_beats_it():
    mask = lesion_disc(112, 112, cx=70.0, cy=42.0, radius=14.0)
    assert mask[42, 70] and not mask[0, 0]
    uniform = back_project(np.full((4, 4), 1 / 16), 112, 112)
    assert mask_share(uniform, mask) == pytest.approx(mask.mean())
    focused = np.zeros((4, 4))
    focused[1, 2] = 1.0                                          # the cell holding the disc centre
    assert mask_share(back_project(focused, 112, 112), mask) > 5 * mask.mean()


def test_lesion_geometry_and_scores():
    attrs = pd.DataFrame({"md5hash": ["a", "b"], "lesion_cx": [10.0, 20.0], "lesion_cy": [5.0, 6.0],
                          "lesion_radius_px": [3.0, 4.0]})
    assert lesion_geometry(attrs, ["b", "zzz"]) == {"b": {"cx": 20.0, "cy": 6.0, "radius": 4.0}}
    assert lesion_geometry(None, ["a"]) == {} and lesion_geometry(attrs.drop(columns="lesion_cx"), ["a"]) == {}
    exp = Explanation("a", '{"diagnoses":["x"]}', np.full((2, 2), 0.25), 1.0, 0.2)
    with_geo = score_explanation(exp, (40, 40), {"cx": 10.0, "cy": 10.0, "radius": 5.0}, 1.0)
    without = score_explanation(exp, (40, 40), None, 1.0)
    assert with_geo["lesion_share"] == pytest.approx(with_geo["lesion_chance"])
    assert "lesion_share" not in without
    summary = variant_summary([with_geo, without])
    assert summary["n_images"] == 2 and summary["mean_entropy"] == 1.0
    assert summary["mean_lesion_share"] == with_geo["lesion_share"]  # over images with geometry only


def test_config_is_strict():
    from pydantic import ValidationError

    assert AttentionConfig().method == "gradxinput" and AttentionConfig().attributes.endswith("attributes.parquet")
    for bad in ({"method": "rollout"}, {"n_images": 0}, {"lesion_margin": 0}, {"device": "tpu"}, {"typo": 1},
                {"separation_threshold": 0}):
        with pytest.raises(ValidationError):
            AttentionConfig(**bad)


# ---- a tiny model -----------------------------------------------------------------------------------

LABELS = ["melanoma", "nevocytic nevus", "psoriasis"]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from micro_models import micro_vl_config
    from skinflow.model.base import BaseModelConfig, build_tiny

    root = tmp_path_factory.mktemp("tiny_attention")
    tiny = micro_vl_config(text_layers=2)
    build_tiny(root / "model", BaseModelConfig(tiny=tiny, min_pixels=112 * 112, max_pixels=112 * 112), LABELS)
    return root / "model"


def _example(seed: int, image_id: str = "img") -> dict:
    from skinflow.model.prompts import DIAGNOSIS_TASK, messages

    pixels = np.random.default_rng(seed).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    return {"images": [Image.fromarray(pixels)], "prompt": messages(DIAGNOSIS_TASK, LABELS, "compact"),
            "image_id": image_id}


def test_tiny_model_hooks_match_output_attentions(tiny_dir):
    from skinflow.eval.attention import _prompt_inputs, _sequence_inputs
    from skinflow.model.base import load_model

    model, processor = load_model(tiny_dir)
    use_eager_text_attention(model)
    model.eval()
    example = _example(0)
    exp = explain_image(model, processor, example, "attention", max_new_tokens=6)
    assert exp.grid.shape == (4, 4) and exp.grid.sum() == pytest.approx(1.0)
    assert 0.0 <= exp.entropy <= 1.0 and 0.0 < exp.image_attention < 1.0
    assert exp.extra["answer_tokens"] >= 1

    # The reference: transformers' own output_attentions over the same prompt + answer.
    inputs = _prompt_inputs(processor, example, torch.device("cpu"))
    prompt_len = inputs["input_ids"].shape[1]
    with torch.no_grad():
        full = model.generate(**inputs, max_new_tokens=6, do_sample=False,
                              pad_token_id=processor.tokenizer.pad_token_id)
        out = model(**_sequence_inputs(inputs, full, processor.image_token_id), output_attentions=True)
    assert len(out.attentions) == model.config.text_config.num_hidden_layers
    positions = image_token_positions(inputs["input_ids"][0].numpy(), processor.image_token_id, (4, 4))
    reference, mass = reduce_attention(out.attentions, slice(prompt_len - 1, full.shape[1] - 1), positions)
    assert np.allclose(reference / reference.sum(), exp.grid.ravel(), atol=1e-6)
    assert mass == pytest.approx(exp.image_attention, abs=1e-6)
    # Deterministic: greedy answer, no sampling anywhere.
    again = explain_image(model, processor, example, "attention", max_new_tokens=6)
    assert again.answer == exp.answer and np.array_equal(again.grid, exp.grid)


def test_tiny_model_gradient_relevance_and_sdpa_refusal(tiny_dir):
    from skinflow.model.base import load_model

    model, processor = load_model(tiny_dir)
    model.eval()
    grad = explain_image(model, processor, _example(1), "gradxinput", max_new_tokens=4)
    assert grad.grid.shape == (4, 4) and np.isfinite(grad.grid).all() and (grad.grid >= 0).all()
    assert grad.image_attention is None and 0.0 <= grad.entropy <= 1.0
    assert all(p.requires_grad for p in model.parameters())        # flags restored
    with pytest.raises(RuntimeError, match="eager"):
        explain_image(model, processor, _example(1), "attention", max_new_tokens=2)  # still sdpa


def test_attention_stage_end_to_end(tiny_dir, tmp_path, monkeypatch):
    import shutil

    from pipelines import attention as stage

    monkeypatch.chdir(tmp_path)
    (tmp_path / "images").mkdir()
    ids = [f"{k:032x}" for k in (3, 1, 2, 4)]
    for k, image_id in enumerate(ids):
        _example(k)["images"][0].save(tmp_path / "images" / f"{image_id}.png")
    manifest = pd.DataFrame({"image_id": ids, "label": ["melanoma", "psoriasis", "melanoma", "psoriasis"],
                             "split": ["test", "test", "test", "train"], "image_root": "images",
                             "rel_path": [f"{i}.png" for i in ids]})
    (tmp_path / "data/interim").mkdir(parents=True)
    manifest.to_parquet(tmp_path / "data/manifest.parquet")
    pd.DataFrame({"label": LABELS, "nine_partition_label": ["a", "b", "c"],
                  "three_partition_label": ["malignant", "benign", "non-neoplastic"]}).to_csv(
        tmp_path / "data/interim/taxonomy.csv", index=False)
    pd.DataFrame({"md5hash": ids, "lesion_cx": 32.0, "lesion_cy": 20.0, "lesion_radius_px": 8.0}).to_parquet(
        tmp_path / "attrs.parquet")
    shutil.copytree(tiny_dir, tmp_path / "models/warmup")
    (tmp_path / "params.yaml").write_text(
        "attention:\n  n_images: 2\n  max_new_tokens: 3\n  attributes: attrs.parquet\n  device: cpu\n"
        "  cell_px: 64\n", encoding="utf-8")

    summary = stage.main(["other=models/warmup"])
    assert summary["image_ids"] == [ids[1], ids[2]]                 # first two test ids, sorted
    assert set(summary["variants"]) == {"warmup", "other"} and summary["variant_order"] == ["warmup", "other"]
    assert [m["variant"] for m in summary["missing_variants"]] == ["stage1", "stage2"]
    for variant in summary["variants"].values():
        assert 0 <= variant["mean_entropy"] <= 1 and variant["mean_lesion_share"] is not None
    assert summary["variants"]["warmup"]["mean_entropy"] == summary["variants"]["other"]["mean_entropy"]
    assert json.loads((tmp_path / "metrics/attention.json").read_text()) == summary
    maps = json.loads((tmp_path / "reports/attention_maps.json").read_text())
    assert len(maps["variants"]["warmup"]["images"]) == 2 and len(maps["variants"]["warmup"]["images"][0]["grid"]) == 4
    png = Image.open(io.BytesIO((tmp_path / "reports/attention.png").read_bytes()))
    assert png.format == "PNG" and png.width >= 3 * 64 and png.height >= 2 * 64

    # No geometry: the share is skipped and says so; an unknown-only variant list is an error.
    (tmp_path / "params.yaml").write_text("attention:\n  n_images: 1\n  max_new_tokens: 2\n  attributes: null\n"
                                          "  device: cpu\n  cell_px: 64\n", encoding="utf-8")
    plain = stage.main(["--only", "w=models/warmup"])
    assert plain["lesion_geometry"].startswith("unavailable") and plain["variants"]["w"]["mean_lesion_share"] is None
    with pytest.raises(SystemExit):
        stage.main(["--only", "x=models/none"])
    with pytest.raises(SystemExit):
        stage.main(["not-a-pair"])


def test_gradient_maps_separate_two_different_models_but_not_one_model_twice(tiny_dir):
    """Why the stage defaults to gradxinput: on this micro model the decoder's attention over image tokens stays
    within 0.003 TV of uniform even for a completely different vision tower, so it cannot show a difference
    between models; gradient x input reaches the image through the whole model and does."""
    from skinflow.eval.attention import map_separation
    from skinflow.model.base import load_model

    model, processor = load_model(tiny_dir)
    other, _ = load_model(tiny_dir)
    torch.manual_seed(1)
    with torch.no_grad():  # a deliberately different model: another vision tower
        for param in other.model.visual.parameters():
            param.normal_(0.0, 0.5)
    for m in (model, other):
        use_eager_text_attention(m)
        m.eval()
    examples = [_example(seed, f"img{seed}") for seed in range(3)]

    def grids(m):
        return [explain_image(m, processor, ex, "gradxinput", max_new_tokens=4).grid for ex in examples]

    first = grids(model)
    apart = map_separation({"model": first, "other": grids(other)}, threshold=0.05)
    assert apart["separates"] and apart["pairwise_tv"]["model vs other"] > 0.05, apart
    same = map_separation({"model": first, "again": grids(model)}, threshold=0.05)
    assert not same["separates"] and same["pairwise_tv"]["model vs again"] == 0.0
    assert "do not separate" in same["verdict"]
