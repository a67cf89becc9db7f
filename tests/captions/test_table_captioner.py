from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from skinflow.captions.captioners import (
    Captioner,
    CaptionerConfig,
    CaptionerError,
    CaptionRequest,
    make_captioner,
)
from skinflow.captions.diagnosis_terms import mentions_diagnosis
from skinflow.captions.parser import parse_caption, render_caption
from skinflow.captions.schema import Caption, compose_summary
from skinflow.captions.table_captions import TableCaptioner, check_defaults, free_text_to_fields
from skinflow.vocab import SCALAR_FIELDS, SET_FIELDS
from tests.shared_data import shared_file

REPO = Path(__file__).resolve().parents[2]
ISIC_TABLE = REPO / "tests/data/isic_uda1_captions.csv"
ISIC_DEFAULTS = {  # a dermoscopic close-up of one lesion, when the text does not say otherwise
    "body_site": "unknown", "fitzpatrick_type": "unknown", "image_quality": "good", "lesion_count": "single",
    "distribution": "localised", "size_class": "5_to_10mm",
}
ISIC_BROKEN = {"ISIC_0000402", "ISIC_0000438"}  # border not visible; too blurred: written to fail
FULL = ("Well-defined brown macule with a pigment network. The border is smooth and the shape oval. "
        "No secondary features beyond the network.")
ROW = {
    "image_quality": "good", "body_site": "arm", "primary_morphology": ["plaque"], "secondary_features": ["scale"],
    "colour": ["erythematous"], "border_definition": "well_defined", "border_regularity": "regular",
    "configuration": ["oval"], "lesion_count": "single", "distribution": "localised", "size_class": "10_to_30mm",
    "fitzpatrick_type": "III",
}


def write_csv(path: Path, rows: list[tuple[str, str]], header: tuple[str, str] = ("image_id", "caption")) -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def fields(text: str) -> dict:
    return dict(free_text_to_fields(text).fields)


# ---- free text -> fields ----------------------------------------------------------------------------------


def test_multi_word_terms_and_synonyms():
    got = fields("Well-defined reddish-brown and blue-grey macule with a pigment network, 5 to 10 mm across.")
    assert got == {"border_definition": "well_defined", "size_class": "5_to_10mm", "primary_morphology": ("macule",),
                   "secondary_features": ("pigment_network",), "colour": ("erythematous", "brown", "blue_grey")}
    assert fields("Sharply demarcated papule, 0.5-1 cm")["size_class"] == "5_to_10mm"
    assert fields("A well circumscribed nodule of 1 to 3 cm")["size_class"] == "10_to_30mm"
    mapping = free_text_to_fields("Pink papules with crusting and scattered dots")
    assert {(m.field, m.term, m.text) for m in mapping.terms} >= {("secondary_features", "crust", "crusting")}
    assert mapping.stated == ("primary_morphology", "secondary_features", "colour")
    assert mapping.unresolved == (("scattered", ("distribution",)),)  # no lesion word: dots, not a distribution


def test_unmapped_phrases_are_reported():
    mapping = free_text_to_fields("Brown macule, cobblestone appearance.")
    assert mapping.unmapped == ("cobblestone appearance",)
    assert "unmapped 'cobblestone appearance'" in mapping.notes()


@pytest.mark.parametrize(("text", "regularity", "configuration"), [
    ("Irregular border.", "irregular", None),
    ("Brown macule with an irregular margin", "irregular", None),
    ("Irregular, ill-defined border", "irregular", None),
    ("The border is well-defined but irregular, and the overall shape is asymmetric.", "irregular", ("irregular",)),
    ("Irregular shape.", None, ("irregular",)),
    ("Macule with an irregular outline", None, ("irregular",)),
    ("Irregular configuration; regular border", "regular", ("irregular",)),
    ("Irregular dots and globules.", None, None),  # neither: reported as unresolved, not guessed
    ("Regular pigment network.", None, None),  # "regular" only describes a border next to a border word
])
def test_irregular_goes_to_the_field_of_the_nearest_cue(text, regularity, configuration):
    got = fields(text)
    assert got.get("border_regularity") == regularity
    assert got.get("configuration") == configuration


