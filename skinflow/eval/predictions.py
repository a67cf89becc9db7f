"""From raw model outputs to an auditable prediction table.

``map_predictions`` parses every generation with the Stage II diagnosis parser and maps each listed
string onto the taxonomy through a :class:`~skinflow.eval.equivalence.LabelSpace`. It returns

* the per-image table (one row per input row, nothing dropped: an unparseable output keeps its row
  with ``parse_ok=False`` and empty lists, so format failures count as misses downstream), and
* the match-decision log (one row per listed item) recording the normalised string, the canonical
  label, the rule that produced it and whether it hit the truth exactly / equivalently, so a
  reviewer can audit why any hit counted.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from skinflow.captions.parser import parse_diagnoses
from skinflow.eval.equivalence import LabelSpace

REQUIRED_COLUMNS = ("image_id", "label", "fitzpatrick_scale", "raw_output")
FITZPATRICK_GROUPS = ("I-II", "III-IV", "V-VI", "unknown")
LOG_COLUMNS = ("image_id", "rank", "raw", "normalised", "canonical_label", "rule", "truth",
               "hit_exact", "hit_equivalent")

_GROUP_OF = {1: "I-II", 2: "I-II", 3: "III-IV", 4: "III-IV", 5: "V-VI", 6: "V-VI"}
_ROMAN = {"I": 1, "II": 2, "III": 3, "IV": 4, "V": 5, "VI": 6}


def fitzpatrick_group(scale: Any) -> str:
    """``"I-II" | "III-IV" | "V-VI" | "unknown"`` for a Fitzpatrick type.

    Accepts ints (Fitzpatrick17k's ``fitzpatrick_scale``), integral floats (a column with NaNs is
    read as float), digit strings and Roman numerals (the caption schema's ``fitzpatrick_type``).
    Anything else - Fitzpatrick17k's ``-1``, NaN, None, 0, 7, "unknown" - is ``"unknown"``, so an
    unlabelled image is reported in its own group rather than silently dropped.
    """
    if scale is None or isinstance(scale, bool):
        return "unknown"
    if isinstance(scale, str):
        text = scale.strip().upper()
        value = _ROMAN.get(text) or (int(text) if text.isdigit() else None)
    else:
        try:
            number = float(scale)
        except (TypeError, ValueError):
            return "unknown"
        value = int(number) if number.is_integer() else None  # NaN.is_integer() is False
    return _GROUP_OF.get(value, "unknown")


def _truth(value: Any) -> str | None:
    # A missing truth (NaN/None, or pd.NA from the manifest's string column) is an
    # out-of-taxonomy truth, not a crash and not the string "<NA>".
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    return str(value)


def map_predictions(raw: pd.DataFrame, space: LabelSpace) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Parse and map raw outputs. Returns ``(per_image, match_log)``.

    ``raw`` needs ``image_id, label`` (the truth), ``fitzpatrick_scale`` (int, -1 unknown) and
    ``raw_output``; extra columns are kept. Added per-image columns: ``parse_ok``, ``parse_error``
    (a ``ParseErrorCode`` value or None), ``ranked_raw`` (list[str]), ``ranked_labels``
    (list[str|None], None = out of vocabulary), ``n_items``, ``n_oov``, ``fitzpatrick_group``.
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in raw.columns]
    if missing:
        raise ValueError(f"raw predictions lack columns {missing}")
    if raw["image_id"].duplicated().any():
        # The log is keyed by (image_id, rank): duplicates would make an audit ambiguous.
        dups = raw.loc[raw["image_id"].duplicated(), "image_id"].unique()[:5].tolist()
        raise ValueError(f"duplicate image_id values, e.g. {dups}")

    per_image: dict[str, list[Any]] = {k: [] for k in
                                       ("parse_ok", "parse_error", "ranked_raw", "ranked_labels",
                                        "n_items", "n_oov")}
    log: list[tuple[Any, ...]] = []
    for image_id, truth, output in zip(raw["image_id"], raw["label"], raw["raw_output"]):
        truth = _truth(truth)
        # A NaN cell (a missing generation in a DataFrame) is an empty output, not a wrong type.
        parsed = parse_diagnoses(None if isinstance(output, float) and math.isnan(output) else output)
        items = list(parsed.diagnoses) if parsed.ok else []
        matches = [space.map(item) for item in items]
        labels = [m.label for m in matches]
        per_image["parse_ok"].append(bool(parsed.ok))
        per_image["parse_error"].append(None if parsed.error is None else str(parsed.error.code))
        per_image["ranked_raw"].append(items)
        per_image["ranked_labels"].append(labels)
        per_image["n_items"].append(len(items))
        per_image["n_oov"].append(sum(label is None for label in labels))
        for rank, m in enumerate(matches, start=1):
            hit = m.label is not None and m.label == truth
            log.append((image_id, rank, m.raw, m.normalised, m.label, m.rule, truth, hit,
                        bool(space.equivalent(m.label, truth))))

    table = raw.copy()
    for column, values in per_image.items():
        table[column] = pd.Series(values, index=raw.index, dtype=object)
    table["parse_ok"] = table["parse_ok"].astype(bool)
    table["n_items"] = table["n_items"].astype(int)
    table["n_oov"] = table["n_oov"].astype(int)
    table["fitzpatrick_group"] = [fitzpatrick_group(s) for s in raw["fitzpatrick_scale"]]
    # Built column-wise with explicit dtypes: record construction would turn None labels into NaN.
    dtypes = {"image_id": None, "rank": int, "hit_exact": bool, "hit_equivalent": bool}
    columns = zip(*log) if log else [()] * len(LOG_COLUMNS)
    match_log = pd.DataFrame({name: pd.Series(list(values), dtype=dtypes.get(name, object))
                              for name, values in zip(LOG_COLUMNS, columns)})
    return table, match_log
