"""SkinSynth: a seeded procedural dermatology dataset in Fitzpatrick17k's exact file format.

Sixteen real Fitzpatrick17k conditions (with their real nine/three partitions) each have a
probabilistic profile over the caption schema's closed vocabularies. Profiles overlap on purpose
(brown lesions, erythematous plaques, annular rings, nodules are shared), so a diagnosis needs a
combination of cues. Every image is drawn from a per-image RNG seeded with ``(seed, index)``, so the
output is byte-identical for a seed whatever the worker count. Images always depict their label;
the Fitzpatrick17k-style noise lives in the metadata only (URL folder naming another condition,
qc flags, annotator disagreement, unknown skin type, empty URLs).

Output (``generate``): ``fitzpatrick17k.csv``, ``images/<md5hash>.jpg``, ``attributes.parquet``
(ground-truth schema attributes + rendering metadata) and ``taxonomy.csv``.
"""

from __future__ import annotations

import io
import multiprocessing as mp
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import Field, field_validator

from skinflow import vocab
from skinflow.config import Section
from skinflow.data import skinsynth_render as render_mod
from skinflow.io import atomic_dir, md5_bytes, write_csv, write_parquet

__all__ = ["CONDITIONS", "Condition", "SynthConfig", "generate", "sample_attributes", "taxonomy_frame"]

CSV_COLUMNS = ("md5hash", "fitzpatrick_scale", "fitzpatrick_centaur", "label", "nine_partition_label",
               "three_partition_label", "qc", "url", "url_alphanum")
QC_VALUES = (("1 Diagnostic", 0.4), ("2 Characteristic", 0.3), ("3 Wrongly labelled", 0.1),
             ("4 Other", 0.12), ("5 Potentially", 0.08))
# Fitzpatrick17k skews towards types II-III; dark skin is present but rarer.
SKIN_TYPE_WEIGHTS = ((1, 0.15), (2, 0.28), (3, 0.23), (4, 0.16), (5, 0.11), (6, 0.07))
URL_ROOT = "https://skinsynth.example/atlas/clinical-pic"
URL_VARIANT_RATE = 0.06
PLURALS = {"nevus": "nevi", "keratosis": "keratoses", "carcinoma": "carcinomas", "melanoma": "melanomas",
           "sarcoma": "sarcomas", "granuloma": "granulomas", "dermatofibroma": "dermatofibromas"}
FEW_DISTRIBUTIONS = ("localised", "clustered", "scattered")
MULTIPLE_DISTRIBUTIONS = ("clustered", "scattered", "generalised")
SHAPES = frozenset({"round", "oval", "annular", "arcuate", "linear", "targetoid", "reticular",
                    "serpiginous", "irregular"})
ARRANGEMENTS = frozenset({"grouped", "linear"})
SCALAR_ATTRS = ("image_quality", "body_site", "border_definition", "border_regularity", "lesion_count",
                "distribution", "size_class")
SET_ATTRS = ("primary_morphology", "secondary_features", "colour", "configuration")

Weights = tuple[tuple[str, float], ...]


def _w(spec: str) -> Weights:
    """'plaque=.8 papule=.3' -> (('plaque', 0.8), ('papule', 0.3))."""
    return tuple((k, float(v)) for k, v in (item.split("=") for item in spec.split()))


@dataclass(frozen=True)
class Condition:
    """A condition and its probabilistic profile over the caption schema.

    Weights fields pick exactly one value (relative weights); inclusion fields include each value
    independently with the given probability.
    """

    label: str
    nine_partition_label: str
    three_partition_label: str
    morphology: Weights                  # main lesion morphology (weights)
    morphology_extra: Weights            # further morphologies (inclusion)
    secondary: Weights                   # secondary features (inclusion)
    colour: Weights                      # fill colours (inclusion; first sampled = dominant)
    shape: Weights                       # configuration of each lesion (weights)
    arrangement: Weights                 # grouped / linear arrangement (inclusion, needs >1 lesion)
    border_definition: Weights
    border_regularity: Weights
    lesion_count: Weights
    distribution: Weights
    size_class: Weights
    body_site: Weights
    style: Weights = ()                  # rendering hints (inclusion), e.g. pearly, stuck_on
    confusable: tuple[str, ...] = field(default=())   # labels a URL folder may wrongly name

    def support(self, attr: str) -> set[str]:
        """Every value this profile can emit for a schema attribute."""
        names = lambda ws: {k for k, p in ws if p > 0}  # noqa: E731
        if attr == "primary_morphology":
            return names(self.morphology) | names(self.morphology_extra)
        if attr == "secondary_features":
            return names(self.secondary) | {"none"}
        if attr == "colour":
            out = names(self.colour)
            if names(self.secondary) & {"scale", "white_striae"}:
                out.add("white")
            if "crust" in names(self.secondary) or "pustule" in self.support("primary_morphology"):
                out.add("yellow")
            return out
        if attr == "configuration":
            return names(self.shape) | names(self.arrangement)
        return names(getattr(self, attr))


