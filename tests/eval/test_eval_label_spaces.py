"""Evaluation on label spaces other than Fitzpatrick17k: HAM10000's 7 classes, a 3-class space,
out-of-vocabulary strings and equivalence groups that only partly exist in a taxonomy."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from skinflow.eval.equivalence import LabelSpace
from skinflow.eval.evaluate import EvalConfig, _model_key, evaluate_model
from skinflow.eval.metrics import compute_metrics, effective_k, metric_definitions
from skinflow.eval.predictions import map_predictions

HAM_CSV = Path(__file__).resolve().parents[2] / "skinflow/data/taxonomies/ham10000.csv"
HAM_CODES = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")  # HAM10000's dx values


def dx(*items: str) -> str:
    return json.dumps({"diagnoses": list(items)})


def raw_frame(rows) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["image_id", "label", "fitzpatrick_scale", "raw_output"])


@pytest.fixture
def ham7() -> LabelSpace:
    table = pd.read_csv(HAM_CSV, dtype=str)
    return LabelSpace(table[table["code"].isin(HAM_CODES)])  # the shipped equivalence table


def test_ham_seven_classes_codes_and_groups(ham7):
    assert ham7.n_classes == 7 and effective_k(ham7.n_classes) == 6
    expect = {
        "AKIEC": ("actinic keratosis", "alias"),           # the dataset's own codes map
        "bkl": ("benign keratosis", "alias"),
        "nv": ("nevocytic nevus", "alias"),
        "Vascular lesion": ("vascular lesion", "exact"),
        "malignant melanoma": ("melanoma", "equivalent"),  # group member absent from HAM
        "melanocytic nevus": ("nevocytic nevus", "alias"),  # table alias (melanocytic naevus)
        "Basal cell carcinoma, morpheiform": ("basal cell carcinoma", "equivalent"),
        "superficial spreading melanoma": ("melanoma", "alias"),  # alias whose target follows its group
        "BCC": ("basal cell carcinoma", "alias"),
        "psoriasis": (None, "oov"),                         # a Fitzpatrick17k label HAM does not have
        "squamous cell carcinoma": (None, "oov"),           # ISIC 2019 only: not in the 7-class space
    }
    for text, (label, rule) in expect.items():
        match = ham7.map(text)
        assert (match.label, match.rule) == (label, rule), text


def test_shipped_ham_table_with_repeated_label_loads():
    # ham10000.csv lists actinic keratosis under two codes (akiec, ak) and has ISIC's scc: 8 labels.
    space = LabelSpace(pd.read_csv(HAM_CSV, dtype=str))
    assert space.n_classes == 8 and len(set(space.labels)) == 8
    assert space.map("ak").label == space.map("akiec").label == "actinic keratosis"
    assert space.is_malignant("actinic keratosis") and not space.is_malignant("benign keratosis")


def test_ham_metrics_hand_computed(ham7):
    raw = raw_frame([
        ("h1", "melanoma", -1, dx("malignant melanoma", "nv")),         # equivalent rule -> exact hit
        ("h2", "nevocytic nevus", -1, dx("akiec", "bkl", "df", "vasc", "bcc", "nv")),  # over-call; nv 6th
        ("h3", "basal cell carcinoma", -1, dx("benign keratosis", "psoriasis")),  # dangerous; OOV item
        ("h4", "vascular lesion", -1, "no idea"),                       # unparseable
        ("h5", "dermatofibroma", -1, dx("df")),                         # code hit
    ])
    mapped, log = map_predictions(raw, ham7)
    result = compute_metrics(mapped, ham7, n_boot=0)
    m = result["overall"]
    assert (result["k"], result["n_classes"]) == (6, 7) and set(m) == set(metric_definitions(6))
    assert m["top1_exact"]["value"] == pytest.approx(2 / 5)
    assert m["top6_exact"]["value"] == pytest.approx(3 / 5)
    assert m["malignant_miss_at1"]["value"] == pytest.approx(1 / 2)
    assert m["dangerous_error_rate"]["value"] == pytest.approx(1 / 2)
    assert m["over_call_rate"]["value"] == pytest.approx(1 / 3)
    assert m["format_compliance"]["value"] == pytest.approx(4 / 5)
    assert m["oov_rate"]["value"] == pytest.approx(1 / 11)
    # HAM has no skin types: every image lands in "unknown", none is dropped.
    assert result["n_images_by_fitzpatrick"]["unknown"] == 5
    assert set(log["rule"]) == {"equivalent", "alias", "exact", "oov"}


def test_three_class_space_top3_and_oov_slots(tmp_path):
    taxonomy = pd.DataFrame([("melanoma", "malignant melanoma", "malignant"),
                             ("nevocytic nevus", "benign melanocyte", "benign"),
                             ("psoriasis", "inflammatory", "non-neoplastic")],
                            columns=["label", "nine_partition_label", "three_partition_label"])
    space = LabelSpace(taxonomy)
    raw = raw_frame([
        ("a", "psoriasis", 2, dx("weird rash", "blue thing", "melanoma", "psoriasis")),  # 4th: miss at 3
        ("b", "psoriasis", 2, dx("melanoma", "malignant melanoma", "mole", "psoriasis")),  # same label: one slot
        ("c", "melanoma", 2, dx("psoriasis", "mole", "melanoma")),
    ])
    result = compute_metrics(map_predictions(raw, space)[0], space, n_boot=50, seed=1)
    m = result["overall"]
    assert result["k"] == 3 and "top3_exact" in m and "top6_exact" not in m
    assert m["top3_exact"]["value"] == pytest.approx(2 / 3)
    assert m["malignant_miss_at3"]["value"] == 0.0 and m["malignant_miss_at1"]["value"] == 1.0
    assert m["top3_exact"]["ci_low"] <= m["top3_exact"]["value"] <= m["top3_exact"]["ci_high"]
    for block in result["by_fitzpatrick"].values():
        assert set(block) == set(m)


@pytest.mark.parametrize("text", ["", "   ", "???", "12345", "näevus blau", "x" * 500, "melanoma!!" * 3,
                                  "not melanoma at all, really"])
def test_oov_strings_never_crash_and_never_hit(ham7, text):
    match = ham7.map(text)
    assert match.rule in {"exact", "alias", "equivalent", "fuzzy", "oov"}
    raw = raw_frame([("o", "melanoma", 3, dx(text) if text.strip() else dx("a", text))])
    mapped, log = map_predictions(raw, ham7)
    if match.label is None:
        m = compute_metrics(mapped, ham7, n_boot=0)["overall"]
        assert m["top6_exact"]["value"] == 0.0 and m["top6_grounded"]["value"] == 0.0


def test_equivalence_collapse_only_when_unambiguous(tmp_path):
    table = tmp_path / "eq.yaml"
    table.write_text("version: t/1\nequivalent:\n  - [melanoma, malignant melanoma, ssm]\n"
                     "aliases:\n  superficial spreading melanoma: ssm\n", encoding="utf-8")
    cols = ["label", "nine_partition_label", "three_partition_label"]
    one = LabelSpace(pd.DataFrame([("melanoma", "mm", "malignant")], columns=cols), table_path=table)
    assert one.map("SSM").label == "melanoma" and one.map("SSM").rule == "equivalent"
    assert one.map("superficial spreading melanoma").label == "melanoma"
    both = LabelSpace(pd.DataFrame([("melanoma", "mm", "malignant"), ("malignant melanoma", "mm", "malignant")],
                                   columns=cols), table_path=table)
    # Two members present: "ssm" could be either, so it stays out of vocabulary; they stay equivalent.
    assert both.map("ssm").label is None and both.map("superficial spreading melanoma").label is None
    assert both.equivalent("melanoma", "malignant melanoma") and not both.equivalent("melanoma", None)


def test_conflicting_partitions_rejected():
    cols = ["label", "nine_partition_label", "three_partition_label"]
    with pytest.raises(ValueError, match="partition"):
        LabelSpace(pd.DataFrame([("x", "a", "benign"), ("x", "b", "malignant")], columns=cols))


def test_evaluate_model_on_a_ham_style_manifest(tmp_path):
    """The whole evaluate path on a HAM-style manifest with its own taxonomy file: generation is
    served from the resumable progress file, so no model needs to run."""
    images = tmp_path / "images"
    images.mkdir()
    rows = [("ISIC_0000001", "melanoma"), ("ISIC_0000002", "nevocytic nevus"),
            ("ISIC_0000003", "dermatofibroma"), ("ISIC_0000004", None),  # missing truth: a miss, kept
            ("ISIC_0000005", "lentigo")]                                 # truth outside the taxonomy
    for image_id, _ in rows:
        Image.new("RGB", (40, 40), (180, 120, 100)).save(images / f"{image_id}.jpg")
    manifest = pd.DataFrame({
        "image_id": [r[0] for r in rows], "label": pd.array([r[1] for r in rows], dtype="string"),
        "split": "test", "image_root": str(images), "rel_path": [f"{r[0]}.jpg" for r in rows],
        "fitzpatrick_scale": pd.array([-1] * len(rows), dtype="Int64"),
    })
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "model.safetensors").write_bytes(b"stand-in weights")
    cfg = EvalConfig(progress_dir=str(tmp_path / "progress"), caption_images=0, n_boot=20,
                     taxonomy=str(HAM_CSV))
    outputs = {"ISIC_0000001": dx("mel", "nv"), "ISIC_0000002": dx("melanocytic nevus"),
               "ISIC_0000003": dx("vascular lesion", "df"), "ISIC_0000004": dx("nv"),
               "ISIC_0000005": dx("bkl")}
    progress = Path(cfg.progress_dir) / f"{_model_key(str(model_dir))}-diagnosis.jsonl"
    progress.parent.mkdir(parents=True)
    progress.write_text("".join(json.dumps({"image_id": i, "text": t}) + "\n" for i, t in outputs.items()))

    result = evaluate_model(str(model_dir), manifest, None, pd.DataFrame(), cfg)
    metrics = result["metrics"]
    assert metrics["n_images"] == 5 and metrics["n_classes"] == 8 and metrics["k"] == 6
    assert metrics["truth_out_of_taxonomy"] == 2
    assert metrics["overall"]["top1_exact"]["value"] == pytest.approx(2 / 5)
    assert metrics["overall"]["top6_exact"]["value"] == pytest.approx(3 / 5)
    assert list(result["mapped"]["image_id"]) == [r[0] for r in rows]
    assert result["match_log"]["truth"].isna().sum() == 1  # the missing truth, not the string "<NA>"
