"""CFA baseline: each loss term by hand, the head's training, both encoders, and the stage end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
import yaml

from skinflow.baselines.cfa import (
    CFAConfig, CFAHead, align_term, cached_features, calib_term, cfa_loss, class_balance_weights,
    focal_term, load_encoder, load_head, predict, train_head,
)
from skinflow.config import ConfigError, load_section

TAXONOMY = pd.DataFrame([
    ("melanoma", "malignant melanoma", "malignant"),
    ("nevocytic nevus", "benign melanocyte", "benign"),
    ("psoriasis", "inflammatory", "non-neoplastic"),
], columns=["label", "nine_partition_label", "three_partition_label"])
COLOURS = {"melanoma": (60, 30, 20), "nevocytic nevus": (200, 150, 90), "psoriasis": (220, 60, 80)}
SPLIT_SIZES = {"train": 12, "val": 4, "test": 6}  # images per class


# ---- loss terms by hand -------------------------------------------------------------------------


def test_class_balance_weights_by_hand():
    assert class_balance_weights([1, 3], "inverse_frequency").tolist() == pytest.approx([1.5, 0.5])
    # effective number, beta 0.5: (1-b)/(1-b^1) = 1 and (1-b)/(1-b^3) = 0.5/0.875; sum normalised to 2
    raw = torch.tensor([1.0, 0.5 / 0.875])
    expected = (2 * raw / raw.sum()).tolist()
    assert class_balance_weights([1, 3], "effective_number", 0.5).tolist() == pytest.approx(expected)
    assert class_balance_weights([5, 500], "none").tolist() == [1.0, 1.0]
    assert class_balance_weights([0, 1], "inverse_frequency").tolist() == [1.0, 1.0]  # 0 counts as 1
    with pytest.raises(ValueError):
        class_balance_weights([1, 2], "sqrt")


def test_focal_with_gamma_zero_is_class_weighted_cross_entropy():
    torch.manual_seed(0)
    logits, labels = torch.randn(7, 4), torch.tensor([0, 1, 2, 3, 3, 2, 1])
    alpha = torch.tensor([0.5, 1.0, 1.5, 1.0])
    expected = F.cross_entropy(logits, labels, weight=alpha, reduction="none").mean()
    assert focal_term(logits, labels, alpha, gamma=0.0).item() == pytest.approx(expected.item())
    assert focal_term(logits, labels, None, gamma=0.0).item() == pytest.approx(F.cross_entropy(logits, labels).item())


def test_focal_down_weights_easy_examples_by_hand():
    logits, labels = torch.tensor([[0.0, math.log(3)]]), torch.tensor([1])  # p_y = 3/4
    expected = -(0.25 ** 2) * math.log(0.75)
    assert focal_term(logits, labels, None, gamma=2.0).item() == pytest.approx(expected)
    alpha = torch.tensor([2.0, 0.5])
    assert focal_term(logits, labels, alpha, gamma=2.0).item() == pytest.approx(0.5 * expected)


def test_align_on_a_two_by_two_case_by_hand():
    a, b, c, d = 2.0, 0.5, 1.0, 3.0          # rows: images 0, 1; columns: class texts 0, 1
    logits, labels = torch.tensor([[a, b], [c, d]]), torch.tensor([0, 1])

    def nll(x, *others):
        return -math.log(math.exp(x) / sum(math.exp(v) for v in (x, *others)))

    image_to_text = (nll(a, b) + nll(d, c)) / 2
    text_to_image = (nll(a, c) + nll(d, b)) / 2
    assert align_term(logits, labels).item() == pytest.approx((image_to_text + text_to_image) / 2)
    swapped = align_term(logits[[1, 0]], labels[[1, 0]])  # batch order does not matter
    assert swapped.item() == pytest.approx(align_term(logits, labels).item())


def test_align_text_side_floor_is_log_of_positives():
    # Two images of class 0 with equal scores: each is half of the text's distribution.
    logits, labels = torch.tensor([[5.0, -5.0], [5.0, -5.0]]), torch.tensor([0, 0])
    image_to_text = F.cross_entropy(logits, labels).item()
    assert align_term(logits, labels).item() == pytest.approx((image_to_text + math.log(2)) / 2)


def test_calibration_term_by_hand_and_zero_when_confident_and_correct():
    probs, labels = torch.tensor([[0.7, 0.3], [0.4, 0.6]]), torch.tensor([0, 1])
    # mean probabilities (0.55, 0.45) vs frequencies (0.5, 0.5)
    assert calib_term(probs.log(), labels).item() == pytest.approx(0.05)
    confident = torch.tensor([[30.0, -30.0, -30.0], [-30.0, 30.0, -30.0], [-30.0, -30.0, 30.0]])
    assert calib_term(confident, torch.tensor([0, 1, 2])).item() == pytest.approx(0.0, abs=1e-12)
    wrong = calib_term(confident, torch.tensor([1, 2, 0])).item()
    assert wrong == pytest.approx(0.0, abs=1e-12)  # MDCA compares class totals: permuted errors cancel
    assert calib_term(confident, torch.tensor([0, 0, 0])).item() == pytest.approx(4 / 9)


def test_cfa_loss_total_is_the_weighted_sum_and_differentiable():
    torch.manual_seed(1)
    logits = torch.randn(6, 3, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    alpha = torch.tensor([1.2, 0.9, 0.9])
    terms = cfa_loss(logits, labels, alpha, gamma=1.5, focal_weight=0.7, align_weight=0.2, calib_weight=3.0)
    assert set(terms) == {"focal", "align", "calib", "total"}
    assert terms["focal"].item() == pytest.approx(focal_term(logits, labels, alpha, 1.5).item())
    expected = 0.7 * terms["focal"] + 0.2 * terms["align"] + 3.0 * terms["calib"]
    assert terms["total"].item() == pytest.approx(expected.item())
    terms["total"].backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    only_focal = cfa_loss(logits, labels, alpha, 1.5, 1.0, 0.0, 0.0)
    assert only_focal["total"].item() == pytest.approx(only_focal["focal"].item())


def test_head_logits_are_bounded_by_the_temperature():
    head = CFAHead(image_dim=5, text_dim=3, proj_dim=4, temperature=0.25)
    logits = head(torch.randn(8, 5) * 100, torch.randn(2, 3))
    assert logits.shape == (8, 2) and logits.abs().max() <= 4.0 + 1e-5


# ---- config -------------------------------------------------------------------------------------


def test_config_needs_exactly_one_encoder_and_cls_only_for_clip(tmp_path):
    with pytest.raises(ValueError, match="exactly one"):
        CFAConfig(vision_from="models/base", clip_dir="clip")
    with pytest.raises(ValueError, match="exactly one"):
        CFAConfig(vision_from=None)
    with pytest.raises(ValueError, match="CLS"):
        CFAConfig(pooling="cls")
    assert CFAConfig(vision_from=None, clip_dir="clip", pooling="cls").pooling == "cls"
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"cfa_baseline": {"focal_gama": 2}}))
    with pytest.raises(ConfigError, match="focal_gama"):
        load_section("cfa_baseline", CFAConfig, params)


# ---- training on features -----------------------------------------------------------------------


def _clusters(n_per_class: int, seed: int, dim: int = 12, classes: int = 4):
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=torch.Generator().manual_seed(99)) * 3
    labels = torch.arange(classes).repeat_interleave(n_per_class)
    return centres[labels] + torch.randn(len(labels), dim, generator=gen), labels


def test_training_is_deterministic_and_learns_separable_features():
    x, y = _clusters(20, seed=0)
    vx, vy = _clusters(5, seed=1)
    tx, ty = _clusters(10, seed=2)
    texts = torch.randn(4, 6, generator=torch.Generator().manual_seed(3))
    cfg = CFAConfig(epochs=40, batch_size=16, lr=0.01, patience=None, seed=5)
    head, history, summary = train_head(x, y, texts, cfg, vx, vy)
    again, _, _ = train_head(x, y, texts, cfg, vx, vy)
    for name, tensor in head.state_dict().items():
        assert torch.equal(tensor, again.state_dict()[name]), name
    probs, ranked = predict(head, tx, texts, ["a", "b", "c", "d"])
    assert (probs.argmax(1) == ty.numpy()).mean() > 0.9     # chance is 0.25
    assert np.allclose(probs.sum(1), 1) and all(len(r) == 4 and r[0] == "abcd"[p]
                                                 for r, p in zip(ranked, probs.argmax(1)))
    assert len(history) == 40 and history[-1]["focal"] < history[0]["focal"]
    assert set(summary["final_losses"]) == {"focal", "align", "calib", "total"}
    other, _, _ = train_head(x, y, texts, cfg.model_copy(update={"seed": 6}), vx, vy)
    assert not torch.equal(other.image_proj.weight, head.image_proj.weight)


def test_early_stopping_keeps_the_best_validation_epoch():
    x, y = _clusters(10, seed=0)
    vx, vy = _clusters(3, seed=1)
    texts = torch.randn(4, 6)
    cfg = CFAConfig(epochs=200, batch_size=8, lr=0.05, patience=3)
    _, history, summary = train_head(x, y, texts, cfg, vx, vy)
    best = min(history, key=lambda r: r["val_nll"])
    assert summary["best_epoch"] == best["epoch"]
    assert len(history) == min(200, summary["best_epoch"] + 3)


# ---- encoders and the stage on tiny synthetic images --------------------------------------------


def _write_images(root: Path, seed: int = 0) -> pd.DataFrame:
    """Solid-colour squares with pixel noise, one colour per class: separable by any encoder."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    rows = []
    for label, colour in COLOURS.items():
        for split, count in SPLIT_SIZES.items():
            for k in range(count):
                pixels = np.clip(np.array(colour) + rng.normal(0, 12, (40, 40, 3)), 0, 255).astype(np.uint8)
                image_id = f"{label.replace(' ', '_')}-{split}-{k}"
                Image.fromarray(pixels).save(root / "images" / f"{image_id}.png")
                rows.append({"image_id": image_id, "label": label, "split": split,
                             "fitzpatrick_scale": int(rng.integers(1, 7)), "image_root": str(root / "images"),
                             "rel_path": f"{image_id}.png"})
    frame = pd.DataFrame(rows)
    frame["label"] = frame["label"].astype("string")
    frame["fitzpatrick_scale"] = frame["fitzpatrick_scale"].astype("Int64")
    return frame