def test_a_word_without_a_cue_is_unresolved():
    mapping = free_text_to_fields("Irregular dots.")
    assert mapping.unresolved == (("Irregular", ("border_regularity", "configuration")),)


@pytest.mark.parametrize(("text", "expected"), [
    ("Good image quality.", {"image_quality": "good"}),
    ("Image too blurred to describe.", {"image_quality": "poor"}),
    ("Good border.", {"image_quality": None}),  # no image word: not image quality
    ("Skin type IV.", {"fitzpatrick_type": "IV"}),
    ("Fitzpatrick iii", {"fitzpatrick_type": "III"}),
    ("Lesion 6 mm wide.", {"fitzpatrick_type": None}),  # a bare number is not a skin type
    ("Multiple papules", {"lesion_count": "multiple"}),
    ("A single well-defined brown macule", {"lesion_count": "single"}),
    ("Brown macule with multiple dots", {"lesion_count": None}),  # the count must qualify the lesion
    ("Scattered lesions", {"distribution": "scattered"}),
])
def test_context_words_need_a_cue(text, expected):
    got = fields(text)
    for name, value in expected.items():
        assert got.get(name) == value


def test_scalar_conflicts_are_reported_and_left_unfilled_set_fields_collect():
    mapping = free_text_to_fields("Well-defined border above, ill-defined border below. Brown, black and pink.")
    assert "border_definition" not in mapping.fields
    assert mapping.conflicts == {"border_definition": ("well_defined", "ill_defined")}
    assert "border_definition: conflicting well_defined vs ill_defined" in mapping.notes()
    assert mapping.fields["colour"] == ("pink", "brown", "black")  # vocabulary order


@pytest.mark.parametrize(("text", "secondary", "negated"), [
    ("No secondary features.", ("none",), []),
    ("Without secondary features.", ("none",), []),
    ("Papule without any secondary features", ("none",), []),
    ("No secondary features such as scale or crust.", ("none",), ["scale", "crust"]),
    ("No crust, scale or ulceration. Pigment network.", ("pigment_network",), ["crust", "scale", "ulceration"]),
    ("No pigment network but fine scale.", ("scale",), ["pigment network"]),
    ("Pigment network. No secondary features.", ("pigment_network",), []),  # 'none' never joins a real feature
])
def test_negation(text, secondary, negated):
    mapping = free_text_to_fields(text)
    assert mapping.fields.get("secondary_features") == secondary
    assert [m.text for m in mapping.negated] == negated


def test_negation_stops_at_a_comma_before_another_field():
    got = fields("Without secondary features, good image quality, brown macule")
    assert got["secondary_features"] == ("none",)
    assert got["image_quality"] == "good" and got["colour"] == ("brown",)


# ---- the captioner ------------------------------------------------------------------------------------------


@pytest.fixture
def table(tmp_path):
    return write_csv(tmp_path / "captions.csv", [
        ("full", FULL),
        ("partial", "Brown macule with a pigment network."),
        ("conflict", FULL + " Ill-defined border at one pole."),
        ("json", render_caption(Caption.from_attributes(ROW)).replace('"erythematous"', '"red"')),
        ("bad_json", '{"colour": ["mauve"]}'),
        ("blank", "   "),
        ("nothing", "Seen at follow-up."),
        ("unused", FULL),
    ])


