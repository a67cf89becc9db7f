from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from skinflow import vocab
from skinflow.captions.diagnosis_terms import mentions_diagnosis
from skinflow.captions.schema import SCHEMA_PATH, SUMMARY_MAX_CHARS, Caption, caption_json_schema, caption_json_schema_text


def _errors(exc: ValidationError) -> set[str]:
    return {e["type"] for e in exc.errors()}


def test_from_attributes_accepts_numpy_and_canonicalises(attrs_row):
    row = {**attrs_row, "primary_morphology": np.array(["plaque", "papule", "plaque"]),
           "colour": np.array(["erythematous"]), "lesion_count": np.str_("few"), "fitzpatrick_type": np.int64(4)}
    c = Caption.from_attributes(row)
    assert c.primary_morphology == ("papule", "plaque")  # vocabulary order, de-duplicated
    assert c.fitzpatrick_type == "IV"
    assert c.schema_version == vocab.SCHEMA_VERSION
    assert c.summary == (
        "A few well-defined erythematous papules and plaques with scale on the face, 10-30 mm, irregular "
        "border, annular configuration, localised distribution, Fitzpatrick type IV skin."
    )


def test_from_attributes_is_order_independent(attrs_row):
    flipped = {**attrs_row, "primary_morphology": ["papule", "plaque"]}
    assert Caption.from_attributes(attrs_row) == Caption.from_attributes(flipped)


def test_unknown_fitzpatrick_and_single_lesion(attrs_row):
    c = Caption.from_attributes({**attrs_row, "fitzpatrick_type": -1, "lesion_count": "single",
                                 "secondary_features": ["none"], "body_site": "unknown"})
    assert c.fitzpatrick_type == "unknown"
    assert c.summary.startswith("A single well-defined erythematous papule and plaque at an unspecified site")
    assert "with" not in c.summary and c.summary.endswith("Fitzpatrick type not assessable.")


def test_from_attributes_rejects_off_vocabulary(attrs_row):
    with pytest.raises(ValidationError) as info:
        Caption.from_attributes({**attrs_row, "colour": ["mauve"]})
    assert "literal_error" in _errors(info.value)


def test_summary_longest_case_fits():
    row = {f: list(v) for f, v in vocab.SET_FIELDS.items()}
    row["secondary_features"].remove("none")
    row.update(image_quality="poor", body_site="genital", border_definition="ill_defined",
               border_regularity="irregular", lesion_count="multiple", distribution="generalised",
               size_class="gt_30mm", fitzpatrick_type="VI")
    c = Caption.from_attributes(row)
    assert len(c.summary) <= SUMMARY_MAX_CHARS and c.summary.endswith(".")


def _valid(**overrides):
    base = dict(image_quality="good", body_site="arm", primary_morphology=["papule"], secondary_features=["none"],
                colour=["pink"], border_definition="well_defined", border_regularity="regular",
                configuration=["round"], lesion_count="single", distribution="localised", size_class="lt_5mm",
                fitzpatrick_type="II", summary="A single pink papule on the arm.")
    return {**base, **overrides}


@pytest.mark.parametrize(
    ("overrides", "error_type"),
    [
        ({"summary": "A pink papule, likely a melanoma."}, "diagnosis_in_summary"),
        ({"summary": "x" * (SUMMARY_MAX_CHARS + 1)}, "summary_too_long"),
        ({"summary": "A pink papule. It is small."}, "summary_not_one_sentence"),
        ({"summary": "A pink papule\non the arm"}, "summary_not_one_sentence"),
        ({"summary": "  "}, "string_too_short"),
        ({"secondary_features": ["none", "scale"]}, "none_not_alone"),
        ({"colour": []}, "too_short"),
        ({"schema_version": "skinflow-caption/0.1"}, "literal_error"),
        ({"extra": 1}, "extra_forbidden"),
        ({"fitzpatrick_type": "iv"}, "literal_error"),  # the model itself is strict; synonyms live in the parser
        ({"colour": "pink"}, "tuple_type"),
    ],
)
def test_caption_validation_errors(overrides, error_type):
    with pytest.raises(ValidationError) as info:
        Caption.model_validate(_valid(**overrides))
    assert error_type in _errors(info.value)


def test_taxonomy_labels_extend_diagnosis_check():
    data = _valid(summary="A single pink papule resembling pityriasis rosea on the arm.")
    Caption.model_validate(data)  # not in the built-in generic list
    with pytest.raises(ValidationError) as info:
        Caption.model_validate(data, context={"diagnosis_labels": ["pityriasis_rosea"]})
    assert _errors(info.value) == {"diagnosis_in_summary"}


def test_caption_is_frozen():
    c = Caption.model_validate(_valid())
    with pytest.raises(ValidationError):
        c.body_site = "leg"  # type: ignore[misc]


def test_committed_json_schema_is_in_sync():
    # Regenerate with `python -m skinflow.captions.schema` after changing the model or vocab.
    assert SCHEMA_PATH.read_text(encoding="utf-8") == caption_json_schema_text()
    schema = caption_json_schema()
    assert schema["properties"]["colour"]["items"]["enum"] == list(vocab.COLOUR)
    assert schema["properties"]["body_site"]["enum"] == list(vocab.BODY_SITE)
    assert schema["properties"]["schema_version"]["const"] == vocab.SCHEMA_VERSION
    assert set(schema["required"]) == {*vocab.SCALAR_FIELDS, *vocab.SET_FIELDS, "summary"}
    assert schema["additionalProperties"] is False
    json.dumps(schema)


def _rows():
    scalars = {f: st.sampled_from(v) for f, v in vocab.SCALAR_FIELDS.items()}
    sets = {f: st.lists(st.sampled_from([t for t in v if t != "none"]), min_size=1, max_size=len(v))
            for f, v in vocab.SET_FIELDS.items()}
    return st.fixed_dictionaries({**scalars, **sets})


@settings(max_examples=150, deadline=None)
@given(_rows())
def test_any_valid_row_gives_a_short_diagnosis_free_summary(row):
    c = Caption.from_attributes(row)
    assert len(c.summary) <= SUMMARY_MAX_CHARS
    assert mentions_diagnosis(c.summary, []) == []
    assert Caption.from_attributes(row) == c  # deterministic