def _c(label, nine, three, **kw) -> Condition:
    conf = tuple(kw.pop("confusable", "").split(",")) if kw.get("confusable") else ()
    return Condition(label, nine, three, confusable=conf, **{k: _w(v) for k, v in kw.items()})


CONDITIONS: tuple[Condition, ...] = (
    _c("melanoma", "malignant melanoma", "malignant",
       morphology="macule=.1 patch=.25 plaque=.35 papule=.1 nodule=.2", morphology_extra="nodule=.15 ulcer=.08",
       secondary="pigment_network=.35 bleeding=.08 crust=.08 scale=.05 hyperkeratosis=.03 atrophy=.03",
       colour="brown=.9 black=.6 blue_grey=.3 hyperpigmented=.2 pink=.12 erythematous=.08 white=.06",
       shape="irregular=.55 oval=.25 round=.15", arrangement="",
       border_definition="well_defined=.45 ill_defined=.55", border_regularity="irregular=.8 regular=.2",
       lesion_count="single=.92 few=.08", distribution="localised=.7 clustered=.3",
       size_class="lt_5mm=.07 5_to_10mm=.35 10_to_30mm=.5 gt_30mm=.08",
       body_site="back=.3 trunk=.2 leg=.2 arm=.12 face=.1 foot=.04 scalp=.02 neck=.02",
       confusable="nevocytic nevus,seborrheic keratosis,basal cell carcinoma"),
    _c("basal cell carcinoma", "malignant epidermal", "malignant",
       morphology="nodule=.45 papule=.35 plaque=.15 patch=.05",
       morphology_extra="telangiectasia=.65 ulcer=.2 erosion=.1",
       secondary="crust=.2 bleeding=.15 atrophy=.05 scale=.1 umbilication=.05",
       colour="pink=.75 skin_coloured=.3 erythematous=.2 brown=.12 black=.05 white=.1",
       shape="round=.5 oval=.3 irregular=.2", arrangement="",
       border_definition="well_defined=.7 ill_defined=.3", border_regularity="regular=.6 irregular=.4",
       lesion_count="single=.9 few=.1", distribution="localised=.8 clustered=.2",
       size_class="lt_5mm=.15 5_to_10mm=.45 10_to_30mm=.35 gt_30mm=.05",
       body_site="face=.55 neck=.1 scalp=.05 trunk=.1 back=.1 arm=.05 hand=.05", style="pearly=.75",
       confusable="squamous cell carcinoma,pyogenic granuloma,actinic keratosis"),
    _c("squamous cell carcinoma", "malignant epidermal", "malignant",
       morphology="nodule=.45 plaque=.35 tumour=.1 papule=.1", morphology_extra="ulcer=.3 erosion=.1",
       secondary="hyperkeratosis=.6 crust=.45 scale=.35 bleeding=.15 fissure=.05",
       colour="erythematous=.6 pink=.4 skin_coloured=.15 yellow=.2 white=.1 brown=.05",
       shape="round=.35 oval=.25 irregular=.4", arrangement="",
       border_definition="well_defined=.55 ill_defined=.45", border_regularity="regular=.45 irregular=.55",
       lesion_count="single=.88 few=.12", distribution="localised=.8 clustered=.2",
       size_class="lt_5mm=.05 5_to_10mm=.25 10_to_30mm=.55 gt_30mm=.15",
       body_site="face=.3 hand=.2 arm=.15 scalp=.12 leg=.1 neck=.05 trunk=.05 genital=.03",
       confusable="basal cell carcinoma,actinic keratosis,seborrheic keratosis"),
    _c("actinic keratosis", "malignant epidermal", "malignant",
       morphology="macule=.2 papule=.45 plaque=.35", morphology_extra="",
       secondary="scale=.8 hyperkeratosis=.3 crust=.15 atrophy=.05",
       colour="erythematous=.6 pink=.5 brown=.2 skin_coloured=.15 yellow=.05",
       shape="irregular=.35 round=.3 oval=.35", arrangement="",
       border_definition="well_defined=.3 ill_defined=.7", border_regularity="regular=.45 irregular=.55",
       lesion_count="single=.25 few=.4 multiple=.35", distribution="localised=.3 scattered=.55 clustered=.15",
       size_class="lt_5mm=.3 5_to_10mm=.5 10_to_30mm=.2",
       body_site="face=.45 scalp=.2 hand=.15 arm=.15 neck=.05",
       confusable="squamous cell carcinoma,seborrheic keratosis,psoriasis"),
    _c("kaposi sarcoma", "malignant dermal", "malignant",
       morphology="macule=.15 patch=.2 plaque=.3 nodule=.35", morphology_extra="nodule=.2 papule=.1",
       secondary="bleeding=.05 crust=.05 scale=.03",
       colour="violaceous=.85 erythematous=.2 brown=.35 blue_grey=.1 hyperpigmented=.15 pink=.05",
       shape="oval=.5 round=.3 irregular=.15 linear=.05", arrangement="linear=.05",
       border_definition="well_defined=.6 ill_defined=.4", border_regularity="regular=.5 irregular=.5",
       lesion_count="single=.2 few=.4 multiple=.4", distribution="localised=.3 scattered=.4 clustered=.3",
       size_class="lt_5mm=.1 5_to_10mm=.4 10_to_30mm=.4 gt_30mm=.1",
       body_site="leg=.35 foot=.25 arm=.1 trunk=.1 face=.08 back=.07 genital=.05", style="halo=.4",
       confusable="pyogenic granuloma,lichen planus,melanoma"),
    _c("seborrheic keratosis", "benign epidermal", "benign",
       morphology="macule=.05 papule=.35 plaque=.55 nodule=.05", morphology_extra="",
       secondary="hyperkeratosis=.75 scale=.35 fissure=.2 crust=.1",
       colour="brown=.85 hyperpigmented=.3 black=.25 yellow=.1 skin_coloured=.1",
       shape="oval=.45 round=.35 irregular=.2", arrangement="",
       border_definition="well_defined=.85 ill_defined=.15", border_regularity="regular=.55 irregular=.45",
       lesion_count="single=.5 few=.3 multiple=.2", distribution="localised=.3 scattered=.6 clustered=.1",
       size_class="lt_5mm=.1 5_to_10mm=.35 10_to_30mm=.45 gt_30mm=.1",
       body_site="trunk=.35 back=.3 face=.15 neck=.08 arm=.07 scalp=.05", style="stuck_on=.8",
       confusable="melanoma,nevocytic nevus,actinic keratosis"),
    _c("nevocytic nevus", "benign melanocyte", "benign",
       morphology="macule=.4 papule=.5 nodule=.05 plaque=.05", morphology_extra="",
       secondary="pigment_network=.35 hyperkeratosis=.03",
       colour="brown=.9 hyperpigmented=.2 skin_coloured=.1 black=.08 pink=.06",
       shape="round=.6 oval=.35 irregular=.05", arrangement="",
       border_definition="well_defined=.85 ill_defined=.15", border_regularity="regular=.85 irregular=.15",
       lesion_count="single=.75 few=.2 multiple=.05", distribution="localised=.4 scattered=.6",
       size_class="lt_5mm=.45 5_to_10mm=.45 10_to_30mm=.1",
       body_site="trunk=.3 back=.25 face=.15 arm=.12 leg=.1 neck=.05 scalp=.03",
       confusable="melanoma,seborrheic keratosis,dermatofibroma"),
    _c("dermatofibroma", "benign dermal", "benign",
       morphology="papule=.7 nodule=.2 plaque=.1", morphology_extra="",
       secondary="pigment_network=.25 scale=.1 atrophy=.05",
       colour="brown=.75 pink=.3 hyperpigmented=.3 skin_coloured=.15 erythematous=.1 white=.15",
       shape="round=.6 oval=.4", arrangement="",
       border_definition="well_defined=.6 ill_defined=.4", border_regularity="regular=.8 irregular=.2",
       lesion_count="single=.85 few=.15", distribution="localised=.8 scattered=.2",
       size_class="lt_5mm=.35 5_to_10mm=.55 10_to_30mm=.1",
       body_site="leg=.55 arm=.25 trunk=.1 back=.1", style="pale_centre=.6",
       confusable="nevocytic nevus,basal cell carcinoma,kaposi sarcoma"),
    _c("pyogenic granuloma", "benign dermal", "benign",
       morphology="papule=.35 nodule=.6 tumour=.05", morphology_extra="erosion=.25 ulcer=.1",
       secondary="bleeding=.55 crust=.35 scale=.15",
       colour="erythematous=.9 pink=.3 violaceous=.1 black=.05",
       shape="round=.65 oval=.35", arrangement="",
       border_definition="well_defined=.9 ill_defined=.1", border_regularity="regular=.75 irregular=.25",
       lesion_count="single=.95 few=.05", distribution="localised=1",
       size_class="lt_5mm=.2 5_to_10mm=.5 10_to_30mm=.3",
       body_site="hand=.35 face=.25 mucosa=.08 foot=.1 arm=.1 scalp=.05 trunk=.07", style="glossy=.9",
       confusable="basal cell carcinoma,kaposi sarcoma,squamous cell carcinoma"),
    _c("psoriasis", "inflammatory", "non-neoplastic",
       morphology="plaque=.85 papule=.1 patch=.05", morphology_extra="papule=.25 pustule=.04",
       secondary="scale=.9 fissure=.08 excoriation=.05 crust=.05 hyperkeratosis=.1",
       colour="erythematous=.85 pink=.4 violaceous=.1 hyperpigmented=.1",
       shape="oval=.3 round=.3 irregular=.35 annular=.05", arrangement="",
       border_definition="well_defined=.9 ill_defined=.1", border_regularity="regular=.6 irregular=.4",
       lesion_count="single=.2 few=.35 multiple=.45",
       distribution="localised=.3 scattered=.45 generalised=.2 clustered=.05",
       size_class="lt_5mm=.1 5_to_10mm=.15 10_to_30mm=.45 gt_30mm=.3",
       body_site="arm=.25 leg=.25 scalp=.15 back=.15 trunk=.1 hand=.05 genital=.03 foot=.02",
       style="silvery=.8", confusable="eczema,lichen planus,actinic keratosis"),
    _c("acne vulgaris", "inflammatory", "non-neoplastic",
       morphology="papule=.55 pustule=.35 comedo=.05 cyst=.05",
       morphology_extra="pustule=.55 comedo=.5 papule=.4 nodule=.15 cyst=.1",
       secondary="crust=.15 excoriation=.1",
       colour="erythematous=.85 pink=.3 hyperpigmented=.25 skin_coloured=.1 black=.15",
       shape="round=.9 oval=.1", arrangement="grouped=.1",
       border_definition="well_defined=.5 ill_defined=.5", border_regularity="regular=.7 irregular=.3",
       lesion_count="few=.15 multiple=.85", distribution="scattered=.6 clustered=.25 generalised=.15",
       size_class="lt_5mm=.8 5_to_10mm=.2", body_site="face=.6 back=.2 trunk=.15 neck=.05",
       confusable="eczema,urticaria,psoriasis"),
    _c("eczema", "inflammatory", "non-neoplastic",
       morphology="patch=.35 plaque=.45 papule=.15 vesicle=.05",
       morphology_extra="papule=.35 vesicle=.2 erosion=.15",
       secondary="excoriation=.6 crust=.45 scale=.45 lichenification=.35 fissure=.15",
       colour="erythematous=.85 pink=.35 hyperpigmented=.25 brown=.1 violaceous=.05",
       shape="irregular=.65 oval=.15 round=.1 annular=.05", arrangement="grouped=.1",
       border_definition="well_defined=.15 ill_defined=.85", border_regularity="regular=.25 irregular=.75",
       lesion_count="single=.35 few=.35 multiple=.3",
       distribution="localised=.35 clustered=.3 scattered=.2 generalised=.15",
       size_class="5_to_10mm=.15 10_to_30mm=.45 gt_30mm=.4",
       body_site="hand=.25 arm=.25 leg=.2 face=.1 neck=.1 trunk=.1",
       confusable="psoriasis,lichen planus,urticaria"),
    _c("granuloma annulare", "inflammatory", "non-neoplastic",
       morphology="papule=.45 plaque=.45 patch=.1", morphology_extra="papule=.5",
       secondary="central_clearing=.75 scale=.03",
       colour="skin_coloured=.55 pink=.55 erythematous=.25 violaceous=.15 brown=.1 hyperpigmented=.1",
       shape="annular=.8 arcuate=.15 round=.05", arrangement="",
       border_definition="well_defined=.7 ill_defined=.3", border_regularity="regular=.6 irregular=.4",
       lesion_count="single=.45 few=.4 multiple=.15", distribution="localised=.5 clustered=.2 scattered=.3",
       size_class="5_to_10mm=.15 10_to_30mm=.6 gt_30mm=.25",
       body_site="hand=.35 arm=.25 foot=.15 leg=.15 trunk=.1", style="beaded_ring=.7",
       confusable="urticaria,psoriasis,eczema"),
    _c("vitiligo", "inflammatory", "non-neoplastic",
       morphology="macule=.35 patch=.65", morphology_extra="", secondary="",
       colour="depigmented=.9 white=.6 hypopigmented=.2",
       shape="irregular=.65 oval=.2 round=.1 linear=.05", arrangement="",
       border_definition="well_defined=.85 ill_defined=.15", border_regularity="regular=.3 irregular=.7",
       lesion_count="single=.3 few=.35 multiple=.35", distribution="localised=.3 scattered=.5 generalised=.2",
       size_class="5_to_10mm=.2 10_to_30mm=.4 gt_30mm=.4",
       body_site="face=.25 hand=.25 arm=.1 leg=.1 genital=.08 trunk=.1 neck=.06 foot=.06",
       confusable="eczema,psoriasis,granuloma annulare"),
    _c("lichen planus", "inflammatory", "non-neoplastic",
       morphology="papule=.6 plaque=.4", morphology_extra="papule=.4 erosion=.05",
       secondary="white_striae=.55 scale=.25 hyperkeratosis=.05 excoriation=.1",
       colour="violaceous=.85 erythematous=.2 hyperpigmented=.3 brown=.2 pink=.1",
       shape="round=.3 oval=.2 irregular=.3 reticular=.1 annular=.1", arrangement="linear=.15 grouped=.2",
       border_definition="well_defined=.8 ill_defined=.2", border_regularity="regular=.6 irregular=.4",
       lesion_count="single=.1 few=.3 multiple=.6",
       distribution="localised=.1 clustered=.4 scattered=.35 generalised=.15",
       size_class="lt_5mm=.35 5_to_10mm=.35 10_to_30mm=.25 gt_30mm=.05",
       body_site="arm=.3 leg=.3 mucosa=.1 trunk=.1 back=.05 genital=.05 hand=.1", style="polygonal=.7",
       confusable="psoriasis,eczema,kaposi sarcoma"),
    _c("urticaria", "inflammatory", "non-neoplastic",
       morphology="wheal=.9 plaque=.1", morphology_extra="", secondary="excoriation=.15 central_clearing=.3",
       colour="erythematous=.8 pink=.6 skin_coloured=.1",
       shape="annular=.25 arcuate=.2 irregular=.25 oval=.15 round=.1 serpiginous=.05 targetoid=.05",
       arrangement="", border_definition="well_defined=.75 ill_defined=.25",
       border_regularity="regular=.5 irregular=.5", lesion_count="single=.05 few=.3 multiple=.65",
       distribution="scattered=.5 generalised=.3 clustered=.2",
       size_class="lt_5mm=.05 5_to_10mm=.25 10_to_30mm=.5 gt_30mm=.2",
       body_site="trunk=.35 arm=.2 back=.15 leg=.15 face=.1 neck=.05",
       confusable="granuloma annulare,eczema,psoriasis"),
)
_BY_LABEL = {c.label: c for c in CONDITIONS}


