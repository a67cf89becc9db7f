"""Detect diagnosis names in free text.

Stage I captions must describe what is visible, never name a diagnosis (that is Stage II's job), so
summaries are screened with :func:`mentions_diagnosis`; RL rewards use the same function to penalise
leakage. Matching is on whole words, case-insensitive, and treats spaces, hyphens and underscores as
the same separator, so the taxonomy label ``basal_cell_carcinoma`` also catches "Basal-cell carcinoma".
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Iterable

# Generic diagnosis words a model may emit even when the taxonomy spells the label differently.
# Deliberately excludes morphology vocabulary ("cyst", "tumour", "ulcer", "telangiectasia"): those
# are allowed descriptive terms in the caption schema.
GENERIC_DIAGNOSIS_TERMS: tuple[str, ...] = (
    "acne", "actinic keratosis", "angioma", "basal cell carcinoma", "bcc", "benign", "cancer",
    "carcinoma", "cellulitis", "dermatitis", "dermatofibroma", "dermatosis", "eczema", "folliculitis",
    "haemangioma", "hemangioma", "herpes", "impetigo", "keratoacanthoma", "keratosis", "lentigo",
    "lichen planus", "lipoma", "lupus", "lymphoma", "malignancy", "malignant", "melanoma", "metastasis",
    "mole", "molluscum", "mycosis fungoides", "naevus", "nevus", "naevi", "nevi", "pemphigoid",
    "pemphigus", "psoriasis", "rosacea", "sarcoma", "scabies", "scc", "shingles", "tinea",
    "urticaria", "verruca", "vitiligo", "wart", "zoster",
)

# Words are runs of letters/digits, so spaces, hyphens, underscores and punctuation all separate.
_WORD = re.compile(r"[^\W_]+")

_Entry = tuple[tuple[str, ...], str]  # (lower-case words, name to report)


@lru_cache(maxsize=64)
def _index(labels: tuple[str, ...]) -> tuple[dict[str, str], dict[str, list[_Entry]], frozenset[str]]:
    """(single-word form -> name, first word -> multi-word entries longest first, all start words).

    Single-word terms are indexed with their "-s"/"-es" plurals so a text word costs one lookup.
    """
    single: dict[str, str] = {}
    multi: dict[str, list[_Entry]] = {}
    for term in (*labels, *GENERIC_DIAGNOSIS_TERMS):  # labels first: report the taxonomy's spelling
        words = tuple(_WORD.findall(str(term).casefold()))
        if len(words) == 1:
            for form in (words[0], words[0] + "s", words[0] + "es"):
                single.setdefault(form, str(term))
        elif words and all(words != e[0] for e in multi.get(words[0], ())):
            multi.setdefault(words[0], []).append((words, str(term)))
    for entries in multi.values():
        entries.sort(key=lambda entry: -len(entry[0]))
    return single, multi, frozenset(single) | frozenset(multi)


def mentions_diagnosis(text: str, labels: Iterable[str] = ()) -> list[str]:
    """Diagnosis names found in ``text``: taxonomy ``labels`` plus the built-in generic terms.

    Whole-word, case-insensitive; separators (space, hyphen, underscore, punctuation) are
    interchangeable and the last word may carry a plural "-s"/"-es". Returns each distinct name once,
    in order of first appearance, spelled as in ``labels`` (or the built-in list).
    """
    if not text:
        return []
    single, multi, starts = _index(labels if isinstance(labels, tuple) else tuple(labels))
    words = _WORD.findall(text.casefold())
    if starts.isdisjoint(words):  # the common case, checked at C speed
        return []
    found: list[str] = []
    i = 0
    while i < len(words):
        name, span = None, 1
        for target, term in multi.get(words[i], ()):  # longest multi-word match first
            if _matches(words, i, target):
                name, span = term, len(target)
                break
        if name is None:
            name = single.get(words[i])
        if name is not None and name not in found:
            found.append(name)
        i += span
    return found


def _matches(words: list[str], i: int, target: tuple[str, ...]) -> bool:
    n = len(target)
    if i + n > len(words) or words[i : i + n - 1] != list(target[:-1]):
        return False
    last = words[i + n - 1]
    return last in (target[-1], target[-1] + "s", target[-1] + "es")