def test_table_captioner_outcomes(table):
    captioner = TableCaptioner(table, defaults={**ISIC_DEFAULTS, "border_definition": "ill_defined"})
    assert isinstance(captioner, Captioner) and captioner.name == "table"
    ids = ["full", "partial", "conflict", "json", "bad_json", "blank", "nothing", "missing"]
    out = {o.image_id: o for o in captioner.caption([CaptionRequest(i) for i in ids])}
    assert [o.image_id for o in captioner.caption([CaptionRequest("full")])] == ["full"]

    full = parse_caption(out["full"].caption_json, synonyms=False)
    assert full.ok and out["full"].attempts == 1
    caption = full.caption
    assert (caption.border_definition, caption.border_regularity, caption.configuration) == (
        "well_defined", "regular", ("oval",))
    assert (caption.body_site, caption.size_class, caption.lesion_count) == ("unknown", "5_to_10mm", "single")
    assert caption.summary == compose_summary(caption.model_dump())
    assert out["full"].caption_json == render_caption(caption)

    assert out["partial"].error_code == "MISSING_FIELDS"
    assert "border_regularity" in out["partial"].error_message and "configuration" in out["partial"].error_message
    assert out["partial"].raw_output == "Brown macule with a pigment network."
    # A default never papers over a text that contradicts itself.
    assert out["conflict"].error_code == "MISSING_FIELDS" and "conflicting" in out["conflict"].error_message
    assert out["json"].status == "ok"
    assert out["json"].caption_json == render_caption(Caption.from_attributes(ROW))
    assert (out["bad_json"].error_code, out["blank"].error_code) == ("MISSING_FIELD", "EMPTY_TEXT")
    assert out["nothing"].error_code == "MISSING_FIELDS" and "states no schema field" in out["nothing"].error_message
    assert out["missing"].error_code == "NOT_IN_TABLE"


def test_report_counts_fields_outcomes_and_unused_rows(table):
    captioner = TableCaptioner(table, defaults=ISIC_DEFAULTS)
    captioner.caption([CaptionRequest(i) for i in ("full", "partial", "conflict", "json", "bad_json")])
    captioner.caption([CaptionRequest(i) for i in ("blank", "nothing", "missing")])
    report = captioner.report()
    assert json.loads(json.dumps(report)) == report
    assert str(table.parent) not in json.dumps(report)
    assert report["requests"] == 8
    assert report["outcomes"] == {"EMPTY_TEXT": 1, "MISSING_FIELD": 1, "MISSING_FIELDS": 3, "NOT_IN_TABLE": 1, "ok": 2}
    assert report["text_format"] == {"free_text": 4, "json": 2}
    assert report["unused_table_rows"] == ["unused"]
    assert report["table_file"] == "captions.csv" and report["table_rows"] == 8
    assert sorted(report["fields"]) == sorted({**SCALAR_FIELDS, **SET_FIELDS})
    # mapped: full, partial, conflict, nothing (free text) + json
    assert report["fields"]["border_definition"] == {"stated": 2, "defaulted": 0, "missing": 3, "conflicting": 1}
    assert report["fields"]["body_site"] == {"stated": 1, "defaulted": 3, "missing": 1, "conflicting": 0}
    assert report["fields"]["colour"] == {"stated": 4, "defaulted": 0, "missing": 1, "conflicting": 0}
    assert {"count": 1, "text": "seen at follow up"} in report["unmapped_phrases"]
    again = TableCaptioner(table, defaults=ISIC_DEFAULTS)
    again.caption([CaptionRequest(i) for i in ("full", "partial", "conflict", "json", "bad_json", "blank",
                                               "nothing", "missing")])
    assert json.dumps(again.report()) == json.dumps(report)


def test_jsonl_table(tmp_path):
    path = tmp_path / "captions.jsonl"
    lines = [{"id": 7, "text": FULL}, {"id": "j", "text": json.loads(render_caption(Caption.from_attributes(ROW)))}]
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n\n")
    captioner = TableCaptioner(path, id_column="id", text_column="text", defaults=ISIC_DEFAULTS)
    assert [o.status for o in captioner.caption([CaptionRequest("7"), CaptionRequest("j")])] == ["ok", "ok"]


