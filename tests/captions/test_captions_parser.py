from __future__ import annotations

import json
import time

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from skinflow import vocab
from skinflow.captions.parser import (
    MAX_INPUT_CHARS,
    DiagnosisParse,
    ParseErrorCode,
    ParseResult,
    parse_caption,
    parse_diagnoses,
    render_caption,
    render_diagnoses,
)
from skinflow.captions.schema import Caption

C = ParseErrorCode
BASE = {
    "schema_version": vocab.SCHEMA_VERSION, "image_quality": "good", "body_site": "face",
    "primary_morphology": ["papule", "plaque"], "secondary_features": ["scale"], "colour": ["erythematous"],
    "border_definition": "well_defined", "border_regularity": "irregular", "configuration": ["annular"],
    "lesion_count": "few", "distribution": "localised", "size_class": "10_to_30mm", "fitzpatrick_type": "IV",
    "summary": "A few well-defined erythematous papules and plaques with scale on the face.",
}
VALID = render_caption(Caption.model_validate(BASE))


def variant(**changes) -> str:
    d = {**BASE, **changes}
    return json.dumps({k: v for k, v in d.items() if v is not ...})


# ---- rendering and round trips --------------------------------------------------------------------------------


def test_render_is_compact_sorted_and_deterministic():
    assert VALID.startswith('{"body_site":"face","border_definition":"well_defined",')
    assert ", " not in VALID.replace(BASE["summary"], "") and ": " not in VALID
    assert list(json.loads(VALID)) == sorted(BASE)
    assert render_caption(Caption.model_validate(BASE)) == VALID


def _captions():
    scalars = {f: st.sampled_from(v) for f, v in vocab.SCALAR_FIELDS.items()}
    sets = {f: st.lists(st.sampled_from([t for t in v if t != "none"]), min_size=1, max_size=4)
            for f, v in vocab.SET_FIELDS.items()}
    sets["secondary_features"] = st.one_of(st.just(["none"]), sets["secondary_features"])
    # Any characters (quotes, backslashes, braces, unicode) except sentence breaks and surrogates.
    chars = st.characters(blacklist_categories=("Cs",), blacklist_characters=".!?\r\n")
    summary = st.text(chars, min_size=1, max_size=200)
    return st.fixed_dictionaries({**scalars, **sets, "summary": summary})


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(_captions())
def test_render_parse_round_trip(fields):
    try:
        caption = Caption.model_validate(fields)
    except ValidationError:
        assume(False)  # e.g. a random summary that happens to name a diagnosis or is blank
    text = render_caption(caption)
    for synonyms in (True, False):
        result = parse_caption(text, synonyms=synonyms)
        assert result.ok, result.error
        assert result.caption == caption
        assert render_caption(result.caption) == text


@pytest.mark.parametrize("wrapped", [
    "```json\n" + VALID + "\n```",
    "```\n" + VALID + "```",
    "Description: " + VALID,
    "  \n" + VALID + "\n\nI hope this helps. {not json}",
    json.dumps(json.loads(VALID), indent=2),
    "Here is the JSON:\n```json\n" + json.dumps(json.loads(VALID), indent=4) + "\n```\nDone.",
])
def test_common_wrappers_are_tolerated(wrapped):
    result = parse_caption(wrapped)
    assert result.ok and render_caption(result.caption) == VALID


def test_synonyms_are_mapped_only_when_enabled():
    text = variant(colour=["Red", "erythematous"], border_definition="well-circumscribed", fitzpatrick_type="type 4")
    result = parse_caption(text)
    assert result.ok and render_caption(result.caption) == VALID
    strict = parse_caption(text, synonyms=False)
    assert strict.error.code == C.OFF_VOCABULARY
    assert set(strict.unknown_terms) == {("colour", "Red"), ("border_definition", "well-circumscribed"),
                                         ("fitzpatrick_type", "type 4")}


def test_unknown_terms_are_reported_with_synonyms_on():
    result = parse_caption(variant(colour=["red", "mauve"], body_site="elbow crease"))
    assert result.error.code == C.OFF_VOCABULARY
    assert result.unknown_terms == (("body_site", "elbow crease"), ("colour", "mauve"))
    assert "mauve" in result.error.message and "other problem" not in result.error.message