def _tiny_clip(path: Path) -> None:
    from transformers import CLIPConfig, CLIPModel
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    from skinflow.model.base import train_tokenizer

    tokenizer = train_tokenizer(list(COLOURS) * 4, 300)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=32, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.pad_token_id),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16)
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(path)


def test_clip_encoder_features_are_cached_and_separable(tmp_path):
    from skinflow.data.manifest import image_paths

    rows = _write_images(tmp_path / "data")
    _tiny_clip(tmp_path / "clip")
    cfg = CFAConfig(vision_from=None, clip_dir=str(tmp_path / "clip"), pooling="cls",
                    text_template="a photo of {label}", epochs=60, lr=0.01, patience=None)
    encoder = load_encoder(cfg)
    paths = image_paths(rows)
    features, hit = cached_features(encoder, paths, tmp_path / "cache", batch_size=16)
    assert not hit and features.shape == (len(rows), 16)
    again, hit = cached_features(encoder, paths, tmp_path / "cache", batch_size=16)
    assert hit and torch.equal(features, again)
    texts = encoder.text_embeddings(list(COLOURS))
    assert texts.shape == (3, 16)

    index = {label: i for i, label in enumerate(COLOURS)}
    y = torch.tensor([index[label] for label in rows["label"]])
    train, test = [torch.tensor((rows["split"] == s).to_numpy()) for s in ("train", "test")]
    head, _, _ = train_head(features[train], y[train], texts, cfg)
    probs, _ = predict(head, features[test], texts, list(COLOURS))
    assert (probs.argmax(1) == y[test].numpy()).mean() >= 0.8  # chance is 1/3

    Path(paths[0]).write_bytes(Path(paths[1]).read_bytes())  # an edited image invalidates the cache
    assert not cached_features(encoder, paths, tmp_path / "cache", batch_size=16)[1]


