"""Splits: deterministic, stratified, duplicate-grouped; Fitzpatrick17k's published protocols."""

from __future__ import annotations

import hashlib

import pandas as pd
import pytest
from pydantic import ValidationError

from skinflow.data.manifest import SPLITS
from skinflow.data.splits import PROTOCOLS, SKIN_TYPE_HOLDOUTS, SplitConfig, assign_splits, leaking_groups

LABELS = ("psoriasis", "melanoma", "dermatofibroma")
FITZ = (-1, 1, 2, 3, 4, 5, 6)
SPLIT_COLUMNS = [f"split_{p}" for p in PROTOCOLS] + ["split"]


def make_frame(n_per_label: dict[str, int] | None = None, start: int = 0, qc=None) -> pd.DataFrame:
    """One row per image: distinct content hashes, skin types cycling over -1..6."""
    n_per_label = n_per_label or {label: 30 for label in LABELS}
    labels = [label for label, n in n_per_label.items() for _ in range(n)]
    ids = [f"img{start + i:05d}" for i in range(len(labels))]
    return pd.DataFrame({
        "image_id": pd.array(ids, dtype="string"),
        "content_md5": pd.array([hashlib.md5(i.encode()).hexdigest() for i in ids], dtype="string"),
        "source_row": range(start, start + len(ids)),
        "label": pd.array(labels, dtype="string"),
        "fitzpatrick_scale": pd.array([FITZ[i % 7] for i in range(len(ids))], dtype="Int64"),
        "qc": pd.array(qc if qc is not None else [""] * len(ids), dtype="string"),
    })


def splits_by_id(frame: pd.DataFrame, cfg: SplitConfig) -> pd.DataFrame:
    return pd.concat([frame[["image_id"]], assign_splits(frame, cfg)], axis=1).set_index("image_id").sort_index()


# --------------------------------------------------------------------------- determinism

def test_same_seed_same_splits():
    frame = make_frame()
    first, second = assign_splits(frame, SplitConfig(seed=3)), assign_splits(frame.copy(), SplitConfig(seed=3))
    pd.testing.assert_frame_equal(first, second)
    assert list(first.columns) == SPLIT_COLUMNS
    assert first.index.equals(frame.index)
    for column in SPLIT_COLUMNS:
        assert set(first[column].dropna()) <= set(SPLITS) and first[column].notna().all()


def test_different_seed_changes_splits():
    frame = make_frame()
    a, b = assign_splits(frame, SplitConfig(seed=0)), assign_splits(frame, SplitConfig(seed=1))
    assert (a["split"] != b["split"]).sum() > 10
    assert a["split"].value_counts().to_dict() == b["split"].value_counts().to_dict()  # sizes fixed by fractions


def test_row_order_does_not_change_any_split():
    frame = make_frame()
    shuffled = frame.sample(frac=1.0, random_state=7).reset_index(drop=True)
    assert not shuffled["image_id"].equals(frame["image_id"])
    cfg = SplitConfig(seed=11)
    pd.testing.assert_frame_equal(splits_by_id(frame, cfg), splits_by_id(shuffled, cfg))


def test_index_labels_do_not_matter():
    frame = make_frame()
    relabelled = frame.set_axis(range(1000, 1000 + len(frame)))
    out = assign_splits(relabelled, SplitConfig())
    assert out.index.equals(relabelled.index)
    assert list(out["split"]) == list(assign_splits(frame, SplitConfig())["split"])


@pytest.mark.parametrize("n", [10, 11, 23, 50])
def test_each_label_with_ten_groups_is_in_train_and_test(n):
    frame = make_frame({"psoriasis": n, "melanoma": n + 7, "dermatofibroma": 2 * n})
    out = pd.concat([frame, assign_splits(frame, SplitConfig(train=0.7, val=0.1, test=0.2))], axis=1)
    for label, group in out.groupby("label"):
        counts = group["split"].value_counts()
        assert counts.get("train", 0) > 0 and counts.get("test", 0) > 0, (label, counts.to_dict())
        size = len(group)
        for split, fraction in {"train": 0.7, "val": 0.1, "test": 0.2}.items():
            assert abs(counts.get(split, 0) - fraction * size) <= 1, (label, split, counts.to_dict())


def test_val_fraction_zero_gives_no_val():
    frame = make_frame()
    out = assign_splits(frame, SplitConfig(train=0.8, val=0.0, test=0.2))
    assert set(out["split"]) == {"train", "test"}
    assert set(out["split_a12"]) <= {"train", "test", "unused"}


# --------------------------------------------------------------------------- duplicates

def test_duplicates_never_straddle_splits():
    frame = make_frame({label: 20 for label in LABELS})
    copies = frame.iloc[::3].copy()
    copies["image_id"] = copies["image_id"] + "_copy"          # same bytes, another id
    copies["source_row"] = copies["source_row"] + 10_000
    copies["label"] = copies["label"].map(lambda l: LABELS[(LABELS.index(l) + 1) % 3])  # even relabelled
    copies["fitzpatrick_scale"] = pd.array([3] * len(copies), dtype="Int64")           # and retyped
    copies["qc"] = "1 Diagnostic"
    both = pd.concat([frame, copies], ignore_index=True)
    out = pd.concat([both, assign_splits(both, SplitConfig(seed=5))], axis=1)
    for column in SPLIT_COLUMNS:
        per_group = out.groupby("content_md5")[column].nunique()
        assert (per_group == 1).all(), f"{column}: a content group straddles splits"
        assert not leaking_groups(out, column).any()