def test_version_follows_table_bytes_and_settings(tmp_path):
    path = write_csv(tmp_path / "c.csv", [("a", FULL)])
    first = TableCaptioner(path).version
    assert TableCaptioner(path).version == first
    assert TableCaptioner(path, defaults={"body_site": "arm"}).version != first
    assert "skinflow-synonyms/" in first
    write_csv(path, [("a", FULL + " Crust.")])
    assert TableCaptioner(path).version != first


@pytest.mark.parametrize(("name", "body", "message"), [
    ("dup.csv", "image_id,caption\na,x\nb,y\na,z\n", r"row 3 \(line 4\): duplicate image id 'a' \(first at row 1"),
    ("col.csv", "id,caption\na,x\n", r"no column 'image_id' \(id_column\)"),
    ("short.csv", "image_id,caption\na\n", r"row 1 \(line 2\): too few fields"),
    ("empty.csv", "image_id,caption\n", "has no rows"),
    ("noid.csv", "image_id,caption\n ,x\n", "empty 'image_id'"),
    ("bad.jsonl", '{"image_id": "a", "caption": "x"}\n{oops\n', "line 2: invalid JSON"),
    ("keys.jsonl", '{"image_id": "a"}\n', "line 1: needs an object with keys"),
    ("c.txt", "image_id,caption\na,x\n", "unsupported captions table"),
])
def test_table_problems_raise_with_file_and_row(tmp_path, name, body, message):
    path = tmp_path / name
    path.write_text(body)
    with pytest.raises(CaptionerError, match=message) as info:
        TableCaptioner(path)
    assert name in str(info.value)


def test_unreadable_tables_raise(tmp_path):
    with pytest.raises(CaptionerError, match="cannot read captions table"):
        TableCaptioner(tmp_path / "absent.csv")
    path = tmp_path / "latin.csv"
    path.write_bytes("image_id,caption\na,caf\xe9\n".encode("latin-1"))
    with pytest.raises(CaptionerError, match="not UTF-8"):
        TableCaptioner(path)


# ---- configuration ------------------------------------------------------------------------------------------


def test_make_captioner_table_and_none(tmp_path):
    path = write_csv(tmp_path / "c.csv", [("a", FULL)])
    cfg = CaptionerConfig.model_validate({"kind": "table", "table": {"path": str(path), "defaults": ISIC_DEFAULTS}})
    captioner = make_captioner(cfg)
    assert isinstance(captioner, TableCaptioner) and captioner.defaults["size_class"] == "5_to_10mm"
    assert CaptionerConfig.model_validate({"kind": "table", "table": {"path": "x.csv"}}).table.defaults == {
        "body_site": "unknown", "fitzpatrick_type": "unknown"}
    with pytest.raises(CaptionerError, match="kind 'none' makes no captions"):
        make_captioner(CaptionerConfig(kind="none"))


@pytest.mark.parametrize(("table", "message"), [
    (None, "needs a 'table' section"),
    ({"path": "c.csv", "defaults": {"bodysite": "unknown"}}, "'bodysite' is not a schema field"),
    ({"path": "c.csv", "defaults": {"distribution": "localized"}}, "did you mean 'localised'"),
    ({"path": "c.csv", "defaults": {"colour": ["brown", "mauve"]}}, "'mauve' is not a colour term"),
    ({"path": "c.csv", "defaults": {"size_class": ["lt_5mm"]}}, "takes one term"),
    ({"path": "c.csv", "defaults": {"summary": "x"}}, "not a schema field"),
    ({"path": "c.csv", "colum": "x"}, "colum"),
])
def test_invalid_table_config(table, message):
    data = {"kind": "table"} if table is None else {"kind": "table", "table": table}
    with pytest.raises(ValidationError, match=message):
        CaptionerConfig.model_validate(data)


def test_check_defaults_canonicalises_sets():
    assert check_defaults({"colour": ["brown", "pink"], "body_site": "arm"}) == {
        "colour": ("pink", "brown"), "body_site": "arm"}
    with pytest.raises(ValueError, match="'none' cannot be combined"):
        check_defaults({"secondary_features": ["none", "scale"]})


