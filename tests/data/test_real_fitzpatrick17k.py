"""Ingest + validate the real 16,577-row Fitzpatrick17k table with generated stand-in images.

The real images are not redistributable, so each row gets a small distinct JPEG named by its
md5hash; md5 verification is off because no stand-in can match the real hashes, and near-duplicate
clustering is off because the stand-ins are tiny periodic textures that perceptual hashes cannot
tell apart (tests/data/test_near_duplicates.py covers clustering on real images). The counts below
are facts of the published table (see ../shared/README.md), so a regression in any oddity check
shows up as a wrong number.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from shared_data import shared_file
from skinflow.data.ingest import IngestConfig, ingest
from skinflow.data.near_duplicates import NearDuplicateConfig
from skinflow.data.splits import SplitConfig
from skinflow.data.validation import ValidateConfig, render_markdown, validate


@pytest.fixture(scope="module")
def validated(tmp_path_factory):
    csv = shared_file("fitzpatrick17k/fitzpatrick17k.csv")
    taxonomy = shared_file("fitzpatrick17k/taxonomy.csv")
    root = tmp_path_factory.mktemp("f17k_images")
    for md5 in pd.read_csv(csv, usecols=["md5hash"])["md5hash"]:
        pixels = np.resize(np.frombuffer(bytes.fromhex(md5), dtype=np.uint8), (40, 40, 3))
        Image.fromarray(pixels).save(root / f"{md5}.jpg", quality=80)
    cfg = IngestConfig(csv=str(csv), image_root=str(root), taxonomy=str(taxonomy), verify_md5=False,
                       near_duplicates=NearDuplicateConfig(enabled=False),
                       splits=SplitConfig(protocol="expert_selected"))
    rows, tax, ingest_report = ingest(cfg)
    manifest, quarantine, report = validate(rows, tax, ValidateConfig())
    return rows, manifest, quarantine, report, ingest_report


def test_every_row_is_accounted_for(validated):
    rows, manifest, quarantine, report, ingest_report = validated
    assert ingest_report["rows"] == 16577
    assert report["rows_in"] == 16577
    assert report["accepted"] + report["quarantined"] == 16577
    # The published table is internally consistent: every label is in its taxonomy with the right
    # partitions, hashes are unique, skin types are in range — nothing needs quarantining.
    assert report["quarantined"] == 0, report["quarantine_by_reason"]
    assert len(manifest) == 16577 and manifest["image_id"].is_unique
    assert sum(report["class_counts"].values()) == 16577 and len(report["class_counts"]) == 114


def test_reports_the_known_oddities_with_exact_counts(validated):
    odd = validated[3]["oddities"]
    assert odd["empty_url"] == 41
    assert odd["qc_checked"] == 504
    assert odd["qc_verdicts"] == {"1 Diagnostic": 348, "2 Characteristic": 32, "3 Wrongly labelled": 17,
                                  "4 Other": 10, "5 Potentially": 97}
    assert odd["qc_wrongly_labelled"] == 17
    assert odd["fitzpatrick_scale_unknown"] == 565
    assert odd["fitzpatrick_centaur_unknown"] == 1073
    assert odd["skin_type_both_known"] == 15230
    assert odd["skin_type_disagreement"] == 15230 - 7293


def test_flags_overlapping_label_names(validated):
    overlaps = validated[3]["oddities"]["overlapping_labels"]
    pairs = {(p["kind"], tuple(p["labels"])) for p in overlaps}
    assert ("same_words", ("granuloma pyogenic", "pyogenic granuloma")) in pairs
    assert ("contained", ("acne", "acne vulgaris")) in pairs
    assert ("contained", ("malignant melanoma", "melanoma")) in pairs
    assert ("also_nine_partition_name", ("malignant melanoma",)) in pairs


def test_flags_probable_label_noise_from_source_folders(validated):
    odd = validated[3]["oddities"]
    pairs = {(p["label"], p["folder"]): p["rows"] for p in odd["probable_label_noise_pairs"]}
    # A subacute-lupus label on images from the atlas's systemic-lupus folder.
    assert pairs[("lupus subacute", "systemic-lupus-erythematosus")] == 59
    assert odd["probable_label_noise"] == sum(pairs.values()) == 90
    assert odd["probable_label_noise_per_label"]["lupus subacute"] == 59
    # Folders that only spell the label differently (a typo, plural, subtype) are not noise.
    assert ("keloid", "kekoid") not in pairs and ("actinic keratosis", "actinic_keratoses") not in pairs


def test_expert_selected_protocol_tests_on_verified_rows(validated):
    manifest = validated[1]
    test = manifest[manifest["split"] == "test"]
    assert len(test) == 504 - 17
    assert (test["qc"] != "").all() and not test["qc"].str.contains("Wrongly").any()
    assert set(manifest["split_a12"]) == {"train", "val", "test", "unused"}
    unused = manifest[manifest["split_a12"] == "unused"]
    assert (unused["fitzpatrick_scale"] == -1).all() and len(unused) == 565


def test_markdown_report_is_readable(validated):
    text = render_markdown(validated[3], validated[4])
    assert "Rows in **16577** = accepted **16577** + quarantined **0**" in text
    assert "granuloma pyogenic" in text and "empty url: 41" in text


def test_label_noise_flag_and_review_table(validated):
    rows, manifest, _, report, ingest_report = validated
    noise = report["label_noise"]
    assert noise["flagged_rows"] == int(manifest["label_noise"].sum()) == ingest_report["label_noise_rows"] == 1325
    assert noise["pairs"] == 484 and noise["review_table"][0]["verdict"] == "different"
    assert "## Label noise" in render_markdown(report, ingest_report)