def _check_profiles() -> None:
    fields = {"primary_morphology": vocab.PRIMARY_MORPHOLOGY, "secondary_features": vocab.SECONDARY_FEATURES,
              "colour": vocab.COLOUR, "configuration": vocab.CONFIGURATION, "body_site": vocab.BODY_SITE,
              "border_definition": vocab.BORDER_DEFINITION, "border_regularity": vocab.BORDER_REGULARITY,
              "lesion_count": vocab.LESION_COUNT, "distribution": vocab.DISTRIBUTION,
              "size_class": vocab.SIZE_CLASS}
    for cond in CONDITIONS:
        for attr, allowed in fields.items():
            bad = cond.support(attr) - set(allowed)
            if bad:
                raise AssertionError(f"{cond.label}.{attr}: not in vocabulary: {sorted(bad)}")
        if not {k for k, _ in cond.shape} <= SHAPES or not {k for k, _ in cond.arrangement} <= ARRANGEMENTS:
            raise AssertionError(f"{cond.label}: bad shape/arrangement")
        if not set(cond.confusable) <= set(_BY_LABEL):
            raise AssertionError(f"{cond.label}: unknown confusable label")


_check_profiles()


class SynthConfig(Section):
    """params.yaml section ``synth``."""

    enabled: bool = True  # false when ingest reads real data: the stage then renders nothing
    seed: int = 17
    n_images: int = Field(3000, ge=1, le=1_000_000)
    image_size: int = Field(128, ge=64, le=256)
    jpeg_quality: int = Field(90, ge=10, le=100)
    conditions: list[str] | None = None
    unknown_skin_type_rate: float = Field(0.03, ge=0, le=1)
    annotator_disagreement_rate: float = Field(0.35, ge=0, le=1)
    qc_rate: float = Field(0.03, ge=0, le=1)
    label_noise_rate: float = Field(0.02, ge=0, le=1)
    empty_url_rate: float = Field(0.005, ge=0, le=1)

    @field_validator("conditions")
    @classmethod
    def _known_conditions(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        if not value:
            raise ValueError("conditions must be null (all) or a non-empty list")
        unknown = [v for v in value if v not in _BY_LABEL]
        if unknown:
            raise ValueError(f"unknown condition(s) {unknown}; known: {sorted(_BY_LABEL)}")
        if len(set(value)) != len(value):
            raise ValueError("conditions contains duplicates")
        return value

    @classmethod
    def tiny(cls, **kw) -> "SynthConfig":
        """~64 images at 64 px, every condition at least 3 times: for tests."""
        return cls(**{"n_images": 64, "image_size": 64, **kw})


def _conditions(labels=None) -> list[Condition]:
    if labels is None:
        return list(CONDITIONS)
    return [c if isinstance(c, Condition) else _BY_LABEL[c] for c in labels]


def taxonomy_frame(conditions=None, counts: dict[str, int] | None = None) -> pd.DataFrame:
    """label, nine_partition_label, three_partition_label, count (0 unless ``counts`` is given).

    ``conditions``: labels or ``Condition`` objects (None = all 16).
    """
    conds = _conditions(conditions)
    return pd.DataFrame({
        "label": [c.label for c in conds],
        "nine_partition_label": [c.nine_partition_label for c in conds],
        "three_partition_label": [c.three_partition_label for c in conds],
        "count": [int((counts or {}).get(c.label, 0)) for c in conds],
    })


# --------------------------------------------------------------------------- sampling

def _pick(rng: np.random.Generator, weights: Weights | list) -> str:
    keys = [k for k, _ in weights]
    cum = np.cumsum([w for _, w in weights], dtype=float)
    return keys[min(int(np.searchsorted(cum, rng.random() * cum[-1], side="right")), len(keys) - 1)]


def _include(rng: np.random.Generator, weights: Weights) -> list[str]:
    draws = rng.random(len(weights)) if weights else []
    return [k for (k, p), u in zip(weights, draws) if u < p]


def sample_attributes(cond: Condition, rng: np.random.Generator) -> tuple[dict, dict]:
    """Sample (schema attributes without image_quality/fitzpatrick_type, rendering hints)."""
    count = _pick(rng, cond.lesion_count)
    if count == "single":
        dist = "localised"
    else:
        allowed = FEW_DISTRIBUTIONS if count == "few" else MULTIPLE_DISTRIBUTIONS
        options = [(k, w) for k, w in cond.distribution if k in allowed] or [(k, 1.0) for k in allowed]
        dist = _pick(rng, options)
    size = _pick(rng, cond.size_class)
    main = _pick(rng, cond.morphology)
    extras = [m for m in _include(rng, cond.morphology_extra) if m != main]
    if count == "single":
        extras = [m for m in extras if m not in render_mod.SATELLITE]
    shape = _pick(rng, cond.shape)
    arrangement = _include(rng, cond.arrangement) if count != "single" else []
    secondary = _include(rng, cond.secondary)
    if shape not in ("annular", "arcuate"):
        secondary = [f for f in secondary if f != "central_clearing"]
    fill = _include(rng, cond.colour)
    if main in render_mod.FLAT:
        fill = [c for c in fill if c != "skin_coloured"]
    if not fill:
        fill = [_pick(rng, [(k, w) for k, w in cond.colour if not (main in render_mod.FLAT and k == "skin_coloured")])]
    if "pigment_network" in secondary and not set(fill) & {"brown", "black", "hyperpigmented", "blue_grey"}:
        secondary.remove("pigment_network")
    colour = set(fill)
    if set(secondary) & {"scale", "white_striae"}:
        colour.add("white")
    if "crust" in secondary or "pustule" in extras or main == "pustule":
        colour.add("yellow")
    attrs = {
        "body_site": _pick(rng, cond.body_site),
        "border_definition": _pick(rng, cond.border_definition),
        "border_regularity": _pick(rng, cond.border_regularity),
        "lesion_count": count, "distribution": dist, "size_class": size,
        "primary_morphology": sorted({main, *extras}),
        "secondary_features": sorted(set(secondary)) or ["none"],
        "colour": sorted(colour),
        "configuration": sorted({shape, *arrangement}),
    }
    hints = {"main_morph": main, "morph_extra": extras, "shape": shape, "arrangement": arrangement,
             "fill": fill, "secondary": secondary, "style": _include(rng, cond.style)}
    return attrs, hints


def _folder_slug(label: str, rng: np.random.Generator) -> str:
    words = label.split()
    if rng.random() < URL_VARIANT_RATE:
        variants = []
        if len(words) > 1:
            variants += ["_".join(words), "".join(words)]
        if words[-1] in PLURALS:
            variants.append("-".join(words[:-1] + [PLURALS[words[-1]]]))
        if variants:
            return variants[int(rng.integers(len(variants)))]
    return "-".join(words)


def _centaur(scale: int, true_type: int, disagree: bool, rng: np.random.Generator) -> int:
    if not disagree:
        return scale
    if scale == -1:
        return int(np.clip(true_type + rng.integers(-1, 2), 1, 6))
    if rng.random() < 0.1:
        return -1
    step = int(rng.choice((1, 1, 1, 1, 1, 1, 1, 1, 2, 2))) * int(rng.choice((-1, 1)))
    value = scale + step if 1 <= scale + step <= 6 else scale - step
    return int(np.clip(value, 1, 6))


def _make_item(job: tuple) -> dict:
    """Worker: everything about image ``index`` from SeedSequence([seed, index])."""
    seed, index, label, flags, size, jpeg_quality, labels_pool = job
    meta_rng, attr_rng, render_rng = (np.random.default_rng(s)
                                      for s in np.random.SeedSequence([seed, index]).spawn(3))
    cond = _BY_LABEL[label]
    true_type = int(_pick(meta_rng, [(str(k), w) for k, w in SKIN_TYPE_WEIGHTS]))
    scale = -1 if flags["unknown"] else true_type
    centaur = _centaur(scale, true_type, flags["disagree"], meta_rng)
    url_label = label
    if flags["noise"]:
        others = [c for c in cond.confusable if c != label]
        pool = [c for c in labels_pool if c != label] or [c.label for c in CONDITIONS if c.label != label]
        url_label = others[int(meta_rng.integers(len(others)))] if others and meta_rng.random() < 0.7 \
            else pool[int(meta_rng.integers(len(pool)))]
    slug = _folder_slug(url_label, meta_rng)
    qc = ""
    if flags["qc"]:
        qc = "3 Wrongly labelled" if flags["noise"] else _pick(meta_rng, QC_VALUES)
    attrs, hints = sample_attributes(cond, attr_rng)
    spec = {**attrs, **hints, "skin_type": true_type}
    image, rmeta = render_mod.render(spec, size, render_rng)
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=jpeg_quality)
    data = buf.getvalue()
    return {"index": index, "jpeg": data, "md5hash": md5_bytes(data), "label": label, "scale": scale,
            "centaur": centaur, "true_type": true_type, "qc": qc, "slug": slug, "url_label": url_label,
            "empty_url": flags["empty"], "attrs": attrs, "hints": hints, "render": rmeta}


