"""Open-vocabulary label mapping and clinical equivalence, shared by rewards and evaluation.

Every predicted string is mapped to a canonical taxonomy label (or declared out of vocabulary) by
an explicit rule, so a reviewer can see why any hit counted: ``exact``, ``alias``, ``equivalent``,
``fuzzy`` or ``oov``. Two labels are clinically equivalent when they are the same label or share a
group of the versioned table in ``equivalence.yaml``.

Any taxonomy works, not only Fitzpatrick17k's: a small label space (HAM10000, ISIC) keeps the groups
and aliases that touch its labels. When a group has exactly one label in the taxonomy, the group's
other names map onto it (rule ``equivalent``: "malignant melanoma" is "melanoma" where only
"melanoma" exists), and an alias whose target is absent follows that target's group the same way.
A taxonomy with a ``code`` column (``skinflow/data/taxonomies/ham10000.csv``: akiec, bcc, nv, ...)
adds its codes as aliases where the versioned table has none.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import pandas as pd
import yaml

TABLE_PATH = Path(__file__).with_name("equivalence.yaml")
# Revision of the mapping rules in this module (the table has its own version); reports carry both.
MAPPING_RULES = "skinflow-mapping/2"
_FOLD = (("naevus", "nevus"), ("naevi", "nevi"), ("oedema", "edema"), ("haem", "hem"),
         ("tumour", "tumor"), ("seborrhoeic", "seborrheic"), ("colour", "color"))


def normalise(text: str) -> str:
    text = text.lower().replace("'s ", "s ").replace("’s ", "s ")
    text = re.sub(r"[^a-z0-9]+", " ", text).strip()
    for british, american in _FOLD:
        text = text.replace(british, american)
    return text


@dataclass(frozen=True)
class Match:
    raw: str
    normalised: str
    label: str | None      # canonical taxonomy label, None when out of vocabulary
    rule: str              # exact | alias | equivalent | fuzzy | oov


class LabelSpace:
    """A taxonomy plus the equivalence table: canonical mapping, equivalence and hierarchy."""

    def __init__(self, taxonomy: pd.DataFrame, table_path: str | Path = TABLE_PATH,
                 fuzzy_cutoff: float = 0.92):
        data = yaml.safe_load(Path(table_path).read_text(encoding="utf-8"))
        self.version: str = data["version"]
        self.rules_version = MAPPING_RULES
        # A code table lists one label once per code (HAM10000's akiec and ak); keep one row per label.
        self.taxonomy = _one_row_per_label(taxonomy).set_index("label")
        self.labels: tuple[str, ...] = tuple(sorted(self.taxonomy.index))
        self._by_norm = {normalise(label): label for label in self.labels}
        self._group: dict[str, int] = {}
        self._group_target: dict[str, str] = {}   # normalised absent group member -> its present label
        for number, group in enumerate(data.get("equivalent") or []):
            present = [label for label in group if label in self.taxonomy.index]
            for label in present:
                self._group[label] = number
            if len(present) == 1:
                for label in group:
                    if label not in self.taxonomy.index:
                        self._group_target[normalise(label)] = present[0]
        self._aliases = {}
        for name, target in (data.get("aliases") or {}).items():
            resolved = target if target in self.taxonomy.index else self._group_target.get(normalise(target))
            if resolved is not None:
                self._aliases[normalise(name)] = resolved
        if "code" in taxonomy.columns:
            for code, label in zip(taxonomy["code"], taxonomy["label"]):
                if isinstance(code, str) and code.strip():
                    self._aliases.setdefault(normalise(code), label)
        self.fuzzy_cutoff = fuzzy_cutoff
        self.map = lru_cache(maxsize=65536)(self._map)

    @property
    def n_classes(self) -> int:
        return len(self.labels)

    def _map(self, raw: str) -> Match:
        norm = normalise(raw)
        if norm in self._by_norm:
            return Match(raw, norm, self._by_norm[norm], "exact")
        if norm in self._aliases:
            return Match(raw, norm, self._aliases[norm], "alias")
        if norm in self._group_target:
            return Match(raw, norm, self._group_target[norm], "equivalent")
        close = difflib.get_close_matches(norm, list(self._by_norm), n=1, cutoff=self.fuzzy_cutoff)
        if close:
            return Match(raw, norm, self._by_norm[close[0]], "fuzzy")
        return Match(raw, norm, None, "oov")

    def equivalent(self, a: str | None, b: str | None) -> bool:
        if a is None or b is None:
            return False
        return a == b or (a in self._group and self._group.get(a) == self._group.get(b))

    def nine(self, label: str) -> str | None:
        return self.taxonomy.at[label, "nine_partition_label"] if label in self.taxonomy.index else None

    def three(self, label: str) -> str | None:
        return self.taxonomy.at[label, "three_partition_label"] if label in self.taxonomy.index else None

    def is_malignant(self, label: str | None) -> bool:
        return label is not None and self.three(label) == "malignant"


def _one_row_per_label(taxonomy: pd.DataFrame) -> pd.DataFrame:
    columns = [c for c in ("label", "nine_partition_label", "three_partition_label") if c in taxonomy.columns]
    rows = taxonomy[columns].drop_duplicates()
    conflicting = rows["label"][rows["label"].duplicated()].unique().tolist()
    if conflicting:
        raise ValueError(f"taxonomy gives labels {conflicting[:5]} more than one partition path")
    return rows.reset_index(drop=True)