def test_taxonomy_labels_forbid_diagnoses_in_summary():
    text = variant(summary="Plaques resembling pityriasis rosea.")
    assert parse_caption(text).ok
    assert parse_caption(text, diagnosis_labels=["pityriasis_rosea"]).error.code == C.DIAGNOSIS_IN_SUMMARY


# ---- malformed outputs: each has exactly one expected code ------------------------------------------------------

MALFORMED = [
    ("", C.EMPTY),
    ("  \n\t", C.EMPTY),
    ("The lesion is a red scaly plaque on the elbow.", C.NOT_JSON),
    (VALID[: len(VALID) // 2], C.TRUNCATED),
    ('{"summary": "A red pla', C.TRUNCATED),
    ("```json\n" + VALID[:-1] + "\n```", C.TRUNCATED),
    ("{" * 5000, C.TRUNCATED),
    ('{"a": tru}', C.NOT_JSON),
    ('{"image_quality": "good",}', C.NOT_JSON),
    ("[" * 5000 + "]" * 5000, C.NOT_JSON),  # nesting beyond the JSON decoder's recursion limit
    ("[" + VALID + "]", C.NOT_OBJECT),
    ('"just a string"', C.NOT_OBJECT),
    ("42", C.NOT_OBJECT),
    (VALID.replace('{"body_site":"face",', '{"body_site":"face","body_site":"arm",'), C.DUPLICATE_KEY),
    (variant(schema_version="skinflow-caption/0.9"), C.WRONG_SCHEMA_VERSION),
    (variant(diagnosis="psoriasis"), C.UNKNOWN_FIELD),
    (variant(colour=...), C.MISSING_FIELD),
    (variant(colour="erythematous"), C.WRONG_TYPE),
    (variant(fitzpatrick_type=4), C.WRONG_TYPE),
    (variant(summary=None), C.WRONG_TYPE),
    (variant(primary_morphology=[["papule"]]), C.WRONG_TYPE),
    (variant(body_site="elbow-ish"), C.OFF_VOCABULARY),
    (variant(colour=[]), C.EMPTY_VALUE),
    (variant(summary=""), C.EMPTY_VALUE),
    (variant(secondary_features=["none", "scale"]), C.INVALID_VALUE),
    (variant(summary="Scaly plaques typical of psoriasis."), C.DIAGNOSIS_IN_SUMMARY),
    (variant(summary="A red plaque " * 20), C.TOO_LONG),
    (variant(summary="A red plaque. It is scaly."), C.NOT_ONE_SENTENCE),
    ("x" * (MAX_INPUT_CHARS + 1), C.TOO_LONG),
    # Several problems at once: the most structural one wins, deterministically.
    (variant(schema_version="v0", extra=1, colour=...), C.WRONG_SCHEMA_VERSION),
    (variant(colour=..., body_site="elbow-ish"), C.MISSING_FIELD),
]


@pytest.mark.parametrize(("text", "code"), MALFORMED, ids=[f"{i:02d}-{c.value}" for i, (_, c) in enumerate(MALFORMED)])
def test_malformed_outputs_get_their_error_code(text, code):
    result = parse_caption(text)
    assert not result.ok and result.caption is None
    assert result.error.code == code, result.error.message
    assert result.error.message


def test_every_prefix_of_a_valid_caption_is_truncated():
    for i in range(1, len(VALID)):
        assert parse_caption(VALID[:i]).error.code == C.TRUNCATED, VALID[:i]


@pytest.mark.parametrize(("value", "code"), [(None, C.EMPTY), (123, C.WRONG_TYPE), (b"{}", C.WRONG_TYPE)])
def test_non_string_input(value, code):
    assert parse_caption(value).error.code == code


# ---- fuzzing: total, always ok or a typed error -------------------------------------------------------------


def _check_result(result):
    assert isinstance(result, ParseResult)
    assert result.ok == (result.caption is not None) == (result.error is None)
    if not result.ok:
        assert isinstance(result.error.code, ParseErrorCode) and result.error.code != C.INTERNAL, result.error


def _json_texts():
    leaves = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
    values = st.recursive(leaves, lambda kids: st.lists(kids, max_size=4) | st.dictionaries(
        st.sampled_from([*BASE, "x"]) | st.text(max_size=5), kids, max_size=6), max_leaves=20)
    return values.map(json.dumps)


def _mutations():
    return st.tuples(st.integers(0, len(VALID)), st.integers(0, 40), st.text(max_size=10)).map(
        lambda t: VALID[: t[0]] + t[2] + VALID[t[0] + t[1]:])


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.text(), _json_texts(), _mutations()))
def test_parse_caption_fuzz(text):
    _check_result(parse_caption(text))
    _check_result(parse_caption(text, synonyms=False))


