"""Closed clinical vocabularies shared by SkinSynth, the caption schema, rewards and evaluation.

Terms are lower-case snake_case so they survive JSON, tokenisers and CSV unchanged. Changing any
tuple here changes the caption schema, so bump ``SCHEMA_VERSION`` with it.
"""

from __future__ import annotations

SCHEMA_VERSION = "skinflow-caption/1.0"

IMAGE_QUALITY = ("good", "acceptable", "poor")

BODY_SITE = (
    "scalp", "face", "neck", "trunk", "back", "arm", "hand", "leg", "foot", "genital",
    "nail", "mucosa", "unknown",
)

PRIMARY_MORPHOLOGY = (
    "macule", "patch", "papule", "plaque", "nodule", "vesicle", "bulla", "pustule", "wheal",
    "cyst", "tumour", "erosion", "ulcer", "comedo", "telangiectasia",
)

SECONDARY_FEATURES = (
    "scale", "crust", "excoriation", "lichenification", "atrophy", "hyperkeratosis",
    "fissure", "umbilication", "central_clearing", "pigment_network", "white_striae",
    "bleeding", "none",
)

COLOUR = (
    "erythematous", "pink", "violaceous", "brown", "black", "blue_grey", "white", "yellow",
    "skin_coloured", "hyperpigmented", "hypopigmented", "depigmented",
)

BORDER_DEFINITION = ("well_defined", "ill_defined")
BORDER_REGULARITY = ("regular", "irregular")

CONFIGURATION = (
    "round", "oval", "annular", "arcuate", "linear", "targetoid", "reticular", "grouped",
    "serpiginous", "irregular",
)

LESION_COUNT = ("single", "few", "multiple")  # few = 2-5, multiple = more than 5
DISTRIBUTION = ("localised", "clustered", "scattered", "generalised")

# Longest diameter of the dominant lesion.
SIZE_CLASS = ("lt_5mm", "5_to_10mm", "10_to_30mm", "gt_30mm")

FITZPATRICK_TYPE = ("I", "II", "III", "IV", "V", "VI", "unknown")

# Which fields take one value and which take a set; rewards and metrics score them differently.
SCALAR_FIELDS = {
    "image_quality": IMAGE_QUALITY,
    "body_site": BODY_SITE,
    "border_definition": BORDER_DEFINITION,
    "border_regularity": BORDER_REGULARITY,
    "lesion_count": LESION_COUNT,
    "distribution": DISTRIBUTION,
    "size_class": SIZE_CLASS,
    "fitzpatrick_type": FITZPATRICK_TYPE,
}
SET_FIELDS = {
    "primary_morphology": PRIMARY_MORPHOLOGY,
    "secondary_features": SECONDARY_FEATURES,
    "colour": COLOUR,
    "configuration": CONFIGURATION,
}


def fitzpatrick_roman(scale: int) -> str:
    """Map Fitzpatrick17k's integer scale (-1 = unknown) onto the schema's roman numerals."""
    return FITZPATRICK_TYPE[scale - 1] if 1 <= scale <= 6 else "unknown"
