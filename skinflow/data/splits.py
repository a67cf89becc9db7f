"""Deterministic, stratified, duplicate-grouped splits, plus Fitzpatrick17k's published protocols.

Assignment depends only on (seed, group key, label) and the set of groups, never on row order, so
re-ordering rows changes nothing. Cut points are exact per label (stratification), so appending
rows can move a few existing groups across a cut. Rows sharing a content hash or a near-duplicate
cluster (``near_dup_cluster``) form one group and always land in the same split.
"""

from __future__ import annotations

import hashlib
from typing import Literal

import pandas as pd
from pydantic import Field, model_validator

from skinflow.config import Section

Protocol = Literal["random_holdout", "expert_selected", "a12", "a34", "a56"]
PROTOCOLS: tuple[str, ...] = ("random_holdout", "expert_selected", "a12", "a34", "a56")
# Skin-type holdouts from the Fitzpatrick17k paper: train on two types, test on the other four.
SKIN_TYPE_HOLDOUTS = {"a12": (1, 2), "a34": (3, 4), "a56": (5, 6)}


class SplitConfig(Section):
    protocol: Protocol = "random_holdout"
    train: float = Field(0.7, gt=0, lt=1)
    val: float = Field(0.1, ge=0, lt=1)
    test: float = Field(0.2, gt=0, lt=1)
    seed: int = 0

    @model_validator(mode="after")
    def _fractions_sum_to_one(self) -> "SplitConfig":
        if abs(self.train + self.val + self.test - 1.0) > 1e-6:
            raise ValueError("train + val + test must sum to 1")
        return self


def _rank(seed: int, key: str) -> str:
    return hashlib.sha1(f"{seed}:{key}".encode(), usedforsecurity=False).hexdigest()


def _group_keys(frame: pd.DataFrame) -> pd.Series:
    # A near-duplicate cluster is one group; so are identical bytes; rows without a readable hash
    # fall back to their image id.
    keys = frame["content_md5"].fillna(frame["image_id"]).fillna(frame["source_row"].astype(str))
    if "near_dup_cluster" in frame:
        keys = frame["near_dup_cluster"].fillna(keys)
    return keys


def _stratified(groups: pd.DataFrame, fractions: dict[str, float], seed: int) -> pd.Series:
    """groups: index = group key, column 'label'. Returns split per group."""
    out = pd.Series(index=groups.index, dtype="string")
    for _, members in groups.groupby(groups["label"].fillna("<none>"), sort=True):
        order = sorted(members.index, key=lambda g: _rank(seed, g))
        n = len(order)
        bounds, acc = [], 0.0
        for name, frac in fractions.items():
            acc += frac
            bounds.append((name, round(acc * n)))
        start = 0
        for name, stop in bounds:
            out.loc[order[start:stop]] = name
            start = stop
    return out


def assign_splits(frame: pd.DataFrame, cfg: SplitConfig) -> pd.DataFrame:
    """Return a frame (same index) with one ``split_<protocol>`` column per protocol and ``split``."""
    keys = _group_keys(frame)
    # One label per group (the most common, ties by name), so a duplicate with two labels is still
    # kept together. Vectorised: most groups are single rows.
    counted = (pd.DataFrame({"key": keys, "label": frame["label"]}).value_counts(dropna=False)
               .reset_index(name="n").sort_values(["key", "n", "label"], ascending=[True, False, True]))
    groups = counted.drop_duplicates("key").set_index("key")[["label"]]
    groups = groups.reindex(pd.unique(keys))
    holdout = _stratified(groups, {"train": cfg.train, "val": cfg.val, "test": cfg.test}, cfg.seed)
    out = pd.DataFrame(index=frame.index)
    out["split_random_holdout"] = keys.map(holdout).astype("string")

    # Expert-selected: the expert-checked rows (non-empty qc, not marked wrongly labelled) are the test set.
    qc = frame["qc"].fillna("") if "qc" in frame else pd.Series("", index=frame.index)
    expert = (qc != "") & ~qc.str.contains("wrongly", case=False)
    expert_groups = set(keys[expert])
    pool = groups.loc[~groups.index.isin(expert_groups)]
    trainval = _stratified(pool, {"train": cfg.train / (cfg.train + cfg.val),
                                  "val": cfg.val / (cfg.train + cfg.val)}, cfg.seed)
    out["split_expert_selected"] = (keys.map(trainval).astype("string").fillna("unused")
                                    .mask(keys.isin(expert_groups), "test"))

    # Skin-type holdouts: unknown skin type (-1) cannot be placed on either side.
    fitz_by_group = frame.groupby(keys)["fitzpatrick_scale"].max()
    for name, types in SKIN_TYPE_HOLDOUTS.items():
        in_train = fitz_by_group.isin(types)
        known = fitz_by_group.between(1, 6)
        trainval = _stratified(groups.loc[in_train], {"train": cfg.train / (cfg.train + cfg.val),
                                                     "val": cfg.val / (cfg.train + cfg.val)}, cfg.seed)
        split = pd.Series("unused", index=groups.index, dtype="string")
        split[known & ~in_train] = "test"
        split.loc[trainval.index] = trainval
        out[f"split_{name}"] = keys.map(split).astype("string")
    out["split"] = out[f"split_{cfg.protocol}"]
    return out


def leaking_groups(frame: pd.DataFrame, split_column: str = "split") -> pd.Series:
    """Boolean mask of rows whose group (content hash or near-duplicate cluster) is in several splits."""
    keys = _group_keys(frame)
    n_splits = frame.groupby(keys)[split_column].transform("nunique")
    return n_splits > 1
