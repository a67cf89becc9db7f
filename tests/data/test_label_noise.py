"""Label noise from atlas folders, measured against a hand review of the real Fitzpatrick17k table.

tests/data/fitzpatrick17k_folder_review.csv holds every (label, URL folder) pair of the real table
with a verdict and the reason for it: ``different`` when the folder names a condition the label
does not fairly describe, ``supports`` for the label, a subtype, a spelling or an accepted close
relative (e.g. systemic lupus images under ``lupus subacute``), ``nothing`` for generic words.
The vocabulary was written with this review in view, so these numbers are an upper bound; the
row-level goal on an independent review is precision >= 0.6 and recall >= 0.7.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from shared_data import shared_file
from skinflow.data.label_noise import VERDICTS, flag_rows, review_table, vocabulary_for
from skinflow.data.splits import SplitConfig, assign_splits, leaking_groups

REVIEW = Path(__file__).parent / "fitzpatrick17k_folder_review.csv"


@pytest.fixture(scope="module")
def vocabulary():
    return vocabulary_for(pd.read_csv(shared_file("fitzpatrick17k/taxonomy.csv")))


def test_review_sample_is_well_formed():
    review = pd.read_csv(REVIEW)
    assert set(review["verdict"]) <= set(VERDICTS) and review["reason"].notna().all()
    assert not review.duplicated(["label", "folder"]).any()
    assert review["rows"].sum() == 16577 - 3946  # every row with a folder (atlasdermatologico has none)


def test_row_level_precision_and_recall_on_the_review(vocabulary):
    review = pd.read_csv(REVIEW)
    predicted = [vocabulary.verdict(l, f).verdict for l, f in zip(review["label"], review["folder"])]
    flagged, truth = pd.Series(predicted) == "different", review["verdict"] == "different"
    tp = review.loc[flagged & truth, "rows"].sum()
    precision = tp / review.loc[flagged, "rows"].sum()
    recall = tp / review.loc[truth, "rows"].sum()
    assert precision >= 0.9 and recall >= 0.9, (precision, recall)


@pytest.mark.parametrize("label, folder, verdict", [
    ("lyme disease", "erytrasma", "different"),            # spelling variant of another condition
    ("lichen simplex", "chicken_pox", "different"),
    ("lichen planus", "dermatitis_artefacta", "different"),
    ("halo nevus", "ota-nevus", "different"),
    ("milia", "boil", "different"),
    ("milia", "miliaria", "different"),                    # a longer name is not the shorter one
    ("psoriasis", "parapsoriasis-large-plaque", "different"),
    ("langerhans cell histiocytosis", "non_langerhans_cell_histiocytosis", "different"),
    ("lupus subacute", "systemic-lupus-erythematosus", "supports"),   # related: accepted
    ("calcinosis cutis", "calcified_nodule_dermatomyositis", "supports"),
    ("photodermatoses", "drug_eruption_photosensitivity", "supports"),
    ("lupus erythematosus", "reticular-erythematous-mucinosis", "supports"),
    ("keloid", "kekoid", "supports"),
    ("actinic keratosis", "actinic_keratoses", "supports"),           # plural
    ("basal cell carcinoma", "carcinoma_basal_cell", "supports"),     # word order
    ("basal cell carcinoma", "carcinome_basocellulaire_nodulaire", "supports"),  # French
    ("superficial spreading melanoma ssm", "superfacial-spreading-melanoma", "supports"),
    ("psoriasis", "psoriasis-pustular", "supports"),                   # subtype that is a label
    ("myiasis", "mass", "nothing"),
    ("drug induced pigmentary changes", "hyperpigmentation", "nothing"),
])
def test_verdicts(vocabulary, label, folder, verdict):
    assert vocabulary.verdict(label, folder).verdict == verdict, vocabulary.verdict(label, folder)


def test_real_table_counts_and_ranked_table(vocabulary):
    table = pd.read_csv(shared_file("fitzpatrick17k/fitzpatrick17k.csv"), dtype=str, keep_default_na=False)
    ranked = review_table(table, vocabulary)
    assert len(ranked) == 484
    assert ranked["verdict"].iloc[0] == "different" and ranked["rows"].iloc[0] == ranked.loc[
        ranked["verdict"] == "different", "rows"].max()
    flags = flag_rows(table, vocabulary)
    assert int(flags.sum()) == int(ranked.loc[ranked["verdict"] == "different", "rows"].sum()) == 1325


def test_split_option_keeps_flagged_rows_out_of_train_and_test():
    frame = pd.DataFrame({
        "image_id": pd.array([f"i{k}" for k in range(60)], dtype="string"),
        "content_md5": pd.array([f"{k:032x}" for k in range(60)], dtype="string"),
        "source_row": range(60),
        "label": pd.array(["a", "b"] * 30, dtype="string"),
        "fitzpatrick_scale": pd.array([1 + k % 6 for k in range(60)], dtype="Int64"),
        "label_noise": pd.array([k % 7 == 0 for k in range(60)], dtype="boolean"),
    })
    frame.loc[1, "near_dup_cluster"] = frame.loc[0, "content_md5"]   # a flagged row's near-duplicate
    frame.loc[0, "near_dup_cluster"] = frame.loc[0, "content_md5"]
    kept = assign_splits(frame, SplitConfig())
    out = assign_splits(frame, SplitConfig(exclude_label_noise=True))
    noisy = frame["label_noise"].astype(bool)
    for column in out.columns:
        assert (out.loc[noisy, column] == "unused").all(), column
    assert out.loc[~noisy, "split"].equals(kept.loc[~noisy, "split"])
    assert not leaking_groups(pd.concat([frame, out], axis=1)).any()
