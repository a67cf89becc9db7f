"""The Stage I caption: a schema-constrained clinical description of one skin image.

Every categorical field is a ``Literal`` over the closed vocabulary in ``skinflow/vocab.py``, so the exported
JSON Schema carries the enums (usable for constrained decoding and for reviewers). Set fields are
stored as tuples in vocabulary order with duplicates removed, so two captions that mean the same thing
render to the same bytes. Validation failures use stable pydantic error types (see ``ERROR_TYPES``)
that the parser maps onto its own error codes.

Regenerate the committed schema file after changing the model or vocabulary::

    python -m skinflow.captions.schema
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from skinflow import vocab
from skinflow.captions.diagnosis_terms import mentions_diagnosis
from skinflow.vocab import SCHEMA_VERSION, SET_FIELDS

SUMMARY_MAX_CHARS = 200
SCHEMA_PATH = Path(__file__).with_name("caption_schema.json")

# Custom pydantic error types raised below; the parser maps each to a ParseErrorCode.
ERROR_TYPES = ("summary_too_long", "summary_not_one_sentence", "diagnosis_in_summary", "none_not_alone")

# A sentence end followed by more text means more than one sentence.
_SENTENCE_BREAK = re.compile(r"[.!?][\"')\]]*\s+\S|[\r\n]")


def _lit(values: tuple[str, ...]) -> Any:
    return Literal[values]  # type: ignore[valid-type]  # Literal over a runtime tuple


# Module-level aliases so pydantic can resolve the (postponed) annotations by name.
ImageQuality = _lit(vocab.IMAGE_QUALITY)
BodySite = _lit(vocab.BODY_SITE)
PrimaryMorphology = _lit(vocab.PRIMARY_MORPHOLOGY)
SecondaryFeature = _lit(vocab.SECONDARY_FEATURES)
Colour = _lit(vocab.COLOUR)
BorderDefinition = _lit(vocab.BORDER_DEFINITION)
BorderRegularity = _lit(vocab.BORDER_REGULARITY)
Configuration = _lit(vocab.CONFIGURATION)
LesionCount = _lit(vocab.LESION_COUNT)
Distribution = _lit(vocab.DISTRIBUTION)
SizeClass = _lit(vocab.SIZE_CLASS)
FitzpatrickType = _lit(vocab.FITZPATRICK_TYPE)


class Caption(BaseModel):
    """One clinical description; construct directly, via ``from_attributes`` or ``parse_caption``."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        title="SkinFlowCaption",
        json_schema_extra={"description": "Schema-based clinical description of one skin image (SkinFlow Stage I)."},
    )

    schema_version: Literal[SCHEMA_VERSION] = SCHEMA_VERSION  # type: ignore[valid-type]
    image_quality: ImageQuality = Field(description="Photographic quality for assessment.")
    body_site: BodySite = Field(description="Anatomical site of the dominant lesion.")
    primary_morphology: tuple[PrimaryMorphology, ...] = Field(min_length=1)
    secondary_features: tuple[SecondaryFeature, ...] = Field(
        min_length=1, description="Use ['none'] when there are no secondary features."
    )
    colour: tuple[Colour, ...] = Field(min_length=1)
    border_definition: BorderDefinition
    border_regularity: BorderRegularity
    configuration: tuple[Configuration, ...] = Field(min_length=1)
    lesion_count: LesionCount = Field(description="single; few = 2-5; multiple = >5.")
    distribution: Distribution
    size_class: SizeClass = Field(description="Longest diameter of the dominant lesion.")
    fitzpatrick_type: FitzpatrickType
    summary: str = Field(
        min_length=1,
        max_length=SUMMARY_MAX_CHARS,
        description="One descriptive sentence; must not name a diagnosis.",
    )

    @field_validator(*SET_FIELDS, mode="after")
    @classmethod
    def _canonical_set(cls, value: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        order = SET_FIELDS[info.field_name]
        terms = tuple(sorted(set(value), key=order.index))
        if "none" in terms and len(terms) > 1:
            raise PydanticCustomError("none_not_alone", "'none' cannot be combined with other terms")
        return terms

    @field_validator("summary", mode="before")
    @classmethod
    def _check_summary(cls, value: Any, info: ValidationInfo) -> Any:
        if not isinstance(value, str):
            return value  # let pydantic report the type error
        value = value.strip()
        if len(value) > SUMMARY_MAX_CHARS:
            raise PydanticCustomError(
                "summary_too_long", "summary has {n} characters (max {m})",
                {"n": len(value), "m": SUMMARY_MAX_CHARS},
            )
        if _SENTENCE_BREAK.search(value):
            raise PydanticCustomError("summary_not_one_sentence", "summary must be one sentence")
        labels = (info.context or {}).get("diagnosis_labels", ())
        named = mentions_diagnosis(value, labels)
        if named:
            raise PydanticCustomError(
                "diagnosis_in_summary", "summary names a diagnosis: {names}", {"names": ", ".join(named)}
            )
        return value

    @classmethod
    def from_attributes(cls, row: Mapping[str, Any], *, diagnosis_labels: tuple[str, ...] = ()) -> Caption:
        """Caption from a SkinSynth attributes row (schema field names; sets as lists/arrays).

        The summary is always composed from the attributes by a fixed template, so the oracle caption
        is a pure function of the row. Integer Fitzpatrick scales (-1..6) are mapped to roman numerals.
        """
        fields: dict[str, Any] = {}
        for name in vocab.SCALAR_FIELDS:
            value = _plain(row[name])
            if name == "fitzpatrick_type" and isinstance(value, int | float) and not isinstance(value, bool):
                value = vocab.fitzpatrick_roman(int(value)) if not math.isnan(value) else "unknown"
            fields[name] = value
        for name in SET_FIELDS:
            value = _plain(row[name])
            fields[name] = [value] if isinstance(value, str) else list(value)
        # Validate first (placeholder summary) so the summary is composed from canonical terms.
        draft = cls.model_validate({**fields, "summary": "pending"}).model_dump()
        draft["summary"] = compose_summary(draft)
        return cls.model_validate(draft, context={"diagnosis_labels": diagnosis_labels})


def _plain(value: Any) -> Any:
    """numpy scalars/arrays -> Python str/list so validation sees ordinary types."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


# ---- templated summary -------------------------------------------------------------------------

_PLURAL = {"patch": "patches", "bulla": "bullae", "comedo": "comedones", "telangiectasia": "telangiectasiae"}
_SIZE = {"lt_5mm": "under 5 mm", "5_to_10mm": "5-10 mm", "10_to_30mm": "10-30 mm", "gt_30mm": "over 30 mm"}
_SITE = {"unknown": "at an unspecified site", "genital": "in the genital area", "mucosa": "on the mucosa"}
_COUNT = {"single": "A single", "few": "A few", "multiple": "Multiple"}


def _words(term: str) -> str:
    # Compound adjectives keep a hyphen ("well-defined", "blue-grey"); nouns get a space.
    if term.endswith(("_defined", "_grey", "_coloured")):
        return term.replace("_", "-")
    return term.replace("_", " ")


def _join(terms: list[str], limit: int) -> str:
    shown = terms[:limit]
    if len(terms) > limit:
        shown = [*shown, "others"]
    return shown[0] if len(shown) == 1 else ", ".join(shown[:-1]) + " and " + shown[-1]


def compose_summary(f: Mapping[str, Any]) -> str:
    """Deterministic one-sentence summary (≤ SUMMARY_MAX_CHARS) from validated-looking fields.

    Optional clauses are dropped from the end, then long term lists shortened, until it fits.
    """
    plural = f["lesion_count"] != "single"
    morph = [_PLURAL.get(m, m + "s") if plural else m for m in f["primary_morphology"]]
    colours = [_words(c) for c in f["colour"]]
    features = [_words(s) for s in f["secondary_features"] if s != "none"]
    site = _SITE.get(f["body_site"], f"on the {f['body_site']}")
    for limit in (99, 3, 2, 1):
        head = f"{_COUNT.get(f['lesion_count'], 'A')} {_words(f['border_definition'])} {_join(colours, limit)}"
        head += f" {_join(morph, limit)}"
        if features:
            head += f" with {_join(features, limit)}"
        clauses = [
            f"{head} {site}",
            _SIZE.get(f["size_class"], str(f["size_class"])),
            f"{f['border_regularity']} border",
            f"{_join([_words(c) for c in f['configuration']], limit)} configuration",
            f"{f['distribution']} distribution",
            f"Fitzpatrick type {f['fitzpatrick_type']} skin"
            if f["fitzpatrick_type"] != "unknown"
            else "Fitzpatrick type not assessable",
        ]
        for keep in range(len(clauses), 0, -1):
            text = ", ".join(clauses[:keep]) + "."
            if len(text) <= SUMMARY_MAX_CHARS:
                return text
    return text[: SUMMARY_MAX_CHARS - 1].rstrip(" ,") + "."


# ---- JSON Schema export --------------------------------------------------------------------------


def caption_json_schema() -> dict[str, Any]:
    """JSON Schema (draft 2020-12) of ``Caption``; committed as ``caption_schema.json``."""
    schema = Caption.model_json_schema()
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}


def caption_json_schema_text() -> str:
    return json.dumps(caption_json_schema(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write_caption_schema(path: str | Path = SCHEMA_PATH) -> Path:
    from skinflow.io import write_text  # local import: io pulls pandas, not needed for validation

    write_text(path, caption_json_schema_text())
    return Path(path)


if __name__ == "__main__":
    print(write_caption_schema())