def test_parse_throughput_smoke():
    texts = [VALID.replace("face", site) for site in ("face", "arm", "leg", "back")] * 500
    start = time.perf_counter()
    assert all(parse_caption(t).ok for t in texts)
    rate = len(texts) / (time.perf_counter() - start)
    assert rate > 2_000, f"{rate:.0f} captions/s"  # ~35k/s measured; loose bound for shared CPUs


# ---- diagnosis lists -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ('{"diagnoses":["psoriasis","nummular eczema"]}', ("psoriasis", "nummular eczema")),
    ('Answer: ```json\n{"diagnoses": [" tinea corporis "]}\n```', ("tinea corporis",)),
    ('["a", "b"]', ("a", "b")),
    ("1. Psoriasis\n2. Eczema", ("Psoriasis", "Eczema")),
    ("The most likely diagnoses:\n1) lichen planus\n   (violaceous)\n2) drug eruption\nThat is all.",
     ("lichen planus", "drug eruption")),
])
def test_parse_diagnoses_ok(text, expected):
    result = parse_diagnoses(text)
    assert result.ok and result.error is None
    assert result.diagnoses == expected


@pytest.mark.parametrize(("text", "code"), [
    ("", C.EMPTY),
    ('{"diagnoses": []}', C.EMPTY),
    ('{"diagnoses": ["a","b","c","d","e","f","g"]}', C.TOO_MANY),
    ("\n".join(f"{i}. d{i}" for i in range(1, 8)), C.TOO_MANY),
    ('{"diagnoses": ["Psoriasis", "psoriasis "]}', C.DUPLICATE_ITEM),
    ("1. basal-cell carcinoma\n2. Basal cell carcinoma", C.DUPLICATE_ITEM),
    ('{"diagnoses": ["a", 3]}', C.WRONG_TYPE),
    ('{"diagnoses": "psoriasis"}', C.WRONG_TYPE),
    ('{"diagnoses": ["a", "  "]}', C.EMPTY_VALUE),
    ('{"diagnoses": ["a"], "confidence": 0.9}', C.UNKNOWN_FIELD),
    ('{"labels": ["a"]}', C.UNKNOWN_FIELD),
    ("{}", C.MISSING_FIELD),
    ('{"diagnoses": ["a", "b"', C.TRUNCATED),
    ('{"diagnoses": ["a",,]}', C.NOT_JSON),
    ("probably psoriasis", C.UNRECOGNISED_FORMAT),
    ("1. a\n3. b", C.INVALID_VALUE),
    ("x" * (MAX_INPUT_CHARS + 1), C.TOO_LONG),
])
def test_parse_diagnoses_errors(text, code):
    result = parse_diagnoses(text)
    assert not result.ok and result.diagnoses == ()
    assert result.error.code == code, result.error


_labels = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=30).filter(lambda s: s.strip() == s and any(c.isalnum() for c in s))


@settings(max_examples=200, deadline=None)
@given(st.lists(_labels, min_size=1, max_size=6, unique_by=lambda s: " ".join(s.casefold().split())))
def test_diagnoses_round_trip(labels):
    try:
        text = render_diagnoses(labels)
    except ValueError:
        assume(False)  # labels equal after stripping punctuation/separators
    assert parse_diagnoses(text).diagnoses == tuple(labels)


def test_render_diagnoses_rejects_invalid_lists():
    for bad in ([], ["a"] * 2, [f"d{i}" for i in range(7)], ["a", ""]):
        with pytest.raises(ValueError):
            render_diagnoses(bad)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(), _json_texts()))
def test_parse_diagnoses_fuzz(text):
    result = parse_diagnoses(text)
    assert isinstance(result, DiagnosisParse)
    assert result.ok == (result.error is None) == bool(result.diagnoses)
    if not result.ok:
        assert result.error.code != C.INTERNAL, result.error
    else:
        assert 1 <= len(result.diagnoses) <= 6
