"""Diagnosis metrics on a hand-computed toy, edge cases, bootstrap CIs and property checks."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from skinflow.eval.equivalence import LabelSpace
from skinflow.eval.metrics import (
    METRICS, RATES, UNPARSED, candidates, compute_metrics, confusion_counts, confusion_matrix,
    metrics_markdown, per_group_table, write_confusion,
)
from skinflow.eval.predictions import FITZPATRICK_GROUPS, map_predictions

from eval_fixtures import taxonomy

TAXONOMY = taxonomy()

# A private table so edits to the shipped equivalence.yaml cannot change these hand counts.
TABLE = """version: test-eq/1
equivalent:
  - [melanoma, malignant melanoma]
aliases:
  bcc: basal cell carcinoma
  basal cell carcinoma nodular: basal cell carcinoma
  mole: nevocytic nevus
  atopic dermatitis: eczema
"""


def dx(*items: str) -> str:
    return json.dumps({"diagnoses": list(items)})


# image_id, truth, fitzpatrick, output                         # what it exercises
TOY = [
    ("img01", "melanoma", 1, dx("melanoma", "nevocytic nevus")),               # exact hit
    ("img02", "melanoma", 2, dx("malignant melanoma", "mole")),                # equivalent, not exact
    ("img03", "basal cell carcinoma", 3, dx("seborrheic keratosis", "BCC")),   # alias @2; dangerous
    ("img04", "basal cell carcinoma", 4, "I think it is BCC"),                 # unparseable: miss, not dangerous
    ("img05", "psoriasis", 5, dx("squamous cell carcinoma", "psoriasiss")),    # over-call; fuzzy @2
    ("img06", "eczema", 6, "1. atopic dermatitis"),                            # numbered list, alias
    ("img07", "nevocytic nevus", -1,
     dx("seborrheic keratosis", "blue widget disease", "mole")),              # three-level only; OOV
    ("img08", "squamous cell carcinoma", -1,
     dx("frobnication", "BCC", "basal cell carcinoma nodular")),              # OOV top-1; duplicate canon
    ("img09", "alien rash", 3, dx("squamous cell carcinoma", "psoriasis")),    # truth outside taxonomy
    ("img10", "acne", 2, '{"diagnoses": []}'),                                 # empty list: parse failure
]
EXPECTED = {
    "top1_exact": 2 / 10, "top6_exact": 5 / 10, "top1_grounded": 3 / 10, "top6_grounded": 6 / 10,
    "hierarchical_nine": 3 / 10, "hierarchical_three": 4 / 10,
    "malignant_miss_at1": 3 / 5, "malignant_miss_at6": 1 / 5, "dangerous_error_rate": 1 / 5,
    "over_call_rate": 1 / 4, "format_compliance": 8 / 10, "oov_rate": 2 / 17, "mean_list_length": 17 / 8,
}


@pytest.fixture
def table_path(tmp_path):
    path = tmp_path / "equivalence.yaml"
    path.write_text(TABLE, encoding="utf-8")
    return path


@pytest.fixture
def space(table_path) -> LabelSpace:
    return LabelSpace(TAXONOMY, table_path=table_path)


def raw_frame(rows, copies: int = 1) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["image_id", "label", "fitzpatrick_scale", "raw_output"])
    if copies > 1:
        frame = pd.concat([frame.assign(image_id=frame["image_id"] + f"_{c}") for c in range(copies)],
                          ignore_index=True)
    return frame


@pytest.fixture
def mapped(space) -> pd.DataFrame:
    return map_predictions(raw_frame(TOY), space)[0]


def values(block: dict) -> dict:
    return {name: cell["value"] for name, cell in block.items()}


def test_hand_computed_overall(mapped, space):
    m = compute_metrics(mapped, space, n_boot=0)
    assert values(m["overall"]) == pytest.approx(EXPECTED)
    assert m["overall"]["malignant_miss_at1"]["n"] == 5 and m["overall"]["over_call_rate"]["n"] == 4
    assert m["overall"]["oov_rate"]["n"] == 17 and m["overall"]["mean_list_length"]["n"] == 8
    assert m["n_images"] == 10 and m["truth_out_of_taxonomy"] == 1
    assert m["parse_errors"] == {"EMPTY": 1, "UNRECOGNISED_FORMAT": 1}
    assert m["label_space_version"] == "test-eq/1" and m["k"] == 6
    assert m["overall"]["top1_exact"]["ci_low"] is None  # n_boot=0: no CI


def test_dangerous_error_is_the_parseable_part_of_miss_at1(mapped, space):
    m = compute_metrics(mapped, space, n_boot=0)["overall"]
    # img04 (unparseable) and img08 (OOV top-1) are misses but not dangerous errors.
    assert m["malignant_miss_at1"]["value"] - m["dangerous_error_rate"]["value"] == pytest.approx(2 / 5)


def test_by_fitzpatrick_including_unknown_and_empty_denominators(mapped, space):
    m = compute_metrics(mapped, space, n_boot=0)
    assert m["n_images_by_fitzpatrick"] == {"I-II": 3, "III-IV": 3, "V-VI": 2, "unknown": 2}
    by = m["by_fitzpatrick"]
    assert set(by) == set(FITZPATRICK_GROUPS)
    grounded = [by[g]["top1_grounded"]["value"] for g in FITZPATRICK_GROUPS]
    assert grounded == pytest.approx([2 / 3, 0, 1 / 2, 0])
    assert by["unknown"]["malignant_miss_at1"]["value"] == 1.0
    assert by["unknown"]["malignant_miss_at6"]["value"] == 0.0
    assert by["I-II"]["over_call_rate"]["value"] == 0.0  # defined (acne truth), just zero
    # No malignant truth in V-VI; III-IV's only non-malignant candidate is out of taxonomy.
    for group, metric in [("V-VI", "malignant_miss_at1"), ("V-VI", "dangerous_error_rate"),
                          ("III-IV", "over_call_rate")]:
        assert by[group][metric] == {"value": None, "ci_low": None, "ci_high": None, "n": 0}
    json.dumps(m, allow_nan=False)  # None, never NaN


def test_group_with_no_images_is_all_none(space):
    mapped = map_predictions(raw_frame(TOY[:2]), space)[0]
    block = compute_metrics(mapped, space, n_boot=50)["by_fitzpatrick"]["V-VI"]
    assert all(cell["value"] is None and cell["ci_low"] is None for cell in block.values())


def test_duplicate_canonical_labels_take_one_slot(space):
    # Two aliases of one label must not push the truth out of the top six.
    assert candidates(["a", "a", None, "b", None, "a", "c", "d", "e"]) == ["a", None, "b", None, "c", "d"]
    mapped = pd.DataFrame({
        "image_id": ["x"], "label": ["acne"], "fitzpatrick_scale": [3], "parse_ok": [True],
        "parse_error": [None], "n_items": [8], "n_oov": [0],
        "ranked_labels": [["eczema", "eczema", "eczema", "psoriasis", "melanoma", "nevocytic nevus",
                           "seborrheic keratosis", "acne"]],
    })
    m = compute_metrics(mapped, space, n_boot=0)["overall"]
    assert m["top6_exact"]["value"] == 1.0 and m["top1_exact"]["value"] == 0.0
    beyond = mapped.assign(ranked_labels=[["eczema", "psoriasis", "melanoma", "nevocytic nevus",
                                           "seborrheic keratosis", "squamous cell carcinoma", "acne"]])
    assert compute_metrics(beyond, space, n_boot=0)["overall"]["top6_exact"]["value"] == 0.0


def test_missing_truth_never_hits(space):
    # A NaN truth must not "match" an OOV item (None == None) nor count as a safety case.
    mapped = pd.DataFrame({
        "image_id": ["x"], "label": [np.nan], "fitzpatrick_scale": [1], "parse_ok": [True],
        "parse_error": [None], "n_items": [2], "n_oov": [1], "ranked_labels": [[None, "melanoma"]],
    })
    m = compute_metrics(mapped, space, n_boot=0)
    assert all(m["overall"][k]["value"] == 0 for k in ("top1_exact", "top6_exact", "top6_grounded",
                                                       "hierarchical_nine", "hierarchical_three"))
    assert m["overall"]["over_call_rate"]["value"] is None and m["truth_out_of_taxonomy"] == 1


def test_empty_parsed_list_is_all_misses(space):
    mapped = pd.DataFrame({
        "image_id": ["x", "y"], "label": ["melanoma", "acne"], "fitzpatrick_scale": [1, 1],
        "parse_ok": [True, True], "parse_error": [None, None], "n_items": [0, 0], "n_oov": [0, 0],
        "ranked_labels": [[], np.array([], dtype=object)],  # parquet gives numpy arrays back
    })
    m = compute_metrics(mapped, space, n_boot=0)["overall"]
    assert m["top6_grounded"]["value"] == 0 and m["hierarchical_three"]["value"] == 0
    assert m["malignant_miss_at6"]["value"] == 1 and m["dangerous_error_rate"]["value"] == 0
    assert m["oov_rate"]["value"] is None and m["mean_list_length"]["value"] == 0


def test_three_class_label_space(table_path):
    taxonomy = pd.DataFrame([("melanoma", "malignant melanoma", "malignant"),
                             ("nevocytic nevus", "benign melanocyte", "benign"),
                             ("psoriasis", "inflammatory", "non-neoplastic")],
                            columns=["label", "nine_partition_label", "three_partition_label"])
    space = LabelSpace(taxonomy, table_path=table_path)
    everything = dx("psoriasis", "mole", "melanoma")
    raw = raw_frame([("a", "melanoma", 1, everything), ("b", "nevocytic nevus", 3, everything),
                     ("c", "psoriasis", 5, dx("melanoma", "unknown thing", "psoriasis"))])
    result = compute_metrics(map_predictions(raw, space)[0], space, n_boot=0)
    m = result["overall"]
    # Three classes: top-k is top-3 and named so; a top-6 over three labels would measure nothing.
    assert (result["k"], result["k_max"], result["n_classes"]) == (3, 6, 3)
    assert "top6_exact" not in m and "malignant_miss_at6" not in m
    assert m["top3_exact"]["value"] == 1.0  # the OOV item in c's list takes a slot, psoriasis is 3rd
    assert m["top1_exact"]["value"] == 0.0
    assert m["malignant_miss_at1"]["value"] == 1.0 and m["malignant_miss_at3"]["value"] == 0.0
    assert m["over_call_rate"]["value"] == 0.5 and m["oov_rate"]["value"] == pytest.approx(1 / 9)
    assert "k = min(6, n_classes) = 3" in metrics_markdown(result)


def test_taxonomy_listing_a_label_twice(table_path):
    # HAM10000-style: two codes (akiec, ak) for one label.
    taxonomy = pd.DataFrame([
        ("akiec", "actinic keratosis", "malignant epidermal", "malignant"),
        ("ak", "actinic keratosis", "malignant epidermal", "malignant"),
        ("mel", "melanoma", "malignant melanoma", "malignant"),
        ("nv", "nevocytic nevus", "benign melanocyte", "benign"),
        ("df", "dermatofibroma", "benign dermal", "benign"),
    ], columns=["code", "label", "nine_partition_label", "three_partition_label"])
    space = LabelSpace(taxonomy, table_path=table_path)
    raw = raw_frame([("a", "actinic keratosis", 2, dx("dermatofibroma", "actinic keratosis")),
                     ("b", "nevocytic nevus", 2, dx("actinic keratosis"))])
    result = compute_metrics(map_predictions(raw, space)[0], space, n_boot=0)
    m = result["overall"]
    assert space.labels == ("actinic keratosis", "dermatofibroma", "melanoma", "nevocytic nevus")
    assert result["k"] == 4  # four distinct labels, however many codes
    assert m["top4_exact"]["value"] == 0.5 and m["dangerous_error_rate"]["value"] == 1.0
    assert m["over_call_rate"]["value"] == 1.0 and m["hierarchical_three"]["value"] == 0.0


def test_confusion_long_and_wide(mapped, space, tmp_path):
    conf = confusion_matrix(mapped, space)
    assert len(conf) == 10 and {"actual", "predicted"} <= set(conf.columns)
    pred = dict(zip(conf["image_id"], conf["predicted"]))
    assert pred["img02"] == "malignant melanoma" and pred["img07"] == "seborrheic keratosis"
    assert [pred[i] for i in ("img04", "img08", "img10")] == [UNPARSED] * 3
    wide = confusion_counts(conf, space)
    assert wide.to_numpy().sum() == 10 and UNPARSED in wide.columns and "alien rash" in wide.index
    assert wide.loc["basal cell carcinoma", UNPARSED] == 1 and wide.loc["melanoma", "melanoma"] == 1
    write_confusion(conf, tmp_path / "c.json")
    write_confusion(conf, tmp_path / "c.csv")
    assert json.loads((tmp_path / "c.json").read_text())[0].keys() >= {"actual", "predicted"}
    assert len(pd.read_csv(tmp_path / "c.csv")) == 10


def test_per_group_table_and_markdown(mapped, space):
    m = compute_metrics(mapped, space, n_boot=100)
    table = per_group_table(m)
    assert len(table) == 5 * len(METRICS) and list(table.columns[:5]) == [
        "group", "metric", "value", "ci_low", "ci_high"]
    row = table[(table.group == "overall") & (table.metric == "top6_grounded")].iloc[0]
    assert row.value == pytest.approx(0.6) and row.ci_low <= row.value <= row.ci_high
    md = metrics_markdown(m)
    assert "| metric | overall (n=10) | I-II (n=3) | III-IV (n=3) | V-VI (n=2) | unknown (n=2) |" in md
    line = next(x for x in md.splitlines() if x.startswith("| top6_grounded |"))
    cell = m["overall"]["top6_grounded"]
    assert f"0.600 [{cell['ci_low']:.3f}, {cell['ci_high']:.3f}]" in line
    assert "—" in next(x for x in md.splitlines() if x.startswith("| malignant_miss_at1 |"))


def test_bootstrap_brackets_deterministic_and_row_order_free(mapped, space):
    a = compute_metrics(mapped, space, n_boot=500, seed=7)
    assert a == compute_metrics(mapped.sample(frac=1, random_state=3), space, n_boot=500, seed=7)
    assert a != compute_metrics(mapped, space, n_boot=500, seed=8)
    for block in [a["overall"], *a["by_fitzpatrick"].values()]:
        for cell in block.values():
            if cell["value"] is not None:
                assert cell["ci_low"] <= cell["value"] <= cell["ci_high"]
    # Point estimates do not depend on the bootstrap at all.
    assert values(a["overall"]) == values(compute_metrics(mapped, space, n_boot=0)["overall"])


def test_bootstrap_drops_replicates_with_empty_denominator(space):
    # One malignant image among 20, missed: every replicate that contains it says 1.0. Replicates
    # without it have no denominator and must be dropped, not scored 0 (which would give ci_low 0).
    rows = [("m", "melanoma", 1, dx("acne"))] + [(f"b{k}", "acne", 1, dx("acne")) for k in range(19)]
    cell = compute_metrics(map_predictions(raw_frame(rows), space)[0], space, n_boot=300)["overall"]
    assert cell["malignant_miss_at1"] == {"value": 1.0, "ci_low": 1.0, "ci_high": 1.0, "n": 1}


def test_bootstrap_narrows_with_more_data(space):
    small = compute_metrics(map_predictions(raw_frame(TOY), space)[0], space, n_boot=400)
    big = compute_metrics(map_predictions(raw_frame(TOY, copies=20), space)[0], space, n_boot=400)
    for name in ("top6_grounded", "format_compliance", "malignant_miss_at1", "oov_rate"):
        s, b = small["overall"][name], big["overall"][name]
        assert b["value"] == pytest.approx(s["value"])
        assert b["ci_high"] - b["ci_low"] < 0.6 * (s["ci_high"] - s["ci_low"])


def test_real_taxonomy_smoke():
    from shared_data import shared_file

    space = LabelSpace(pd.read_csv(shared_file("fitzpatrick17k/taxonomy.csv")))
    raw = raw_frame([("a", "melanoma", 2, dx("malignant melanoma")),
                     ("b", "basal cell carcinoma", 5, dx("BCC")),
                     ("c", "psoriasis", -1, dx("Kaposi's sarcoma", "plaque psoriasis"))])
    m = compute_metrics(map_predictions(raw, space)[0], space, n_boot=50)["overall"]
    assert m["top1_grounded"]["value"] == pytest.approx(2 / 3) and m["top1_exact"]["value"] == pytest.approx(1 / 3)
    assert m["top6_exact"]["value"] == pytest.approx(2 / 3) and m["over_call_rate"]["value"] == 1.0


# ---- properties -------------------------------------------------------------------------------------

_WORDS = [*TAXONOMY["label"], "BCC", "mole", "atopic dermatitis", "basal cell carcinoma nodular",
          "psoriasiss", "blue widget", "frobnication"]
_output = st.one_of(
    st.lists(st.sampled_from(_WORDS), max_size=7).map(lambda xs: dx(*xs)),  # may be empty/dup/too many
    st.sampled_from(["", "no idea", "{\"diagnoses\": [", "1. acne\n3. eczema"]),
)
_rows = st.lists(st.tuples(st.sampled_from([*TAXONOMY["label"], "alien rash"]),
                           st.sampled_from([-1, 1, 2, 3, 4, 5, 6]), _output), min_size=1, max_size=25)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=_rows)
def test_metric_properties(space, rows):
    raw = raw_frame([(f"i{k}", t, f, o) for k, (t, f, o) in enumerate(rows)])
    m = compute_metrics(map_predictions(raw, space)[0], space, n_boot=20, seed=1)
    for block in [m["overall"], *m["by_fitzpatrick"].values()]:
        v = values(block)
        for name in RATES:
            cell = block[name]
            assert v[name] is None or 0 <= v[name] <= 1
            assert cell["ci_low"] is None or 0 <= cell["ci_low"] <= cell["ci_high"] <= 1
        if v["top1_exact"] is None:
            continue
        assert v["top1_exact"] <= v["top6_exact"] and v["top1_grounded"] <= v["top6_grounded"]
        assert v["top1_exact"] <= v["top1_grounded"] and v["top6_exact"] <= v["top6_grounded"]
        assert v["hierarchical_nine"] <= v["hierarchical_three"]  # the toy's partitions nest
        assert v["top1_exact"] <= v["hierarchical_nine"]
        if v["malignant_miss_at1"] is not None:
            assert v["malignant_miss_at6"] <= v["malignant_miss_at1"]
            assert v["dangerous_error_rate"] <= v["malignant_miss_at1"]
