"""Label taxonomies: label -> nine-partition -> three-partition, read from a CSV per dataset."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

TAXONOMY_COLUMNS = ("label", "nine_partition_label", "three_partition_label")


class TaxonomyError(ValueError):
    pass


def load_taxonomy(path: str | os.PathLike) -> pd.DataFrame:
    """Load and check a taxonomy CSV; one row per label, label unique, no empty cells."""
    path = Path(path)
    if not path.exists():
        raise TaxonomyError(f"taxonomy file not found: {path}")
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in TAXONOMY_COLUMNS if c not in frame.columns]
    if missing:
        raise TaxonomyError(f"{path}: missing column(s) {missing}")
    frame = frame[list(TAXONOMY_COLUMNS)].apply(lambda c: c.str.strip())
    if (frame == "").any().any():
        raise TaxonomyError(f"{path}: empty cells in taxonomy")
    # Identical repeated rows are harmless (a code table mapping two codes to one label); a label
    # with two different partition paths is not.
    frame = frame.drop_duplicates()
    dupes = frame["label"][frame["label"].duplicated()].tolist()
    if dupes:
        raise TaxonomyError(f"{path}: labels with conflicting partitions {dupes}")
    return frame.reset_index(drop=True)


def label_paths(taxonomy: pd.DataFrame) -> set[str]:
    """Allowed 'label|nine|three' strings, for checking a row's partitions against its label."""
    return set(taxonomy["label"] + "|" + taxonomy["nine_partition_label"] + "|"
               + taxonomy["three_partition_label"])