def _exact_flags(rng: np.random.Generator, n: int, rate: float) -> np.ndarray:
    mask = np.zeros(n, bool)
    k = min(n, int(round(rate * n)))
    if k:
        mask[rng.choice(n, size=k, replace=False)] = True
    return mask


def _plan(cfg: SynthConfig) -> list[tuple]:
    conds = _conditions(cfg.conditions)
    n = cfg.n_images
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 0x5EED5EED, n + 1]))
    labels = [conds[i % len(conds)].label for i in range(n)]
    labels = [labels[i] for i in rng.permutation(n)]
    flags = {"unknown": _exact_flags(rng, n, cfg.unknown_skin_type_rate),
             "disagree": _exact_flags(rng, n, cfg.annotator_disagreement_rate),
             "qc": _exact_flags(rng, n, cfg.qc_rate),
             "noise": _exact_flags(rng, n, cfg.label_noise_rate),
             "empty": _exact_flags(rng, n, cfg.empty_url_rate)}
    pool = tuple(c.label for c in conds)
    return [(cfg.seed, i, labels[i], {k: bool(v[i]) for k, v in flags.items()}, cfg.image_size,
             cfg.jpeg_quality, pool) for i in range(n)]


def _alphanum(url: str) -> str:
    stem = url[: -len(".jpg")] if url.endswith(".jpg") else url
    return re.sub(r"[^A-Za-z0-9]", "", stem) + ".jpg"