def test_bad_defaults_given_directly_raise_captioner_error(tmp_path):
    with pytest.raises(CaptionerError, match="is not a fitzpatrick_type term"):
        TableCaptioner(write_csv(tmp_path / "c.csv", [("a", FULL)]), defaults={"fitzpatrick_type": "7"})


# ---- the committed ISIC UDA-1 captions ------------------------------------------------------------------------


def test_committed_isic_captions_map():
    rows = list(csv.DictReader(ISIC_TABLE.open(encoding="utf-8")))
    assert len(rows) == 40 and len({r["image_id"] for r in rows}) == 40
    captioner = TableCaptioner(ISIC_TABLE, defaults=ISIC_DEFAULTS)
    outcomes = captioner.caption([CaptionRequest(r["image_id"]) for r in rows])
    ok = [o for o in outcomes if o.status == "ok"]
    assert len(ok) >= 36
    assert {o.image_id for o in outcomes if o.status != "ok"} == ISIC_BROKEN
    assert {o.error_code for o in outcomes if o.status != "ok"} == {"MISSING_FIELDS"}
    for row in rows:  # the source text itself must not leak the label
        assert mentions_diagnosis(row["caption"], ("melanoma", "nevus")) == [], row["image_id"]
    for outcome in ok:
        summary = json.loads(outcome.caption_json)["summary"]
        assert mentions_diagnosis(summary, ("melanoma", "nevus")) == [], outcome.image_id
    report = captioner.report()
    assert report["text_format"] == {"free_text": 38, "json": 2}
    assert report["unused_table_rows"] == []


def test_committed_isic_captions_name_real_images():
    labels = shared_file("isic_uda1/labels.csv")
    diagnosis = {r["image_id"]: r["diagnosis"] for r in csv.DictReader(labels.open(encoding="utf-8"))}
    ids = [r["image_id"] for r in csv.DictReader(ISIC_TABLE.open(encoding="utf-8"))]
    assert set(ids) <= set(diagnosis)
    assert sorted(diagnosis[i] for i in ids) == ["melanoma"] * 20 + ["nevus"] * 20


# ---- through the caption stage ----------------------------------------------------------------------------------


def test_caption_stage_quarantines_table_failures_and_reports_coverage(tmp_path):
    from skinflow.captions.captioning import CaptionStageConfig, run_captions
    from skinflow.data.ingest import IngestConfig, ingest
    from skinflow.data.skinsynth import SynthConfig, generate
    from skinflow.data.validation import ValidateConfig, validate

    generate(tmp_path / "synth", SynthConfig.tiny())
    rows, taxonomy, _ = ingest(IngestConfig(csv=str(tmp_path / "synth/fitzpatrick17k.csv"),
                                            image_root=str(tmp_path / "synth/images"),
                                            taxonomy=str(tmp_path / "synth/taxonomy.csv"), workers=1))
    manifest, _, _ = validate(rows, taxonomy, ValidateConfig())
    ids = list(manifest["image_id"])
    path = write_csv(tmp_path / "captions.csv", [(i, FULL) for i in ids[:5]] + [(ids[5], "Brown macule.")])
    cfg = CaptionStageConfig.model_validate({
        "captioner": {"kind": "table", "table": {"path": str(path), "defaults": ISIC_DEFAULTS}},
        "attributes": None, "progress_dir": str(tmp_path / "progress"), "min_parse_rate": 0.0})
    table, quarantine, report = run_captions(manifest, cfg)
    assert len(table) == 5 and len(table) + len(quarantine) == len(manifest)
    assert quarantine["reason"].value_counts().to_dict() == {
        "caption_NOT_IN_TABLE": len(manifest) - 6, "caption_MISSING_FIELDS": 1}
    coverage = report["source_coverage"]
    assert coverage["outcomes"] == {"MISSING_FIELDS": 1, "NOT_IN_TABLE": len(manifest) - 6, "ok": 5}
    assert coverage["fields"]["colour"]["stated"] == 6 and coverage["unused_table_rows"] == []
