"""Known weaknesses of Fitzpatrick17k-style tables, reported as warnings (never quarantined).

- empty source url, expert QC verdicts ("3 Wrongly labelled"), skin-type disagreement between the
  two annotators, unknown skin types;
- overlapping label names (word-order twins, a label contained in another, a label that is also a
  nine-partition name);
- probable label noise: the atlas folder in the source URL names a *different* taxonomy label than
  the row's own — the dataset was labelled automatically from those folders.
"""

from __future__ import annotations

import difflib
import re
from functools import lru_cache
from itertools import combinations

import pandas as pd

_WORD = re.compile(r"[a-z]+")


def _tokens(text: str) -> frozenset[str]:
    return frozenset(_WORD.findall(text.lower()))


def _flat(text: str) -> str:
    return " ".join(_WORD.findall(text.lower()))


def url_folder(url: str | None) -> str | None:
    """The atlas folder of a source URL (the path segment before the file), if it has one."""
    if not isinstance(url, str) or not url or "?" in url:
        return None
    parts = [p for p in url.split("/") if p]
    return parts[-2] if len(parts) >= 4 else None


class FolderMatcher:
    """Decides whether a URL folder names a label: all label words present, or a close spelling."""

    def __init__(self, labels: list[str], own_similarity: float = 0.8, other_similarity: float = 0.9):
        self.labels = sorted(labels)
        self.own_similarity = own_similarity
        self.other_similarity = other_similarity
        self.verdict = lru_cache(maxsize=None)(self._verdict)

    def names(self, folder: str, label: str, threshold: float) -> bool:
        if _tokens(label) <= _tokens(folder):
            return True
        return difflib.SequenceMatcher(None, _flat(folder), _flat(label)).ratio() >= threshold

    def _verdict(self, folder: str, label: str) -> str | None:
        """None if the folder supports the label or names nothing known, else the other label."""
        if self.names(folder, label, self.own_similarity):
            return None
        for other in self.labels:
            if other != label and self.names(folder, other, self.other_similarity):
                return other
        return None


def overlapping_labels(taxonomy: pd.DataFrame) -> list[dict]:
    labels = sorted(taxonomy["label"])
    nine = set(taxonomy["nine_partition_label"])
    pairs = []
    for a, b in combinations(labels, 2):
        ta, tb = _tokens(a), _tokens(b)
        if ta == tb:
            pairs.append({"labels": [a, b], "kind": "same_words"})
        elif ta < tb or tb < ta:
            pairs.append({"labels": [a, b], "kind": "contained"})
    for label in labels:
        if label in nine:
            pairs.append({"labels": [label], "kind": "also_nine_partition_name"})
    return pairs


def find_oddities(rows: pd.DataFrame, taxonomy: pd.DataFrame, own_similarity: float = 0.8,
                  other_similarity: float = 0.9) -> dict:
    qc = rows["qc"].fillna("")
    scale, centaur = rows["fitzpatrick_scale"], rows["fitzpatrick_centaur"]
    both_known = scale.between(1, 6) & centaur.between(1, 6)
    disagree = both_known & (scale != centaur)
    qc_codes = qc[qc != ""].str.extract(r"^\s*(\d+)\s*(.*)$")
    qc_counts = (qc_codes[0] + " " + qc_codes[1]).value_counts().sort_index().to_dict()

    matcher = FolderMatcher(list(taxonomy["label"]), own_similarity, other_similarity)
    folders = rows["url"].map(url_folder)
    noise = pd.Series(
        [matcher.verdict(f, l) if isinstance(f, str) and isinstance(l, str) else None
         for f, l in zip(folders, rows["label"])], index=rows.index, dtype="object")
    flagged = noise.notna()
    noise_pairs = (pd.DataFrame({"label": rows.loc[flagged, "label"], "folder": folders[flagged],
                                 "folder_names": noise[flagged]})
                   .value_counts().reset_index(name="rows"))
    overlaps = overlapping_labels(taxonomy)
    label_counts = rows["label"].value_counts()
    for pair in overlaps:
        pair["rows"] = {label: int(label_counts.get(label, 0)) for label in pair["labels"]}
    return {
        "empty_url": int((rows["url"].fillna("") == "").sum()),
        "qc_checked": int((qc != "").sum()),
        "qc_verdicts": {k: int(v) for k, v in qc_counts.items()},
        "qc_wrongly_labelled": int(qc.str.contains("wrongly", case=False).sum()),
        "fitzpatrick_scale_unknown": int((scale == -1).sum()),
        "fitzpatrick_centaur_unknown": int((centaur == -1).sum()),
        "skin_type_both_known": int(both_known.sum()),
        "skin_type_disagreement": int(disagree.sum()),
        "skin_type_disagreement_gt1": int((both_known & ((scale - centaur).abs() > 1)).sum()),
        "overlapping_labels": overlaps,
        "probable_label_noise": int(flagged.sum()),
        "probable_label_noise_per_label": rows.loc[flagged, "label"].value_counts().to_dict(),
        "probable_label_noise_pairs": noise_pairs.to_dict(orient="records"),
        "url_folder_unverifiable": int((folders.isna()).sum()),
    }