def test_rows_without_hash_group_by_image_id():
    frame = make_frame({"psoriasis": 30})
    frame.loc[:4, "content_md5"] = pd.NA
    twin = frame.iloc[:5].copy()
    twin["source_row"] += 100
    both = pd.concat([frame, twin], ignore_index=True)
    out = pd.concat([both, assign_splits(both, SplitConfig())], axis=1)
    assert (out.groupby("image_id")["split"].nunique() == 1).all()


# --------------------------------------------------------------------------- protocols

def test_expert_selected_puts_checked_rows_in_test():
    qc = ["1 Diagnostic", "2 Characteristic", "3 Wrongly labelled", "4 Other", ""] * 12
    frame = make_frame({label: 20 for label in LABELS}, qc=qc)
    out = pd.concat([frame, assign_splits(frame, SplitConfig(protocol="expert_selected"))], axis=1)
    assert out["split"].equals(out["split_expert_selected"])
    checked = out["qc"].isin(["1 Diagnostic", "2 Characteristic", "4 Other"])
    wrong = out["qc"].str.contains("wrongly", case=False)
    assert (out.loc[checked, "split"] == "test").all()
    assert not (out.loc[~checked, "split"] == "test").any()
    assert set(out.loc[wrong, "split"]) <= {"train", "val"} and set(out.loc[out["qc"] == "", "split"]) == {
        "train", "val"}
    assert not (out["split"] == "unused").any()


def test_expert_selected_without_qc_column():
    frame = make_frame().drop(columns="qc")
    out = assign_splits(frame, SplitConfig(protocol="expert_selected"))
    assert set(out["split"]) == {"train", "val"}


@pytest.mark.parametrize("protocol", list(SKIN_TYPE_HOLDOUTS))
def test_skin_type_holdout(protocol):
    frame = make_frame({label: 40 for label in LABELS})
    frame.loc[frame.index[-3:], "fitzpatrick_scale"] = pd.NA     # unparseable skin type
    out = pd.concat([frame, assign_splits(frame, SplitConfig(protocol=protocol))], axis=1)
    assert out["split"].equals(out[f"split_{protocol}"])
    held = SKIN_TYPE_HOLDOUTS[protocol]
    fitz = out["fitzpatrick_scale"]
    in_train = fitz.isin(held).fillna(False).astype(bool)
    other_known = fitz.isin([t for t in range(1, 7) if t not in held]).fillna(False).astype(bool)
    assert set(out.loc[in_train, "split"]) == {"train", "val"}
    assert (out.loc[other_known, "split"] == "test").all()
    assert (out.loc[(fitz == -1).fillna(False).astype(bool), "split"] == "unused").all()
    assert (out.loc[fitz.isna(), "split"] == "unused").all()


def test_a12_matches_the_paper_definition():
    frame = make_frame()
    out = pd.concat([frame, assign_splits(frame, SplitConfig(protocol="a12"))], axis=1)
    expected = out["fitzpatrick_scale"].map(lambda t: "trainval" if t in (1, 2) else "test" if t in (3, 4, 5, 6)
                                            else "unused")
    actual = out["split"].replace({"train": "trainval", "val": "trainval"})
    assert list(actual) == list(expected)


# --------------------------------------------------------------------------- leakage

def test_leaking_groups_detects_a_hand_made_leak():
    frame = pd.DataFrame({
        "image_id": ["a", "b", "c", "d", "e", "f"],
        "content_md5": ["h1", "h1", "h2", "h2", "h3", pd.NA],
        "source_row": range(6),
        "split": ["train", "test", "val", "val", "test", "train"],
    })
    assert list(leaking_groups(frame)) == [True, True, False, False, False, False]
    frame["other"] = ["train", "train", "train", "test", "val", "val"]
    assert list(leaking_groups(frame, "other")) == [False, False, True, True, False, False]


def test_leaking_groups_falls_back_to_image_id():
    frame = pd.DataFrame({"image_id": ["x", "x", "y"], "content_md5": [pd.NA, pd.NA, pd.NA],
                          "source_row": [0, 1, 2], "split": ["train", "val", "test"]})
    assert list(leaking_groups(frame)) == [True, True, False]


# --------------------------------------------------------------------------- config

@pytest.mark.parametrize("fractions", [
    dict(train=0.7, val=0.2, test=0.2),
    dict(train=0.5, val=0.1, test=0.2),
    dict(train=0.6, val=0.1, test=0.31),
])
def test_split_config_rejects_fractions_not_summing_to_one(fractions):
    with pytest.raises(ValidationError, match="sum to 1"):
        SplitConfig(**fractions)


@pytest.mark.parametrize("fractions", [
    dict(train=0.0, val=0.5, test=0.5),
    dict(train=0.7, val=-0.1, test=0.4),
    dict(train=0.5, val=0.5, test=0.0),
])
def test_split_config_rejects_empty_train_or_test_and_negative(fractions):
    with pytest.raises(ValidationError):
        SplitConfig(**fractions)


def test_split_config_accepts_valid_and_rejects_unknown():
    assert SplitConfig(train=0.8, val=0.0, test=0.2).val == 0.0
    assert SplitConfig(train=0.6, val=0.2, test=0.2).protocol == "random_holdout"
    with pytest.raises(ValidationError):
        SplitConfig(protocol="a78")
    with pytest.raises(ValidationError):
        SplitConfig(tset=0.2)
