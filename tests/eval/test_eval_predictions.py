"""map_predictions: every output kept, every listed item logged with the rule that mapped it."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from skinflow.eval.equivalence import LabelSpace
from skinflow.eval.predictions import LOG_COLUMNS, fitzpatrick_group, map_predictions

from eval_fixtures import taxonomy

TAXONOMY = taxonomy("melanoma", "malignant melanoma", "basal cell carcinoma", "nevocytic nevus", "psoriasis")

TABLE = """version: test-eq/1
equivalent:
  - [melanoma, malignant melanoma]
aliases:
  bcc: basal cell carcinoma
  mole: nevocytic nevus
  basal cell carcinoma nodular: basal cell carcinoma
"""


@pytest.fixture
def space(tmp_path) -> LabelSpace:
    path = tmp_path / "equivalence.yaml"
    path.write_text(TABLE, encoding="utf-8")
    return LabelSpace(TAXONOMY, table_path=path)


def dx(*items: str) -> str:
    return json.dumps({"diagnoses": list(items)})


RAW = pd.DataFrame({
    "image_id": ["a", "b", "c", "d", "e"],
    "label": ["melanoma", "basal cell carcinoma", "psoriasis", "nevocytic nevus", "melanoma"],
    "fitzpatrick_scale": [1, 4, -1, 6, 3],
    "raw_output": [
        dx("Malignant Melanoma", "mole"),                 # fold to exact + alias
        "1. BCC\n2. basal cell carcinoma nodular\n3. psoriasiss",  # numbered; duplicate canonical; fuzzy
        "I think it is psoriasis",                        # unparseable
        dx("blue widget disease"),                        # out of vocabulary
        '{"diagnoses": []}',                              # empty list -> parse failure
    ],
    "split": ["test"] * 5,                                # extra column must survive
})


def test_per_image_table_keeps_every_row(space):
    table, _ = map_predictions(RAW, space)
    assert list(table["image_id"]) == ["a", "b", "c", "d", "e"]
    assert list(table["split"]) == ["test"] * 5
    assert list(table["parse_ok"]) == [True, True, False, True, False]
    assert list(table["parse_error"]) == [None, None, "UNRECOGNISED_FORMAT", None, "EMPTY"]
    assert table.loc[1, "ranked_raw"] == ["BCC", "basal cell carcinoma nodular", "psoriasiss"]
    assert table.loc[1, "ranked_labels"] == ["basal cell carcinoma", "basal cell carcinoma", "psoriasis"]
    assert table.loc[0, "ranked_labels"] == ["malignant melanoma", "nevocytic nevus"]
    assert table.loc[2, "ranked_raw"] == [] and table.loc[2, "ranked_labels"] == []
    assert table.loc[3, "ranked_labels"] == [None]
    assert list(table["n_items"]) == [2, 3, 0, 1, 0]
    assert list(table["n_oov"]) == [0, 0, 0, 1, 0]
    assert list(table["fitzpatrick_group"]) == ["I-II", "III-IV", "unknown", "V-VI", "III-IV"]


def test_match_log_one_row_per_item_with_rule(space):
    _, log = map_predictions(RAW, space)
    assert tuple(log.columns) == LOG_COLUMNS
    assert len(log) == 2 + 3 + 1  # listed items only; failures list nothing
    rows = {(r.image_id, r.rank): r for r in log.itertuples()}
    a1 = rows[("a", 1)]
    assert (a1.raw, a1.normalised, a1.canonical_label, a1.rule) == (
        "Malignant Melanoma", "malignant melanoma", "malignant melanoma", "exact")
    assert not a1.hit_exact and a1.hit_equivalent  # equivalent to the truth "melanoma"
    assert (rows[("a", 2)].rule, rows[("a", 2)].hit_equivalent) == ("alias", False)
    assert [rows[("b", k)].rule for k in (1, 2, 3)] == ["alias", "alias", "fuzzy"]
    assert [rows[("b", k)].hit_exact for k in (1, 2, 3)] == [True, True, False]
    d1 = rows[("d", 1)]
    assert (d1.rule, d1.canonical_label, d1.hit_exact, d1.hit_equivalent) == ("oov", None, False, False)
    assert set(log["truth"]) == {"melanoma", "basal cell carcinoma", "nevocytic nevus"}


def test_truth_outside_taxonomy_never_hits_in_log(space):
    raw = pd.DataFrame({"image_id": [1, 2], "label": ["alien rash", np.nan], "fitzpatrick_scale": [2, 2],
                        "raw_output": [dx("alien rash", "psoriasis"), dx("melanoma")]})
    table, log = map_predictions(raw, space)
    assert len(table) == 2 and list(log["rule"]) == ["oov", "exact", "exact"]
    assert not log["hit_exact"].any() and not log["hit_equivalent"].any()


def test_missing_columns_and_duplicate_ids_rejected(space):
    with pytest.raises(ValueError, match="raw_output"):
        map_predictions(RAW.drop(columns="raw_output"), space)
    with pytest.raises(ValueError, match="duplicate"):
        map_predictions(pd.concat([RAW, RAW.iloc[:1]]), space)


def test_empty_input(space):
    table, log = map_predictions(RAW.iloc[:0], space)
    assert len(table) == 0 and len(log) == 0 and tuple(log.columns) == LOG_COLUMNS


def test_non_string_outputs_are_failures_not_crashes(space):
    raw = RAW.iloc[:3].assign(raw_output=[None, math.nan, 42])
    table, log = map_predictions(raw, space)
    assert not table["parse_ok"].any() and len(log) == 0
    assert list(table["parse_error"]) == ["EMPTY", "EMPTY", "WRONG_TYPE"]


@pytest.mark.parametrize("scale, group", [
    (1, "I-II"), (2, "I-II"), (3, "III-IV"), (4, "III-IV"), (5, "V-VI"), (6, "V-VI"),
    (-1, "unknown"), (0, "unknown"), (7, "unknown"), (None, "unknown"), (math.nan, "unknown"),
    (3.0, "III-IV"), (2.5, "unknown"), (np.int64(5), "V-VI"), ("4", "III-IV"), ("IV", "III-IV"),
    ("vi", "V-VI"), ("unknown", "unknown"), ("-1", "unknown"), (True, "unknown"),
])
def test_fitzpatrick_group(scale, group):
    assert fitzpatrick_group(scale) == group
