"""The canonical manifest contract shared by every source adapter and every later stage.

One row per source record. Ingestion fills every column it can and never drops a row; validation
moves failing rows to the quarantine table, so ``rows in = accepted + quarantined`` always holds.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

import pandas as pd

SPLITS = ("train", "val", "test", "unused")

# Column -> pandas dtype. Nullable dtypes keep "unknown" distinct from a real value.
MANIFEST_COLUMNS: dict[str, str] = {
    "image_id": "string",            # md5hash (F17k), image_id (HAM/ISIC) or file stem (generic)
    "source": "string",              # adapter name
    "source_row": "int64",           # 0-based data row in the source table (provenance)
    "image_root": "string",          # the source's image folder, as given in params
    "rel_path": "string",            # image path relative to image_root
    "content_md5": "string",         # md5 of the bytes actually read
    "declared_md5": "string",        # md5 the source table claims (F17k md5hash), if any
    "width": "Int64",
    "height": "Int64",
    "mode": "string",                # PIL mode after decoding, e.g. RGB, L, CMYK, I;16
    "label": "string",
    "nine_partition_label": "string",
    "three_partition_label": "string",
    "fitzpatrick_scale": "Int64",    # -1 = unknown, as in Fitzpatrick17k
    "fitzpatrick_centaur": "Int64",
    "qc": "string",
    "url": "string",
    "ingest_error": "string",        # reason code when the row could not be read; else null
    "ingest_detail": "string",
    "perceptual_hash": "string",     # pHash + dHash bits, hex (near_duplicates.py)
    "label_noise": "boolean",         # the URL folder names a condition the label does not accept
    "near_dup_cluster": "string",    # smallest content_md5 of the image's near-duplicate cluster, else null
    "split": "string",               # the active protocol's split
}


class Reason(StrEnum):
    """Quarantine reason codes. Stable strings: reports and tests key on them."""

    MISSING_IMAGE = "missing_image"
    EMPTY_FILE = "empty_file"
    TRUNCATED_IMAGE = "truncated_image"
    CORRUPT_IMAGE = "corrupt_image"
    DECOMPRESSION_BOMB = "decompression_bomb"
    MD5_MISMATCH = "md5_mismatch"
    NON_RGB = "non_rgb"
    TINY_IMAGE = "tiny_image"
    UNSAFE_PATH = "unsafe_path"
    BAD_ID = "bad_id"
    MISSING_LABEL = "missing_label"
    UNKNOWN_LABEL = "unknown_label"
    PARTITION_MISMATCH = "partition_mismatch"
    BAD_FITZPATRICK = "bad_fitzpatrick"
    DUPLICATE_ROW = "duplicate_row"
    CONFLICTING_DUPLICATE = "conflicting_duplicate"
    SPLIT_LEAKAGE = "split_leakage"
    NOT_IN_SPLIT_FILE = "not_in_split_file"          # protocol file: the published split omits the row
    REMOVED_BY_SPLIT_FILE = "removed_by_split_file"  # protocol file: the published split removes it


QUARANTINE_COLUMNS: dict[str, str] = {
    "stage": "string",
    "source": "string",
    "source_row": "int64",
    "image_id": "string",
    "rel_path": "string",
    "reason": "string",
    "detail": "string",
    "record": "string",  # the full row as JSON, so nothing is lost
}


def image_paths(frame: pd.DataFrame) -> list[str]:
    """Full path of each row's image (image_root joined with rel_path)."""
    return [str(Path(root) / rel) for root, rel in zip(frame["image_root"], frame["rel_path"])]


def empty_manifest() -> pd.DataFrame:
    return conform(pd.DataFrame({c: [] for c in MANIFEST_COLUMNS}))


def conform(frame: pd.DataFrame, columns: dict[str, str] = MANIFEST_COLUMNS) -> pd.DataFrame:
    """Return ``frame`` with exactly the contract's columns first (extras kept after), typed."""
    out = frame.copy()
    for name, dtype in columns.items():
        if name not in out.columns:
            out[name] = pd.Series([pd.NA] * len(out), dtype=dtype if dtype != "int64" else "Int64")
        out[name] = out[name].astype(dtype)
    extras = [c for c in out.columns if c not in columns]
    return out[list(columns) + extras].reset_index(drop=True)


def query(sql: str, **tables: str | Path | pd.DataFrame) -> pd.DataFrame:
    """Run DuckDB SQL over parquet files / frames bound to names, e.g. ``query(q, m="data/manifest.parquet")``."""
    import duckdb  # only for ad-hoc SQL: the manifest contract itself imports without it

    con = duckdb.connect()
    try:
        for name, value in tables.items():
            if isinstance(value, pd.DataFrame):
                con.register(name, value)
            else:
                con.execute(f"CREATE VIEW {name} AS SELECT * FROM read_parquet(?)", [str(value)])
        return con.execute(sql).df()
    finally:
        con.close()
