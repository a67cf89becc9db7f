"""Deterministic, stratified, duplicate-grouped splits, plus Fitzpatrick17k's published protocols.

Assignment depends only on (seed, group key, label) and the set of groups, never on row order, so
re-ordering rows changes nothing. Cut points are exact per label (stratification), so appending
rows can move a few existing groups across a cut. Rows sharing a content hash or a near-duplicate
cluster (``near_dup_cluster``) form one group and always land in the same split.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal

import pandas as pd
from pydantic import Field, model_validator

from skinflow.config import Section
from skinflow.data.adapters import IngestError, read_table
from skinflow.data.manifest import Reason

Protocol = Literal["random_holdout", "expert_selected", "a12", "a34", "a56", "file"]
PROTOCOLS: tuple[str, ...] = ("random_holdout", "expert_selected", "a12", "a34", "a56")
# Partition names a published split file may use -> our split (None = the file removes the row).
FILE_PARTITIONS = {
    "train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
    "dev": "val", "test": "test", "testing": "test", "unused": "unused",
    "removed": None, "remove": None, "excluded": None, "exclude": None, "drop": None, "dropped": None,
}
# Skin-type holdouts from the Fitzpatrick17k paper: train on two types, test on the other four.
SKIN_TYPE_HOLDOUTS = {"a12": (1, 2), "a34": (3, 4), "a56": (5, 6)}


class SplitConfig(Section):
    protocol: Protocol = "random_holdout"
    train: float = Field(0.7, gt=0, lt=1)
    val: float = Field(0.1, ge=0, lt=1)
    test: float = Field(0.2, gt=0, lt=1)
    seed: int = 0
    # protocol "file": a published split (e.g. Fitzpatrick17k-C), one row per image id.
    file: str | None = None
    file_key: str = "md5hash"        # the file's column holding image ids (md5hash for Fitzpatrick17k)
    file_partition: str = "partition"
    exclude_label_noise: bool = False  # rows flagged label_noise go to "unused" in every split column

    @model_validator(mode="after")
    def _fractions_sum_to_one(self) -> "SplitConfig":
        if abs(self.train + self.val + self.test - 1.0) > 1e-6:
            raise ValueError("train + val + test must sum to 1")
        if self.protocol == "file" and not self.file:
            raise ValueError("protocol 'file' needs splits.file (a CSV of image id -> partition)")
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
    if cfg.file:
        out["split_file"], exclusion = file_splits(frame, cfg)
        if cfg.protocol == "file":
            # Rows the file removes or never mentions leave through quarantine, never silently.
            out["split_exclusion"] = exclusion
    if cfg.exclude_label_noise and "label_noise" in frame:
        noisy = frame["label_noise"].fillna(False).astype(bool)
        for column in out.columns:
            if column.startswith("split_") and column != "split_exclusion":
                out.loc[noisy, column] = "unused"
    out["split"] = out[f"split_{cfg.protocol}"]
    return out


def read_split_file(cfg: SplitConfig) -> pd.Series:
    """The published split as image id -> our split name (None = removed). Raises IngestError."""
    table, _ = read_table(cfg.file)
    for column in (cfg.file_key, cfg.file_partition):
        if column not in table.columns:
            raise IngestError(f"split file {cfg.file}: no column {column!r} (columns: {list(table.columns)}); "
                              "set ingest.splits.file_key / file_partition")
    keys = table[cfg.file_key].str.strip()
    keys = keys.str.lower() if cfg.file_key == "md5hash" else keys
    names = table[cfg.file_partition].str.strip().str.lower()
    unknown = sorted(set(names) - set(FILE_PARTITIONS))
    if unknown:
        raise IngestError(f"split file {cfg.file}: unknown partition name(s) {unknown}; "
                          f"expected one of {sorted(FILE_PARTITIONS)}")
    if (keys == "").any():
        raise IngestError(f"split file {cfg.file}: {int((keys == '').sum())} row(s) with an empty {cfg.file_key}")
    mapped = pd.Series([FILE_PARTITIONS[n] for n in names], index=keys.to_numpy(), dtype="object")
    conflicting = mapped.groupby(level=0).nunique(dropna=False)
    if (conflicting > 1).any():
        raise IngestError(f"split file {cfg.file}: ids with two partitions: "
                          f"{sorted(conflicting[conflicting > 1].index)[:10]}")
    return mapped[~mapped.index.duplicated()]


def file_splits(frame: pd.DataFrame, cfg: SplitConfig) -> tuple[pd.Series, pd.Series]:
    """(split per row from the file, exclusion reason per row or NA)."""
    published = read_split_file(cfg)
    ids = frame["image_id"].str.lower() if cfg.file_key == "md5hash" else frame["image_id"]
    listed = ids.isin(published.index)
    split = ids.map(published)
    exclusion = pd.Series(pd.NA, index=frame.index, dtype="string")
    exclusion[listed & split.isna()] = Reason.REMOVED_BY_SPLIT_FILE.value
    exclusion[~listed] = Reason.NOT_IN_SPLIT_FILE.value
    return split.where(split.notna(), "unused").astype("string"), exclusion


def split_file_report(frame: pd.DataFrame, cfg: SplitConfig, listed: int = 100) -> dict | None:
    """What the published split did to this table: counts, and the ids it does not mention."""
    if not cfg.file:
        return None
    published = read_split_file(cfg)
    ids = frame["image_id"].str.lower() if cfg.file_key == "md5hash" else frame["image_id"]
    absent = frame.loc[~ids.isin(published.index), "image_id"]
    return {
        "file": cfg.file,
        "file_md5": hashlib.md5(Path(cfg.file).read_bytes(), usedforsecurity=False).hexdigest(),
        "active": cfg.protocol == "file",
        "file_rows": len(published),
        "file_ids_not_in_table": int((~published.index.isin(ids)).sum()),
        "split_counts": frame["split_file"].value_counts().sort_index().to_dict(),
        "removed_by_file": int((ids.map(published).isna() & ids.isin(published.index)).sum()),
        "not_in_file": len(absent),
        "not_in_file_ids": sorted(absent.dropna())[:listed],
    }


def leaking_groups(frame: pd.DataFrame, split_column: str = "split") -> pd.Series:
    """Boolean mask of rows whose group (content hash or near-duplicate cluster) is in several splits."""
    keys = _group_keys(frame)
    # "unused" rows are in no split, so a group with train + unused rows does not leak.
    used = frame[split_column].where(frame[split_column] != "unused")
    n_splits = used.groupby(keys).transform("nunique")
    return n_splits > 1
