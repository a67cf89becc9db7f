"""Source adapters: Fitzpatrick17k, HAM10000 / ISIC, ISIC Archive exports, and generic CSV or ImageFolder.

Each adapter turns its source table into manifest rows (see ``manifest.MANIFEST_COLUMNS``) without
touching image bytes. Problems that make a row unreadable (unsafe path, malformed id) are recorded
in ``ingest_error`` rather than dropped; problems that make the whole table unusable (empty file,
wrong encoding, missing columns) raise ``IngestError`` with a message that says what to fix.
"""

from __future__ import annotations

import difflib
import io
import os
import re
from pathlib import Path, PurePosixPath, PureWindowsPath

import pandas as pd

from skinflow.data.manifest import Reason

F17K_COLUMNS = (
    "md5hash", "fitzpatrick_scale", "fitzpatrick_centaur", "label", "nine_partition_label",
    "three_partition_label", "qc", "url", "url_alphanum",
)
# Older Fitzpatrick17k releases (and the upstream training script) call the Scale AI column
# ``fitzpatrick``; accept it under its current name.
LEGACY_RENAMES = {"fitzpatrick": "fitzpatrick_scale"}
ISIC_CLASSES = ("MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC", "UNK")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
_MD5 = re.compile(r"^[0-9a-f]{32}$")
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,199}$")
HAM_TAXONOMY = Path(__file__).parent / "taxonomies" / "ham10000.csv"


class IngestError(ValueError):
    """The source table as a whole cannot be ingested."""


# --------------------------------------------------------------------------- table reading

def read_table(path: str | os.PathLike, encoding: str = "utf-8") -> tuple[pd.DataFrame, list[str]]:
    """Read a CSV as strings, tolerant of BOM and CRLF, strict about encoding. Returns (frame, notes)."""
    path = Path(path)
    if not path.exists():
        raise IngestError(f"{path}: source table not found")
    raw = path.read_bytes()
    if not raw.strip():
        raise IngestError(f"{path}: empty CSV (0 data bytes); expected a header row and data rows")
    try:
        text = raw.decode("utf-8-sig" if encoding.lower().replace("_", "-") == "utf-8" else encoding)
    except UnicodeDecodeError as exc:
        snippet = raw[max(0, exc.start - 20) : exc.start + 20]
        raise IngestError(
            f"{path}: not valid {encoding} at byte {exc.start} (near {snippet!r}); re-encode the "
            f"file as UTF-8 or set ingest.encoding to its real encoding (e.g. cp1252)"
        ) from None
    notes = []
    if "\r\n" in text:
        notes.append("CRLF line endings normalised")
    try:
        frame = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, na_filter=False)
    except pd.errors.ParserError as exc:
        raise IngestError(f"{path}: malformed CSV: {exc}") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    frame = frame.apply(lambda col: col.str.strip())
    return frame, notes


def require_columns(frame: pd.DataFrame, required: tuple[str, ...], path: str | os.PathLike,
                    notes: list[str]) -> pd.DataFrame:
    for old, new in LEGACY_RENAMES.items():
        if old in frame.columns and new in required and new not in frame.columns:
            frame = frame.rename(columns={old: new})
            notes.append(f"legacy column {old!r} read as {new!r}")
    missing = [c for c in required if c not in frame.columns]
    if missing:
        hints = []
        for name in missing:
            close = difflib.get_close_matches(name, list(frame.columns), n=1, cutoff=0.6)
            hints.append(f"{name!r}" + (f" (found {close[0]!r} — renamed?)" if close else ""))
        raise IngestError(
            f"{path}: missing required column(s) {', '.join(hints)}; "
            f"columns present: {list(frame.columns)}"
        )
    extra = [c for c in frame.columns if c not in required]
    if extra:
        notes.append(f"extra columns ignored: {extra}")
    return frame


def safe_relpath(value: str) -> str | None:
    """Return a normalised relative POSIX path, or None if it is absolute or escapes the root."""
    if not value or "\x00" in value:
        return None
    if PureWindowsPath(value).drive or value.startswith(("/", "\\", "~")):
        return None
    parts = PurePosixPath(value.replace("\\", "/")).parts
    if any(part == ".." for part in parts):
        return None
    return "/".join(p for p in parts if p != ".")


def _list_images(root: Path) -> set[str]:
    if not root.is_dir():
        raise IngestError(f"image root {root} does not exist or is not a directory")
    return {entry.name for entry in os.scandir(root) if entry.is_file()}


