"""SkinSynth: file format, determinism, vocabulary, profiles and metadata noise rates."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from pydantic import ValidationError

from skinflow import vocab
from skinflow.data.skinsynth import (
    CONDITIONS, QC_VALUES, Condition, SynthConfig, generate, sample_attributes, taxonomy_frame,
)

HEADER = ("md5hash,fitzpatrick_scale,fitzpatrick_centaur,label,nine_partition_label,"
          "three_partition_label,qc,url,url_alphanum")
REAL_PARTITIONS = {
    "melanoma": ("malignant melanoma", "malignant"),
    "basal cell carcinoma": ("malignant epidermal", "malignant"),
    "squamous cell carcinoma": ("malignant epidermal", "malignant"),
    "actinic keratosis": ("malignant epidermal", "malignant"),
    "kaposi sarcoma": ("malignant dermal", "malignant"),
    "seborrheic keratosis": ("benign epidermal", "benign"),
    "nevocytic nevus": ("benign melanocyte", "benign"),
    "dermatofibroma": ("benign dermal", "benign"),
    "pyogenic granuloma": ("benign dermal", "benign"),
    **{label: ("inflammatory", "non-neoplastic") for label in (
        "psoriasis", "acne vulgaris", "eczema", "granuloma annulare", "vitiligo", "lichen planus",
        "urticaria")},
}
URL_RE = re.compile(r"^https://skinsynth\.example/atlas/clinical-pic/([a-z])/([a-z_\-]+)/([a-z_\-]+)(\d+)\.jpg$")
SCALARS = ("image_quality", "body_site", "border_definition", "border_regularity", "lesion_count",
           "distribution", "size_class")
SETS = ("primary_morphology", "secondary_features", "colour", "configuration")


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _read_csv(root: Path) -> pd.DataFrame:
    return pd.read_csv(root / "fitzpatrick17k.csv", dtype=str, keep_default_na=False)


def _norm(slug: str) -> str:
    """Fuzzy folder -> label key: drop separators and plural endings."""
    s = re.sub(r"[^a-z]", "", slug.lower())
    for plural, singular in (("nevi", "nevus"), ("keratoses", "keratosis"), ("s", "")):
        if s.endswith(plural) and not s.endswith(("sis", "us")):
            return s[: -len(plural)] + singular
    return s


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "skinsynth"
    summary = generate(out, SynthConfig.tiny(), workers=1)
    return out, summary


@pytest.fixture(scope="module")
def medium(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth400") / "skinsynth"
    cfg = SynthConfig(n_images=400, image_size=64, seed=3)
    generate(out, cfg, workers=1)
    return out, cfg


# --------------------------------------------------------------------------- file format

def test_tiny_layout_and_header(tiny):
    root, summary = tiny
    assert sorted(p.name for p in root.iterdir()) == [
        "attributes.parquet", "fitzpatrick17k.csv", "images", "taxonomy.csv"]
    raw = (root / "fitzpatrick17k.csv").read_bytes()
    assert b"\r" not in raw
    assert raw.decode("utf-8").split("\n", 1)[0] == HEADER
    csv = _read_csv(root)
    assert len(csv) == summary["n_images"] == 64
    counts = csv["label"].value_counts()
    assert set(counts.index) == set(REAL_PARTITIONS)
    assert counts.min() >= 3


def test_md5_and_images_decode(tiny):
    root, _ = tiny
    csv = _read_csv(root)
    files = sorted(p.name for p in (root / "images").iterdir())
    assert files == sorted(csv["md5hash"] + ".jpg")
    assert csv["md5hash"].is_unique
    for md5 in csv["md5hash"]:
        data = (root / "images" / f"{md5}.jpg").read_bytes()
        assert hashlib.md5(data).hexdigest() == md5
        with Image.open(root / "images" / f"{md5}.jpg") as im:
            assert (im.format, im.mode, im.size) == ("JPEG", "RGB", (64, 64))
            im.load()


def test_csv_values_and_urls(tiny):
    root, _ = tiny
    csv = _read_csv(root)
    for col in ("fitzpatrick_scale", "fitzpatrick_centaur"):
        assert set(csv[col].astype(int)) <= {-1, 1, 2, 3, 4, 5, 6}
    for _, row in csv.iterrows():
        assert (row.nine_partition_label, row.three_partition_label) == REAL_PARTITIONS[row.label]
        assert row.qc in {""} | {q for q, _ in QC_VALUES}
        if row.url == "":
            assert row.url_alphanum == ""
            continue
        m = URL_RE.match(row.url)
        assert m, row.url
        assert m.group(1) == m.group(2)[0] and m.group(2) == m.group(3)
        assert row.url_alphanum == re.sub(r"[^A-Za-z0-9]", "", row.url[:-4]) + ".jpg"
    urls = csv.loc[csv["url"] != "", "url"]
    assert urls.is_unique


def test_taxonomy_consistent(tiny):
    root, summary = tiny
    tax = pd.read_csv(root / "taxonomy.csv", dtype={"count": int}, keep_default_na=False)
    assert list(tax.columns) == ["label", "nine_partition_label", "three_partition_label", "count"]
    assert tax["label"].is_unique
    for _, row in tax.iterrows():
        assert (row.nine_partition_label, row.three_partition_label) == REAL_PARTITIONS[row.label]
        assert row["count"] == summary["label_counts"][row.label]
    assert tax["count"].sum() == 64
    frame = taxonomy_frame()
    assert dict(zip(frame["label"], zip(frame["nine_partition_label"], frame["three_partition_label"]))) \
        == REAL_PARTITIONS


def test_conditions_have_real_partitions():
    assert len(CONDITIONS) == 16
    for cond in CONDITIONS:
        assert isinstance(cond, Condition)
        assert (cond.nine_partition_label, cond.three_partition_label) == REAL_PARTITIONS[cond.label]


# --------------------------------------------------------------------------- attributes

def test_attributes_use_vocabulary(tiny):
    root, _ = tiny
    attrs = pd.read_parquet(root / "attributes.parquet")
    csv = _read_csv(root).set_index("md5hash")
    assert len(attrs) == len(csv) and set(attrs["md5hash"]) == set(csv.index)
    for _, row in attrs.iterrows():
        for field in SCALARS:
            assert row[field] in vocab.SCALAR_FIELDS[field], (field, row[field])
        for field in SETS:
            values = list(row[field])
            assert values, field
            assert values == sorted(set(values))
            assert set(values) <= set(vocab.SET_FIELDS[field]), (field, values)
        if "none" in row["secondary_features"]:
            assert list(row["secondary_features"]) == ["none"]
        assert row["fitzpatrick_type"] in vocab.FITZPATRICK_TYPE[:6]
        assert row["label"] == csv.loc[row["md5hash"], "label"]
        scale = int(csv.loc[row["md5hash"], "fitzpatrick_scale"])
        if scale != -1:
            assert vocab.fitzpatrick_roman(scale) == row["fitzpatrick_type"]
        assert 0 <= row["lesion_cx"] < 64 and 0 <= row["lesion_cy"] < 64 and row["lesion_radius_px"] > 0
        assert set(row["clutter"]) <= {"hair", "ruler", "shadow", "vignette", "clothing", "blur",
                                       "heavy_blur", "exposure"}


def test_profiles_only_emit_vocabulary():
    for cond in CONDITIONS:
        for field in SETS:
            assert cond.support(field) <= set(vocab.SET_FIELDS[field]), (cond.label, field)
        for field in SCALARS[1:]:
            assert cond.support(field) <= set(vocab.SCALAR_FIELDS[field]), (cond.label, field)


def test_shared_attributes_need_combinations():
    def emitting(field, value):
        return {c.label for c in CONDITIONS if value in c.support(field)}

    assert len(emitting("colour", "brown")) >= 2
    assert len(emitting("primary_morphology", "plaque")) >= 2
    # the clinically confusable groups share their headline cue
    assert {"melanoma", "nevocytic nevus", "seborrheic keratosis"} <= emitting("colour", "brown")
    assert {"psoriasis", "eczema", "lichen planus"} <= emitting("primary_morphology", "plaque")
    assert {"granuloma annulare", "urticaria"} <= emitting("configuration", "annular")
    assert {"basal cell carcinoma", "pyogenic granuloma", "dermatofibroma"} <= emitting("primary_morphology", "nodule")
    assert len(emitting("colour", "erythematous")) >= 5


def test_sampling_is_probabilistic():
    cond = next(c for c in CONDITIONS if c.label == "melanoma")
    combos = {str(sample_attributes(cond, np.random.default_rng(i))[0]) for i in range(40)}
    assert len(combos) > 10


def test_rendered_lesions_match_colour(medium):
    """Depigmented lesions are lighter than the surrounding skin, melanomas darker."""
    root, _ = medium
    attrs = pd.read_parquet(root / "attributes.parquet")

    def centre_vs_median(row):
        with Image.open(root / "images" / f"{row.md5hash}.jpg") as im:
            lum = np.asarray(im.convert("L"), dtype=float)
        x, y = int(round(row.lesion_cx)), int(round(row.lesion_cy))
        x, y = min(max(x, 1), 62), min(max(y, 1), 62)
        return lum[y - 1:y + 2, x - 1:x + 2].mean() - np.median(lum)

    vit = attrs[(attrs.label == "vitiligo") & ~attrs.clutter.map(lambda c: "heavy_blur" in c)]
    mel = attrs[(attrs.label == "melanoma") & ~attrs.clutter.map(lambda c: "heavy_blur" in c)]
    assert np.mean([centre_vs_median(r) > 0 for r in vit.itertuples()]) >= 0.8
    assert np.mean([centre_vs_median(r) < 0 for r in mel.itertuples()]) >= 0.8


# --------------------------------------------------------------------------- determinism

def test_same_seed_is_byte_identical_and_seed_matters(tiny, tmp_path):
    root, _ = tiny
    again = tmp_path / "again"
    generate(again, SynthConfig.tiny(), workers=2)
    assert _digest(again) == _digest(root)
    other = tmp_path / "other"
    generate(other, SynthConfig.tiny(seed=18), workers=1)
    assert _digest(other)["fitzpatrick17k.csv"] != _digest(root)["fitzpatrick17k.csv"]
    assert not set(_read_csv(other)["md5hash"]) & set(_read_csv(root)["md5hash"])


# --------------------------------------------------------------------------- noise rates

def test_metadata_noise_rates(medium):
    root, cfg = medium
    csv = _read_csv(root)
    attrs = pd.read_parquet(root / "attributes.parquet").set_index("md5hash").loc[csv["md5hash"]]
    n = len(csv)
    scale, centaur = csv["fitzpatrick_scale"].astype(int), csv["fitzpatrick_centaur"].astype(int)

    def close(count, rate):
        assert abs(count - rate * n) <= max(2, 0.25 * rate * n), (count, rate * n)

    close((scale == -1).sum(), cfg.unknown_skin_type_rate)
    close((scale != centaur).sum(), cfg.annotator_disagreement_rate)
    close((csv["qc"] != "").sum(), cfg.qc_rate)
    close((csv["url"] == "").sum(), cfg.empty_url_rate)
    counts = csv["label"].value_counts()
    assert counts.max() - counts.min() <= 1

    labels = {_norm(c.label): c.label for c in CONDITIONS}
    with_url = csv[csv["url"] != ""]
    folders = with_url["url"].map(lambda u: URL_RE.match(u).group(2))
    named = folders.map(lambda f: labels.get(_norm(f)))
    assert named.notna().all(), folders[named.isna()].tolist()
    wrong = named != with_url["label"]
    close(wrong.sum(), cfg.label_noise_rate)
    assert (wrong.values == attrs.loc[with_url["md5hash"], "label_noise"].values).all()
    assert (folders != with_url["label"].str.replace(" ", "-")).sum() > wrong.sum()  # variant spellings
    # url_alphanum doubles as an image file name in Fitzpatrick17k: it must stay unique
    assert with_url["url_alphanum"].is_unique and with_url["url"].is_unique
    assert (csv.loc[attrs["label_noise"].values & (csv["qc"] != "").values, "qc"] == "3 Wrongly labelled").all()
    # skin types skew towards II-III, all six present
    types = attrs["fitzpatrick_type"].value_counts()
    assert set(types.index) == {"I", "II", "III", "IV", "V", "VI"}
    assert types["II"] > types["VI"] and types["III"] > types["VI"]


# --------------------------------------------------------------------------- config

def test_config_validation():
    with pytest.raises(ValidationError):
        SynthConfig(image_size=32)
    with pytest.raises(ValidationError):
        SynthConfig(image_size=512)
    with pytest.raises(ValidationError):
        SynthConfig(conditions=["not a disease"])
    with pytest.raises(ValidationError):
        SynthConfig(n_imgs=10)
    with pytest.raises(ValidationError):
        SynthConfig(qc_rate=1.5)
    cfg = SynthConfig.tiny(seed=5)
    assert (cfg.n_images, cfg.image_size, cfg.seed) == (64, 64, 5)
    with pytest.raises(ValidationError):
        cfg.seed = 6


def test_condition_subset_replaces_directory(tmp_path):
    out = tmp_path / "ds"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    summary = generate(out, SynthConfig.tiny(n_images=12, conditions=["melanoma", "vitiligo"]))
    assert not (out / "stale.txt").exists()
    csv = _read_csv(out)
    assert set(csv["label"]) == {"melanoma", "vitiligo"}
    assert summary["label_counts"] == {"melanoma": 6, "vitiligo": 6}
    tax = pd.read_csv(out / "taxonomy.csv", keep_default_na=False)
    assert list(tax["label"]) == ["melanoma", "vitiligo"]
