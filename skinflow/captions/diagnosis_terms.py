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

_SEPARATOR = r"[\s_\-]+"


def _key(term: str) -> str:
    """Case- and separator-insensitive identity of a term (used to dedupe and map matches back)."""
    return " ".join(re.split(_SEPARATOR, term.strip().casefold()))


@lru_cache(maxsize=64)
def _compile(labels: tuple[str, ...]) -> tuple[re.Pattern[str], dict[str, str]]:
    canonical: dict[str, str] = {}
    for term in (*labels, *GENERIC_DIAGNOSIS_TERMS):  # labels first: report the taxonomy's spelling
        key = _key(term)
        if key and key not in canonical:
            canonical[key] = term
    # Longest first so "basal cell carcinoma" wins over "carcinoma" at the same position. An
    # optional plural suffix catches "melanomas" / "warts" without a stemmer.
    alternatives = sorted(canonical, key=len, reverse=True)
    body = "|".join(_SEPARATOR.join(re.escape(w) for w in key.split(" ")) for key in alternatives)
    pattern = re.compile(rf"(?<![\w])(?:{body})(?:e?s)?(?![\w])", re.IGNORECASE)
    return pattern, canonical


def mentions_diagnosis(text: str, labels: Iterable[str] = ()) -> list[str]:
    """Diagnosis names found in ``text``: taxonomy ``labels`` plus the built-in generic terms.

    Returns each distinct name once, in order of first appearance, spelled as in ``labels`` (or the
    built-in list). Empty when ``text`` names no diagnosis.
    """
    if not text:
        return []
    pattern, canonical = _compile(tuple(sorted({str(label) for label in labels if str(label).strip()})))
    found: list[str] = []
    for match in pattern.finditer(text):
        key = _key(match.group(0))
        # Undo the optional plural suffix: exact key first, then "-s", then "-es".
        name = next((canonical[k] for k in (key, key[:-1], key[:-2]) if k in canonical), match.group(0))
        if name not in found:
            found.append(name)
    return found
