"""Open-vocabulary label mapping and clinical equivalence, shared by rewards and evaluation.

Every predicted string is mapped to a canonical taxonomy label (or declared out of vocabulary) by
an explicit rule, so a reviewer can see why any hit counted: ``exact``, ``alias``, ``fuzzy`` or
``oov``. Two labels are clinically equivalent when they are the same label or share a group of the
versioned table in ``equivalence.yaml``.
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
    rule: str              # exact | alias | fuzzy | oov


class LabelSpace:
    """A taxonomy plus the equivalence table: canonical mapping, equivalence and hierarchy."""

    def __init__(self, taxonomy: pd.DataFrame, table_path: str | Path = TABLE_PATH,
                 fuzzy_cutoff: float = 0.92):
        data = yaml.safe_load(Path(table_path).read_text(encoding="utf-8"))
        self.version: str = data["version"]
        self.taxonomy = taxonomy.set_index("label")
        self.labels: tuple[str, ...] = tuple(sorted(self.taxonomy.index))
        self._by_norm = {normalise(label): label for label in self.labels}
        self._aliases = {normalise(k): v for k, v in (data.get("aliases") or {}).items()
                         if v in self.taxonomy.index}
        self._group: dict[str, int] = {}
        for number, group in enumerate(data.get("equivalent") or []):
            for label in group:
                if label in self.taxonomy.index:
                    self._group[label] = number
        self.fuzzy_cutoff = fuzzy_cutoff
        self.map = lru_cache(maxsize=65536)(self._map)

    def _map(self, raw: str) -> Match:
        norm = normalise(raw)
        if norm in self._by_norm:
            return Match(raw, norm, self._by_norm[norm], "exact")
        if norm in self._aliases:
            return Match(raw, norm, self._aliases[norm], "alias")
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
