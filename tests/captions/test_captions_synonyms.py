from __future__ import annotations

import re

import pytest

from skinflow import vocab
from skinflow.captions.synonyms import (
    SynonymError,
    load_synonyms,
    normalise_caption_dict,
    normalise_term,
    synonyms_version,
)


@pytest.mark.parametrize(
    ("field", "text", "term"),
    [
        ("colour", "red", "erythematous"),
        ("colour", "  Reddish ", "erythematous"),
        ("border_definition", "well-circumscribed", "well_defined"),
        ("border_definition", "Well Circumscribed", "well_defined"),
        ("primary_morphology", "tumor", "tumour"),
        ("primary_morphology", "Papules", "papule"),
        ("secondary_features", "scaly", "scale"),
        ("secondary_features", "scaling", "scale"),
        ("colour", "skin colored", "skin_coloured"),
        ("colour", "flesh-coloured", "skin_coloured"),
        ("colour", "grey-blue", "blue_grey"),
        ("colour", "Blue Grey", "blue_grey"),
        ("configuration", "ring-shaped", "annular"),
        ("configuration", "ring shaped.", "annular"),
        ("fitzpatrick_type", "iv", "IV"),
        ("fitzpatrick_type", "Type 4", "IV"),
        ("size_class", "5 – 10 mm", "5_to_10mm"),
        ("distribution", "localized", "localised"),
        ("lesion_count", "solitary", "single"),
        ("body_site", "forearm", "arm"),
    ],
)
def test_normalise_term(field, text, term):
    assert normalise_term(field, text) == term


@pytest.mark.parametrize(("field", "text"), [
    ("colour", "mauve"), ("colour", "scaly"),  # a real term, but of another field
    ("primary_morphology", "blister"),  # ambiguous (vesicle or bulla): deliberately unmapped
    ("colour", ""), ("no_such_field", "red"), ("colour", 3), ("colour", None),
])
def test_unrecognised_terms_return_none(field, text):
    assert normalise_term(field, text) is None


def test_every_vocabulary_term_maps_to_itself_in_any_spelling():
    for field, terms in {**vocab.SCALAR_FIELDS, **vocab.SET_FIELDS}.items():
        for term in terms:
            assert normalise_term(field, term) == term
            assert normalise_term(field, term.replace("_", " ").upper()) == term
            assert normalise_term(field, term.replace("_", "-")) == term


def test_normalise_caption_dict_maps_dedupes_and_reports_unknowns():
    d = {"colour": ["red", "erythematous", "mauve", 3], "body_site": "Cheek", "border_regularity": "wobbly",
         "summary": "red thing", "other": "red"}
    out, unknown = normalise_caption_dict(d)
    assert out["colour"] == ["erythematous", "mauve", 3]  # unknown and wrong-typed items are kept
    assert out["body_site"] == "face"
    assert out["border_regularity"] == "wobbly"
    assert out["summary"] == "red thing" and out["other"] == "red"  # only vocabulary fields touched
    assert unknown == [("colour", "mauve"), ("border_regularity", "wobbly")]
    assert d["colour"][0] == "red"  # input not mutated


def test_version_string():
    assert re.fullmatch(r"skinflow-synonyms/\d+\.\d+", synonyms_version())


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("version: v\nfields:\n  colour:\n    pink: [rosy]\n    erythematous: [Rosy]\n", "maps to both"),
        ("version: v\nfields:\n  colour:\n    pink: [erythematous]\n", "maps to both"),  # a vocab term
        ("version: v\nfields:\n  colour:\n    mauve: [lilac]\n", "not a vocabulary term"),
        ("version: v\nfields:\n  lesion_count:\n    single: [yes]\n", "quote"),  # YAML bool
        ("version: v\nfields:\n  colours:\n    pink: [rose]\n", "unknown fields"),
        ("fields: {}\n", "version"),
    ],
)
def test_malformed_synonym_files_are_rejected(tmp_path, body, message):
    path = tmp_path / "syn.yaml"
    path.write_text(body)
    with pytest.raises(SynonymError, match=message):
        load_synonyms(path)


def test_custom_table(tmp_path):
    path = tmp_path / "syn.yaml"
    path.write_text("version: test/1\nfields:\n  colour:\n    pink: [rose]\n")
    table = load_synonyms(path)
    assert table.version == "test/1"
    assert normalise_term("colour", "Rose", table) == "pink"
    assert normalise_term("colour", "red", table) is None  # only the default table knows "red"