def test_stage_end_to_end_on_a_tiny_qwen_tower(tmp_path, monkeypatch):
    from pipelines.cfa_baseline import main
    from micro_models import micro_vl_config
    from skinflow.model.base import BaseModelConfig, build_tiny

    rows = _write_images(tmp_path / "data")
    (tmp_path / "data/interim").mkdir(parents=True)
    rows.to_parquet(tmp_path / "data/manifest.parquet")
    TAXONOMY.to_csv(tmp_path / "data/interim/taxonomy.csv", index=False)
    tiny = micro_vl_config()
    build_tiny(tmp_path / "models/base", BaseModelConfig(tiny=tiny, min_pixels=56 * 56, max_pixels=56 * 56),
               list(TAXONOMY["label"]))
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"cfa_baseline": {
        "vision_from": "models/base", "epochs": 80, "lr": 0.01, "batch_size": 12, "patience": 30,
        "n_boot": 50, "pooling": "mean"}, "runtime": {"cfa_baseline": {"cache_dir": ".cache/cfa"}}}))
    monkeypatch.chdir(tmp_path)

    result = main(["--params", str(params)])

    report = json.loads(Path("metrics/baselines/cfa-s0.json").read_text())
    assert report["n"] == 18 and report["n_train"] == 36 and report["n_val"] == 12
    assert report["accuracy"] >= 0.8                          # chance is 1/3
    assert 0 <= report["ece"] <= 1 and report["macro_auc_ovr"] > 0.8
    assert set(report["final_losses"]) == {"focal", "align", "calib", "total"}
    # the loss-term ablation: every variant scored on the validation split, the full loss as the run itself
    ablation = {row["variant"]: row for row in report["loss_term_ablation_val"]}
    assert list(ablation) == ["all", "no_focal", "no_align", "no_calib", "focal_only"]
    assert all(row["val_n"] == 12 and 0 <= row["val_ece"] <= 1 for row in ablation.values())
    assert ablation["focal_only"]["align_weight"] == ablation["focal_only"]["calib_weight"] == 0.0
    assert ablation["all"]["best_epoch"] == report["best_epoch"]   # same seed, same data: the reported head
    # run facts live apart from the hashed results (skinflow.timing)
    assert "train_seconds" not in report and "feature_cache_hit" not in report["encoder"]
    timing = json.loads(Path("metrics/timing/baselines/cfa-s0.json").read_text())
    assert timing["train_seconds"] > 0 and not timing["encoder"]["feature_cache_hit"]
    saved = json.loads(Path("models/cfa-s0/config.json").read_text())
    assert "feature_cache_hit" not in json.dumps(saved)         # the model's bytes may not depend on the cache

    curve = pd.read_csv("metrics/baselines/cfa-s0_curve.csv")
    assert {"epoch", "focal", "align", "calib", "total", "val_nll"} <= set(curve.columns)
    assert len(curve) == report["epochs_run"]
    reliability = pd.read_csv("metrics/baselines/cfa-s0_reliability.csv")
    assert list(reliability.columns) == ["bin_low", "bin_high", "confidence", "accuracy", "share"]
    assert reliability["share"].sum() == pytest.approx(1.0) and (reliability["confidence"] <= reliability["bin_high"]).all()
    ece = (reliability["share"] * (reliability["accuracy"] - reliability["confidence"]).abs()).sum()
    assert ece == pytest.approx(report["ece"], abs=1e-5)     # the plot and the reported ECE are one binning

    clinical = json.loads(Path("metrics/eval/cfa-s0.json").read_text())
    assert clinical["variant"] == "cfa-s0" and clinical["seed"] == 0 and clinical["model"] == "models/cfa-s0"
    # Three classes: the evaluation's top-k depth is min(6, classes) = 3.
    assert clinical["n_images"] == 18 and clinical["n_classes"] == 3 and clinical["k"] == 3
    overall = clinical["overall"]
    # Rank 1 is the arg-max class, mapped exactly: the VLM path's top-1 is the classifier's accuracy.
    assert overall["top1_exact"]["value"] == pytest.approx(report["accuracy"])
    assert overall["format_compliance"]["value"] == 1.0 and overall["oov_rate"]["value"] == 0.0
    assert overall["top3_exact"]["value"] == 1.0              # every list names all three classes
    assert result["eval"]["overall"] == overall

    assert sorted(p.name for p in Path("models/cfa-s0").iterdir()) == ["config.json", "head.safetensors"]
    head, texts, labels = load_head("models/cfa-s0")
    assert labels == sorted(TAXONOMY["label"])
    predictions = pd.read_parquet("data/eval/cfa-s0/predictions.parquet")
    stored = np.stack(predictions["probabilities"].to_numpy())
    assert stored.shape == (18, 3) and np.allclose(stored.sum(1), 1, atol=1e-5)
    # The saved head alone (no pickle, no training state) reproduces the stored probabilities.
    from safetensors.torch import load_file

    (cache,) = Path(".cache/cfa").glob("features-*.safetensors")
    ordered = rows.sort_values("image_id").reset_index(drop=True)
    test_features = load_file(str(cache))["features"][torch.tensor((ordered["split"] == "test").to_numpy())]
    reloaded, _ = predict(head, test_features, texts, labels)
    assert list(predictions["image_id"]) == list(ordered.loc[ordered["split"] == "test", "image_id"])
    assert np.allclose(reloaded, stored, atol=1e-6)

    # A second run reuses the cached features and reproduces the metrics exactly.
    again = main(["--params", str(params)])
    assert again["classification"]["encoder"]["feature_cache_hit"]
    assert again["classification"]["accuracy"] == report["accuracy"]
    assert again["classification"]["ece"] == pytest.approx(report["ece"], abs=1e-9)
