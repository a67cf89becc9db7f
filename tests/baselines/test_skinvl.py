"""SkinVL baseline: the zero-shot answer rule, LoRA confined to the language model, the linear probe,
and a tiny end-to-end run (train a few steps, merge, reload with load_model, evaluate)."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from micro_models import micro_qwen2_5_vl
from skinflow.baselines.skinvl import (NO_CLASS, SkinVLConfig, add_lora, bleu_n, first_class, linear_probe,
                                       evaluate_start, language_model_targets, run_skinvl, zero_shot_scores,
                                       OPEN_QUESTIONS, InstructionMix, instruction_mix, qa_items, qa_scores)

CLASSES = ["acne", "acne vulgaris", "eczema", "lichen planus", "psoriasis"]


# ---- first class name found ----------------------------------------------------------------------


@pytest.mark.parametrize("answer, expected", [
    ("Acne vulgaris, most likely.", "acne vulgaris"),          # longer name wins at the same position
    ("acne, not acne vulgaris", "acne"),                        # earliest position wins over length
    ("PSORIASIS or eczema", "psoriasis"),                       # case-insensitive, first named
    ("I think it is eczema; psoriasis is less likely", "eczema"),
    ("lichen\n  planus", "lichen planus"),                      # any whitespace between words
    ('{"diagnoses":["eczema","acne"]}', "eczema"),              # JSON answers are searched as text
    ("acneiform eruption", NO_CLASS),                           # whole words only
    ("no idea", NO_CLASS),
    ("", NO_CLASS),
])
def test_first_class_name_found(answer, expected):
    assert first_class(answer, CLASSES) == expected


def test_unnamed_answers_count_as_wrong_and_are_counted():
    scores = zero_shot_scores(["eczema", "nothing useful", "Psoriasis."], ["eczema", "eczema", "psoriasis"], CLASSES)
    assert scores["accuracy"] == pytest.approx(2 / 3)
    assert scores["no_class_named"] == 1
    # eczema: precision 1, recall 1/2 -> F1 2/3; psoriasis: F1 1 -> macro 5/6
    assert scores["macro_f1"] == pytest.approx(5 / 6)


def test_bleu_orders_agree_with_project_bleu4():
    from skinflow.captions.metrics import bleu4

    hyps = ["a single pink papule on the face", "multiple white plaques on the trunk"]
    refs = ["a single pink nodule on the face", "multiple white scaly plaques on the trunk"]
    assert bleu_n(hyps, refs, 4) == pytest.approx(bleu4(hyps, refs))
    assert bleu_n(hyps, refs, 1) > bleu_n(hyps, refs, 2) > bleu_n(hyps, refs, 3) > 0
    assert bleu_n(refs, refs, 1) == pytest.approx(1.0)


# ---- LoRA only on the language model -------------------------------------------------------------


def _tiny_vl():
    return micro_qwen2_5_vl()


def test_lora_is_restricted_to_the_language_model():
    from peft import LoraConfig, get_peft_model

    # The hazard being guarded against: bare suffixes also wrap the vision MLPs.
    naive = get_peft_model(_tiny_vl(), LoraConfig(r=4, target_modules=["gate_proj", "up_proj", "down_proj"]))
    assert any("visual" in n and "lora_" in n for n, _ in naive.named_parameters())

    cfg = SkinVLConfig(lora_r=4, lora_alpha=2)
    model = add_lora(_tiny_vl(), cfg)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert not [n for n, p in model.named_parameters() if "visual" in n and ("lora_" in n or p.requires_grad)]
    wrapped = {n.split(".lora_")[0] for n in trainable}
    # every decoder projection of both layers, nothing else: 2 layers x 7 projections
    assert len(wrapped) == 2 * 7 and all(".language_model.layers." in n for n in wrapped)


def test_targets_fail_loudly_when_nothing_matches():
    with pytest.raises(ValueError, match="no language-model Linear"):
        language_model_targets(_tiny_vl(), ["qkv"])  # a vision-only name


# ---- linear probe --------------------------------------------------------------------------------


def _clusters(n_per_class: int, seed: int, spread: float):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1, (4, 16))
    x = np.concatenate([c + spread * rng.normal(0, 1, (n_per_class, 16)) for c in centres])
    y = [f"class{k}" for k in range(4) for _ in range(n_per_class)]
    return x, y


def test_linear_probe_recovers_separable_features():
    train_x, train_y = _clusters(20, seed=0, spread=0.1)
    test_x, test_y = _clusters(10, seed=0, spread=0.1)
    test_x = test_x + np.random.default_rng(1).normal(0, 0.1, test_x.shape)
    probe = linear_probe(train_x, train_y, test_x, test_y, [0.01, 1.0], folds=5, seed=0)
    assert probe["accuracy"] == 1.0 and probe["macro_f1"] == 1.0
    assert probe["folds"] == 5 and probe["best_c"] in (0.01, 1.0)

    # Same features, labels shuffled: nothing to recover, so the probe must not look good.
    shuffled = list(np.random.default_rng(2).permutation(train_y))
    noise = linear_probe(train_x, shuffled, test_x, test_y, [0.01, 1.0], folds=5, seed=0)
    assert noise["accuracy"] < 0.6


def test_linear_probe_folds_shrink_to_the_smallest_class_and_refuse_singletons():
    x, y = _clusters(3, seed=0, spread=0.1)
    assert linear_probe(x, y, x, y, [1.0], folds=5, seed=0)["folds"] == 3
    with pytest.raises(ValueError, match=">= 2 training images"):
        linear_probe(x[:4], ["a", "a", "a", "b"], x, y, [1.0], folds=5, seed=0)


# ---- end to end on a tiny model ------------------------------------------------------------------


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """Tiny SkinSynth (four conditions, so every class has train images) + a tiny random base."""
    from skinflow.data.corpus import captioned_skinsynth
    from skinflow.data.skinsynth import SynthConfig
    from micro_models import micro_vl_config
    from skinflow.model.base import BaseModelConfig, build_tiny

    root = tmp_path_factory.mktemp("skinvl")
    manifest, captions, taxonomy = captioned_skinsynth(root, SynthConfig.tiny(
        n_images=48, conditions=["acne vulgaris", "eczema", "psoriasis", "melanoma"]))
    build_tiny(root / "base", BaseModelConfig(tiny=micro_vl_config(), min_pixels=56 * 56, max_pixels=56 * 56),
               sorted(taxonomy["label"]))
    return root, manifest, captions, taxonomy


@pytest.mark.slow
def test_train_merge_reload_and_evaluate(workspace):
    from skinflow.io import write_json
    from skinflow.model.base import load_model

    root, manifest, captions, taxonomy = workspace
    cfg = SkinVLConfig(start_model=str(root / "base"), lora_r=4, lora_alpha=8, learning_rate=5e-3,
                       batch_size=4, train_limit=8, eval_images=6, max_new_tokens=12,
                       zero_shot_max_new_tokens=8, probe_c_grid=[1.0], probe_folds=2, logging_steps=1,
                       mix=InstructionMix(caption=1, open_qa=1, diagnosis=1, demographics=0.5))
    out = root / "skinvl"
    start_eval = evaluate_start(manifest, captions, taxonomy, cfg)
    summary = run_skinvl(str(out), manifest, captions, taxonomy, cfg, start_eval)
    write_json(root / "skinvl.json", summary)  # must be JSON-serialisable as written by the stage
    write_json(root / "skinvl_start.json", start_eval)

    by_type = summary["train"]["examples_by_type"]
    assert summary["train"]["examples"] == sum(by_type.values())
    assert summary["train"]["steps"] == math.ceil(summary["train"]["examples"] / 4)
    # the instruction mix: every image's description and diagnosis, one open question each, some skin types
    assert by_type["description"] == by_type["diagnosis"] == 8
    assert sum(by_type.get(k, 0) for k in OPEN_QUESTIONS) == 8 and by_type.get("fitzpatrick_type", 0) <= 8
    assert summary["train"]["loss_first"] is not None
    # a plain model directory, loadable like any other variant
    assert (out / "model.safetensors").exists() and (out / "chat_template.jinja").exists()
    assert json.loads((out / "skinflow_model.json").read_text())["prompt_style"] == "compact"
    assert not list(out.glob("adapter_*")), "LoRA must be merged, not saved as an adapter"
    model, _ = load_model(out)
    assert not any("lora" in n for n, _ in model.named_parameters())

    start, tuned = load_file(str(root / "base/model.safetensors")), load_file(str(out / "model.safetensors"))
    assert start.keys() == tuned.keys()
    changed = {k for k in start if not torch.equal(start[k], tuned[k])}
    # exactly the LoRA-targeted decoder projections moved (2 layers x 7); vision tower and the rest did not
    assert len(changed) == 2 * 7, sorted(changed)
    assert all(".layers." in k and k.endswith("proj.weight") and "visual" not in k for k in changed)
    assert summary["vision_weights_max_abs_change"] == 0.0  # frozen vision tower

    for part in (start_eval["base"], summary["skinvl"]):
        assert part["vqa"]["n"] == 6 and part["zero_shot"]["n"] == 6
        for key in ("bleu1", "bleu2", "bleu3", "bleu4", "rouge_l", "token_recall"):
            assert 0.0 <= part["vqa"][key] <= 1.0
        assert part["vqa"]["bertscore_f1"] is None and "bertscore_f1" in part["vqa"]["unavailable"]
        assert 0.0 <= part["zero_shot"]["accuracy"] <= 1.0
        probe = part["linear_probe"]
        assert probe["n_test"] == int((manifest["split"] == "test").sum()) and 0 <= probe["accuracy"] <= 1
        assert set(part["seconds"]) == {"vqa", "zero_shot", "linear_probe", "qa"}
        assert set(OPEN_QUESTIONS) <= set(part["vqa_by_type"]) and part["vqa_by_type"]["morphology"]["n"] == 6
        assert all(0 <= v["exact_match"] <= 1 for k, v in part["vqa_by_type"].items() if k != "description")
    assert start_eval["base"]["linear_probe"] == summary["skinvl"]["linear_probe"]  # same frozen features
    assert summary["delta"]["linear_probe.accuracy"] == 0.0
    assert summary["wall_seconds"] > 0
    assert isinstance(pd.DataFrame(summary["train"]["history"]), pd.DataFrame)
    # a start-model evaluation of another split (or other weights) is refused before any training
    with pytest.raises(ValueError, match="start-model evaluation"):
        run_skinvl(str(root / "refused"), manifest, captions, taxonomy, cfg, {**start_eval, "eval_split": "val"})
    assert not (root / "refused").exists()


# ---- the instruction mix ---------------------------------------------------------------------------


def _mix_rows():
    caption = json.dumps({"summary": "A single pink papule.", "primary_morphology": ["papule"], "colour": ["pink"],
                          "body_site": "arm", "border_definition": "well_defined"})
    rows = pd.DataFrame({"image_id": [f"i{k}" for k in range(40)], "label": ["acne"] * 39 + ["not a class"],
                         "fitzpatrick_scale": [3] * 20 + [-1] * 20})
    captions = pd.DataFrame({"image_id": [f"i{k}" for k in range(30)], "caption_json": [caption] * 30})
    return rows, captions


def test_qa_items_cover_what_the_dataset_knows():
    rows, captions = _mix_rows()
    items = qa_items(rows, captions, ["acne", "eczema"])
    kinds = pd.Series([i["type"] for i in items]).value_counts().to_dict()
    assert kinds == {"description": 30, **{k: 30 for k in OPEN_QUESTIONS}, "diagnosis": 39, "fitzpatrick_type": 20}
    answers = {i["type"]: i["answer"] for i in items if i["index"] == 0}
    assert answers["morphology"] == "papule" and answers["border"] == "well defined"
    assert answers["fitzpatrick_type"] == "Fitzpatrick type III" and answers["diagnosis"] == "acne"
    assert "acne; eczema" in next(i["question"] for i in items if i["type"] == "diagnosis")  # the category list


def test_instruction_mix_shares_are_seeded_and_independent():
    rows, captions = _mix_rows()
    items = qa_items(rows, captions, ["acne", "eczema"])
    full = instruction_mix(items, InstructionMix(caption=1, open_qa=1, diagnosis=1, demographics=1), seed=0)
    kinds = pd.Series([i["type"] for i in full]).value_counts().to_dict()
    assert kinds["description"] == 30 and kinds["diagnosis"] == 39 and kinds["fitzpatrick_type"] == 20
    assert sum(kinds.get(k, 0) for k in OPEN_QUESTIONS) == 30          # one open question per captioned image
    none = instruction_mix(items, InstructionMix(caption=0, open_qa=0, diagnosis=0, demographics=0), seed=0)
    assert none == []
    half = instruction_mix(items, InstructionMix(caption=1, open_qa=1, diagnosis=0.5, demographics=1), seed=3)
    assert half == instruction_mix(items, InstructionMix(caption=1, open_qa=1, diagnosis=0.5, demographics=1), seed=3)
    assert 5 < sum(i["type"] == "diagnosis" for i in half) < 34
    # changing the diagnosis share leaves every other task's draw alone (same seed)
    same_seed = instruction_mix(items, InstructionMix(caption=1, open_qa=1, diagnosis=0.5, demographics=1), seed=0)
    assert [i for i in same_seed if i["type"] != "diagnosis"] == [i for i in full if i["type"] != "diagnosis"]


def test_short_answers_score_exact_matches_after_folding():
    scores = qa_scores(["Papule.", "pink, brown", "arm"], ["papule", "pink, brown", "leg"])
    assert scores["exact_match"] == pytest.approx(2 / 3) and scores["n"] == 3
    assert 0 <= scores["bleu1"] <= 1 and 0 <= scores["rouge_l"] <= 1