def _fitz(values: pd.Series) -> pd.Series:
    # Empty or non-integer values become NA, which validation quarantines as bad_fitzpatrick.
    number = pd.to_numeric(values, errors="coerce").astype("float64")
    whole = number.notna() & (number.abs() < 1e9) & (number == number.round())
    return number.where(whole).astype("Int64")


def _mark(rows: pd.DataFrame, mask: pd.Series, reason: str, detail: pd.Series | str) -> None:
    mask = mask & rows["ingest_error"].isna()
    rows.loc[mask, "ingest_error"] = reason
    rows.loc[mask, "ingest_detail"] = detail if isinstance(detail, str) else detail[mask]


# --------------------------------------------------------------------------- adapters

def fitzpatrick17k(csv: str | os.PathLike, image_root: str | os.PathLike, encoding: str = "utf-8"):
    """Fitzpatrick17k: images named ``<md5hash>.jpg`` or by ``url_alphanum`` in one folder."""
    table, notes = read_table(csv, encoding)
    table = require_columns(table, F17K_COLUMNS, csv, notes)
    names = _list_images(Path(image_root))
    rows = pd.DataFrame({
        "image_id": table["md5hash"].str.lower(),
        "source": "fitzpatrick17k",
        "source_row": range(len(table)),
        "declared_md5": table["md5hash"].str.lower(),
        "label": table["label"].replace("", pd.NA),
        "nine_partition_label": table["nine_partition_label"],
        "three_partition_label": table["three_partition_label"],
        "fitzpatrick_scale": _fitz(table["fitzpatrick_scale"]),
        "fitzpatrick_centaur": _fitz(table["fitzpatrick_centaur"]),
        "qc": table["qc"],
        "url": table["url"],
        "ingest_error": pd.Series([pd.NA] * len(table), dtype="string"),
        "ingest_detail": pd.Series([pd.NA] * len(table), dtype="string"),
    })
    by_md5 = rows["image_id"] + ".jpg"
    alnum = table["url_alphanum"].map(lambda v: v if safe_relpath(v) == v and "/" not in v else None)
    rows["rel_path"] = by_md5.where(by_md5.isin(names), alnum.where(alnum.isin(names), by_md5))
    _mark(rows, ~rows["image_id"].str.fullmatch(_MD5), Reason.BAD_ID,
          "md5hash is not 32 hex digits: " + table["md5hash"])
    _mark(rows, alnum.isna() & (table["url_alphanum"] != ""), Reason.UNSAFE_PATH,
          "unsafe url_alphanum: " + table["url_alphanum"])
    return rows, notes


def _dx_taxonomy() -> pd.DataFrame:
    return pd.read_csv(HAM_TAXONOMY, dtype=str).set_index("code")


def ham10000(csv: str | os.PathLike, image_root: str | os.PathLike, encoding: str = "utf-8"):
    """HAM10000-style metadata (``image_id``, ``dx``) or ISIC one-hot ground truth (``image`` + classes)."""
    table, notes = read_table(csv, encoding)
    dx_map = _dx_taxonomy()
    if "image" in table.columns and "MEL" in table.columns:
        table = require_columns(table, ("image",) + tuple(c for c in ISIC_CLASSES if c in table), csv, notes)
        classes = [c for c in ISIC_CLASSES if c in table.columns]
        onehot = table[classes].apply(pd.to_numeric, errors="coerce").fillna(0) >= 0.5
        n_hot = onehot.sum(axis=1)
        code = onehot.idxmax(axis=1).str.lower().where(n_hot == 1, "")
        ids, source = table["image"], "isic"
    else:
        table = require_columns(table, ("image_id", "dx"), csv, notes)
        code, ids, source = table["dx"].str.lower(), table["image_id"], "ham10000"
    known = code.isin(dx_map.index)
    rows = pd.DataFrame({
        "image_id": ids,
        "source": source,
        "source_row": range(len(table)),
        "label": code.map(dx_map["label"]).where(known, code),
        "nine_partition_label": code.map(dx_map["nine_partition_label"]),
        "three_partition_label": code.map(dx_map["three_partition_label"]),
        "fitzpatrick_scale": pd.Series([-1] * len(table), dtype="Int64"),
        "fitzpatrick_centaur": pd.Series([-1] * len(table), dtype="Int64"),
        "ingest_error": pd.Series([pd.NA] * len(table), dtype="string"),
        "ingest_detail": pd.Series([pd.NA] * len(table), dtype="string"),
    })
    rows["label"] = rows["label"].replace("", pd.NA)
    names = _list_images(Path(image_root))
    rows["rel_path"] = ids.map(lambda i: next((i + s for s in IMAGE_SUFFIXES if i + s in names), i + ".jpg"))
    _mark(rows, ~ids.str.fullmatch(_SAFE_ID), Reason.BAD_ID, "unsafe image id: " + ids)
    return rows, notes


