"""Label noise from atlas folders: does the URL folder support the row's label?

Fitzpatrick17k was labelled from the folders of two atlases, so a folder that names another
condition is evidence of a wrong label. Each (label, folder) pair gets one verdict:

- ``supports``: the folder names the label, a spelling of it, a subtype, or a condition the label
  accepts (``accepts`` in the vocabulary);
- ``different``: the folder names a condition the label does not accept;
- ``nothing``: a generic word, a number, or nothing the vocabulary knows.

Folder and label words are normalised through ``taxonomies/derm_vocabulary.yaml`` (spelling
variants such as ``erytrasma``, French names, plurals, typos); word order is free. When several
conditions match, one whose words contain another's wins (``parapsoriasis`` over ``psoriasis``,
``non langerhans cell histiocytosis`` over ``langerhans cell histiocytosis``). The nine-partition
names and all taxonomy labels are conditions too.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import pandas as pd
import yaml

from skinflow.data.oddities import url_folder

VOCABULARY = Path(__file__).parent / "taxonomies" / "derm_vocabulary.yaml"
VERDICTS = ("different", "nothing", "supports")
_STOP = frozenset({"and", "of", "the", "in", "a", "to", "from", "after", "due", "with", "by", "on", "type",
                   "form", "minor", "head"})
_WORD = re.compile(r"[a-z]+")


@dataclass(frozen=True)
class Verdict:
    verdict: str
    evidence: str


def _stem(word: str) -> str:
    # Plural 's' only; Latin endings (-is, -us, -ss) are left alone.
    return word[:-1] if len(word) > 4 and word.endswith("s") and not word.endswith(("ss", "is", "us")) else word


class FolderVocabulary:
    def __init__(self, labels: list[str], nine_partitions: list[str] = (), path: Path = VOCABULARY):
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        self.spelling = {k: str(v) for k, v in data["spelling"].items()}
        self.generic = {_stem(w) for w in data["generic"]}
        concepts: dict[str, list[str]] = {name: list(terms) for name, terms in data["concepts"].items()}
        for name in [*labels, *nine_partitions]:  # every label and partition name is a condition
            concepts.setdefault(name, []).append(name)
        self.terms = [(name, self.words(term)) for name, terms in concepts.items() for term in terms]
        self.accepts = {label: {label, *data["accepts"].get(label, [])} for label in labels}
        for label in labels:  # a label that adds words to another names a subtype of it
            words = self.words(label)
            self.accepts[label] |= {other for other in labels if words < self.words(other)}
        self.verdict = lru_cache(maxsize=None)(self._verdict)

    def words(self, text: str) -> frozenset[str]:
        out = []
        for word in _WORD.findall(text.lower()):
            out.extend(self.spelling.get(word, word).split())
        return frozenset(_stem(w) for w in out if w not in _STOP)

    def _matches(self, folder: frozenset[str]) -> list[tuple[str, frozenset[str]]]:
        found = [(name, term) for name, term in self.terms if term and term <= folder]
        # A match whose words are a strict subset of another match's words is the less specific one.
        return [(n, t) for n, t in found if not any(t < other for _, other in found)]

    def _own(self, label: str, folder_text: str, folder: frozenset[str]) -> bool:
        core = frozenset(w for w in self.words(label) if len(w) > 3)  # drops abbreviations like "ssm"
        if core and core <= folder:
            return True
        flat_label = "".join(_WORD.findall(label.lower()))
        flat_folder = "".join(_WORD.findall(folder_text.lower()))
        return (flat_label in flat_folder
                or difflib.SequenceMatcher(None, " ".join(sorted(self.words(label))),
                                           " ".join(sorted(folder))).ratio() >= 0.85)

    def _verdict(self, label: str, folder_text: str) -> Verdict:
        folder = self.words(folder_text)
        if not folder:
            return Verdict("nothing", "no words")
        accepted = self.accepts.get(label, {label})
        matches = self._matches(folder)
        own_words = frozenset(w for w in self.words(label) if len(w) > 3)
        # The label itself counts as matched when all its core words are in the folder, unless a
        # more specific condition's words contain them (that condition then decides).
        if own_words and own_words <= folder and not any(own_words < t for _, t in matches):
            matches.append((label, own_words))
        hits = sorted({n for n, _ in matches if n in accepted})
        if hits:
            return Verdict("supports", f"names {', '.join(hits)}")
        others = sorted({n for n, _ in matches})
        if others:
            return Verdict("different", f"names {', '.join(others)}")
        if self._own(label, folder_text, folder):
            return Verdict("supports", "spelling of the label")
        if folder <= self.generic:
            return Verdict("nothing", "generic word(s)")
        return Verdict("nothing", "names no condition in the vocabulary")


def review_table(rows: pd.DataFrame, vocabulary: FolderVocabulary) -> pd.DataFrame:
    """One row per (label, folder) pair: rows, verdict, evidence; 'different' first, then by rows."""
    folders = rows["url"].map(url_folder)
    pairs = (pd.DataFrame({"label": rows["label"], "folder": folders}).dropna()
             .value_counts().reset_index(name="rows"))
    verdicts = [vocabulary.verdict(l, f) for l, f in zip(pairs["label"], pairs["folder"])]
    pairs["verdict"] = [v.verdict for v in verdicts]
    pairs["evidence"] = [v.evidence for v in verdicts]
    order = pairs["verdict"].map({v: i for i, v in enumerate(VERDICTS)})
    return (pairs.assign(_o=order).sort_values(["_o", "rows", "label", "folder"],
                                               ascending=[True, False, True, True])
            .drop(columns="_o").reset_index(drop=True))


def flag_rows(rows: pd.DataFrame, vocabulary: FolderVocabulary) -> pd.Series:
    """Boolean per row: the URL folder names a condition the label does not accept."""
    folders = rows["url"].map(url_folder) if "url" in rows else pd.Series(None, index=rows.index)
    flags = [isinstance(f, str) and isinstance(l, str) and vocabulary.verdict(l, f).verdict == "different"
             for l, f in zip(rows["label"], folders)]
    return pd.Series(flags, index=rows.index, dtype="boolean")


def vocabulary_for(taxonomy: pd.DataFrame) -> FolderVocabulary:
    return FolderVocabulary(sorted(taxonomy["label"]), sorted(set(taxonomy["nine_partition_label"])))


def report(rows: pd.DataFrame, taxonomy: pd.DataFrame, listed: int = 60) -> dict:
    table = review_table(rows, vocabulary_for(taxonomy))
    by_verdict = table.groupby("verdict")["rows"].agg(["size", "sum"])
    return {
        "pairs": int(len(table)),
        "pairs_by_verdict": {k: int(v) for k, v in by_verdict["size"].items()},
        "rows_by_verdict": {k: int(v) for k, v in by_verdict["sum"].items()},
        "flagged_rows": int(table.loc[table["verdict"] == "different", "rows"].sum()),
        "review_table": table.head(listed).to_dict(orient="records"),
    }