# --------------------------------------------------------------------------- generation

def generate(out_dir: str | Path, cfg: SynthConfig, progress: bool = False,
             workers: int | None = None) -> dict:
    """Write the dataset into ``out_dir`` (replaced atomically) and return a summary.

    ``workers``: processes to render with (None = half the cores, at most 4, for 300+ images). The
    output is byte-identical for any worker count.
    """
    started = time.perf_counter()
    jobs = _plan(cfg)
    if workers is None:
        workers = 1 if len(jobs) < 300 else max(1, min(4, (os.cpu_count() or 1) // 2))
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(jobs), desc="skinsynth", unit="img")
    items: list[dict] = []
    if workers <= 1:
        for job in jobs:
            items.append(_make_item(job))
            bar and bar.update()
    else:
        # fork: children need nothing from __main__ (works from notebooks and unguarded scripts).
        method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
        with mp.get_context(method).Pool(workers) as pool:
            for item in pool.imap(_make_item, jobs, chunksize=8):
                items.append(item)
                bar and bar.update()
    if bar:
        bar.close()
    md5s = [it["md5hash"] for it in items]
    if len(set(md5s)) != len(md5s):
        raise RuntimeError("SkinSynth produced duplicate images; change the seed")

    counters: dict[str, int] = {}
    csv_rows, attr_rows = [], []
    for it in items:
        url = alnum = ""
        if not it["empty_url"]:
            # number per alphanumeric folder key, so spelling variants never share a url_alphanum
            key = re.sub(r"[^a-z0-9]", "", it["slug"])
            counters[key] = counters.get(key, 0) + 1
            url = f"{URL_ROOT}/{it['slug'][0]}/{it['slug']}/{it['slug']}{counters[key]}.jpg"
            alnum = _alphanum(url)
        cond = _BY_LABEL[it["label"]]
        csv_rows.append((it["md5hash"], it["scale"], it["centaur"], it["label"], cond.nine_partition_label,
                         cond.three_partition_label, it["qc"], url, alnum))
        rmeta = it["render"]
        attr_rows.append({
            "md5hash": it["md5hash"], "label": it["label"],
            "fitzpatrick_type": vocab.fitzpatrick_roman(it["true_type"]),
            "image_quality": rmeta["image_quality"],
            **{k: it["attrs"][k] for k in SCALAR_ATTRS if k != "image_quality"},
            **{k: it["attrs"][k] for k in SET_ATTRS},
            "row_index": it["index"], "url_label": it["url_label"], "label_noise": bool(url) and it["url_label"] != it["label"],
            "fill_colours": list(it["hints"]["fill"]), "style": sorted(it["hints"]["style"]),
            **{k: v for k, v in rmeta.items() if k != "image_quality"},
        })
    csv = pd.DataFrame(csv_rows, columns=list(CSV_COLUMNS))
    attributes = pd.DataFrame(attr_rows)
    counts = csv["label"].value_counts().to_dict()
    taxonomy = taxonomy_frame(cfg.conditions, counts)

    with atomic_dir(out_dir) as tmp:
        images = tmp / "images"
        images.mkdir()
        for it in items:
            (images / f"{it['md5hash']}.jpg").write_bytes(it["jpeg"])
        write_csv(tmp / "fitzpatrick17k.csv", csv)
        write_parquet(tmp / "attributes.parquet", attributes)
        write_csv(tmp / "taxonomy.csv", taxonomy)

    return {
        "out_dir": str(out_dir), "seed": cfg.seed, "n_images": len(items), "image_size": cfg.image_size,
        "label_counts": {c.label: int(counts.get(c.label, 0)) for c in _conditions(cfg.conditions)},
        "skin_type_counts": {vocab.fitzpatrick_roman(k): sum(it["true_type"] == k for it in items)
                             for k in range(1, 7)},
        "image_quality_counts": attributes["image_quality"].value_counts().to_dict(),
        "n_unknown_skin_type": int((csv["fitzpatrick_scale"] == -1).sum()),
        "n_qc": int((csv["qc"] != "").sum()), "n_label_noise": int(attributes["label_noise"].sum()),
        "n_empty_url": int((csv["url"] == "").sum()), "workers": workers,
        "seconds": round(time.perf_counter() - started, 2),
    }
