from __future__ import annotations

import pytest

from skinflow.captions.diagnosis_terms import mentions_diagnosis

LABELS = ["basal_cell_carcinoma", "Pityriasis rosea", "lichen simplex chronicus"]


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ("An erythematous scaly plaque on the elbow.", []),
        ("Findings suggest PSORIASIS.", ["psoriasis"]),
        ("Pearly nodule, likely Basal-cell carcinoma.", ["basal_cell_carcinoma"]),  # longest match wins
        ("Two melanomas and several warts", ["melanoma", "wart"]),  # plurals
        ("nevi and a naevus", ["nevi", "naevus"]),
        ("pityriasis rosea or eczema, then eczema again", ["Pityriasis rosea", "eczema"]),
        ("lichen simplex chronicus vs lichen planus", ["lichen simplex chronicus", "lichen planus"]),
        ("eczematous, psoriasiform and carcinomatous changes", []),  # whole words only
        ("melanomatosis; dermatitisherpetiformis", []),
        ("a tumour, a cyst and an ulcer", []),  # morphology vocabulary is not a diagnosis
        ("", []),
    ],
)
def test_mentions_diagnosis(text, found):
    assert mentions_diagnosis(text, LABELS) == found


def test_labels_accept_any_iterable_and_generic_terms_apply_without_labels():
    assert mentions_diagnosis("rosea pityriasis", iter(["pityriasis rosea"])) == []
    assert mentions_diagnosis("pityriasis-rosea", (l for l in ["pityriasis rosea"])) == ["pityriasis rosea"]
    assert mentions_diagnosis("actinic keratosis", []) == ["actinic keratosis"]