def isic_archive(csv: str | os.PathLike, image_root: str | os.PathLike, encoding: str = "utf-8"):
    """An ISIC Archive export: ``isic_id`` or ``image_id``, a ``diagnosis`` name (``melanoma``, ``nevus`` ...)
    and optionally ``file`` (the image path under the root). Labels are the diagnosis names themselves, so
    the taxonomy file (``skinflow/data/taxonomies/isic_archive.csv``) lists those names; an empty diagnosis
    stays empty and validation quarantines the row as ``missing_label``."""
    table, notes = read_table(csv, encoding)
    if "isic_id" in table.columns and "image_id" not in table.columns:
        table = table.rename(columns={"isic_id": "image_id"})
        notes.append("column 'isic_id' read as 'image_id'")
    table = require_columns(table, ("image_id", "diagnosis") + (("file",) if "file" in table else ()), csv, notes)
    ids = table["image_id"]
    names = _list_images(Path(image_root)) if "file" not in table else set()
    by_id = ids.map(lambda i: next((i + s for s in IMAGE_SUFFIXES if i + s in names), i + ".jpg"))
    safe = table["file"].map(safe_relpath) if "file" in table else by_id
    rows = pd.DataFrame({
        "image_id": ids,
        "source": "isic_archive",
        "source_row": range(len(table)),
        "rel_path": safe.fillna(table.get("file", by_id)),
        "label": table["diagnosis"].str.lower().replace("", pd.NA),
        "fitzpatrick_scale": pd.Series([-1] * len(table), dtype="Int64"),
        "fitzpatrick_centaur": pd.Series([-1] * len(table), dtype="Int64"),
        "ingest_error": pd.Series([pd.NA] * len(table), dtype="string"),
        "ingest_detail": pd.Series([pd.NA] * len(table), dtype="string"),
    })
    _mark(rows, ~ids.str.fullmatch(_SAFE_ID), Reason.BAD_ID, "unsafe image id: " + ids)
    _mark(rows, safe.isna(), Reason.UNSAFE_PATH, "absolute or escaping file path: " + table.get("file", ids))
    return rows, notes


def generic(csv: str | os.PathLike | None, image_root: str | os.PathLike, encoding: str = "utf-8"):
    """A CSV with ``path,label`` (optional Fitzpatrick columns), or an ImageFolder ``root/<label>/<file>``
    when ``csv`` is null or names the image root itself (the form dvc.yaml can take as a dependency)."""
    root = Path(image_root)
    notes: list[str] = []
    if csv and Path(csv).is_dir():
        if Path(csv).resolve() != root.resolve():
            raise IngestError(f"csv {csv} is a directory but not the image root {root}: for an "
                              "ImageFolder set csv to the image root (or null)")
        csv = None
    if csv:
        table, notes = read_table(csv, encoding)
        table = require_columns(table, ("path", "label"), csv, notes)
    else:
        if not root.is_dir():
            raise IngestError(f"image root {root} does not exist or is not a directory")
        files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        table = pd.DataFrame({
            "path": [p.relative_to(root).as_posix() for p in files],
            "label": [p.parent.name.replace("_", " ") for p in files],
        })
    safe = table["path"].map(safe_relpath)
    rows = pd.DataFrame({
        # The path without its suffix: ImageFolder classes may reuse file names.
        "image_id": safe.map(lambda p: PurePosixPath(p).with_suffix("").as_posix()
                             if isinstance(p, str) else None).fillna(table["path"]),
        "source": "generic",
        "source_row": range(len(table)),
        "rel_path": safe.fillna(table["path"]),
        "label": table["label"].replace("", pd.NA),
        "fitzpatrick_scale": _fitz(table["fitzpatrick_scale"]) if "fitzpatrick_scale" in table
        else pd.Series([-1] * len(table), dtype="Int64"),
        "fitzpatrick_centaur": pd.Series([-1] * len(table), dtype="Int64"),
        "ingest_error": pd.Series([pd.NA] * len(table), dtype="string"),
        "ingest_detail": pd.Series([pd.NA] * len(table), dtype="string"),
    })
    _mark(rows, safe.isna(), Reason.UNSAFE_PATH, "absolute or escaping path: " + table["path"])
    return rows, notes


ADAPTERS = {"fitzpatrick17k": fitzpatrick17k, "ham10000": ham10000, "isic": ham10000,
            "isic_archive": isic_archive, "generic": generic}
