"""Published split files (``ingest.splits.protocol: file``), end to end through ingest and validation.

A small Fitzpatrick17k-format dataset (seeded-noise JPEGs named by md5) gets a published-style CSV in
the Fitzpatrick17k-C layout (``md5hash``, ``partition`` plus other columns): most rows are assigned,
some marked removed, some simply not listed. Rows in must equal accepted + quarantined, and every row
the file removes or omits must be in the quarantine with its own reason and listed in the report.
"""

from __future__ import annotations

import csv
import hashlib
import io

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from skinflow.data.adapters import IngestError
from skinflow.data.ingest import IngestConfig, ingest
from skinflow.data.manifest import Reason
from skinflow.data.splits import SplitConfig
from skinflow.data.validation import ValidateConfig, render_markdown, validate

LABELS = {"psoriasis": ("inflammatory", "non-neoplastic"), "melanoma": ("malignant melanoma", "malignant")}
HEADER = ["md5hash", "fitzpatrick_scale", "fitzpatrick_centaur", "label", "nine_partition_label",
          "three_partition_label", "qc", "url", "url_alphanum"]


@pytest.fixture()
def dataset(tmp_path):
    from PIL import Image

    images = tmp_path / "images"
    images.mkdir()
    rows = []
    for i in range(40):
        rng = np.random.default_rng(i)
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
        md5 = hashlib.md5(buf.getvalue()).hexdigest()
        (images / f"{md5}.jpg").write_bytes(buf.getvalue())
        label = "psoriasis" if i % 2 else "melanoma"
        rows.append([md5, 1 + i % 6, 1 + i % 6, label, *LABELS[label], "", "", ""])
    with open(tmp_path / "table.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([HEADER, *rows])
    (tmp_path / "taxonomy.csv").write_text("label,nine_partition_label,three_partition_label\n" + "".join(
        f"{k},{v[0]},{v[1]}\n" for k, v in LABELS.items()))
    md5s = [r[0] for r in rows]
    # Published file: 30 assigned (upper-case hashes, as some exports write them), 4 removed,
    # 6 not listed, plus one id that is not in the table.
    partitions = ["train"] * 20 + ["valid"] * 4 + ["test"] * 6 + ["removed"] * 4
    published = pd.DataFrame({"filepath": [f"x/{m}.jpg" for m in md5s[:34]],
                              "md5hash": [m.upper() for m in md5s[:34]], "partition": partitions})
    published.loc[len(published)] = ["x/y.jpg", "f" * 32, "test"]
    published.to_csv(tmp_path / "published.csv", index=False)
    return tmp_path, md5s


def _config(tmp_path, **splits) -> IngestConfig:
    return IngestConfig(csv=str(tmp_path / "table.csv"), image_root=str(tmp_path / "images"),
                        taxonomy=str(tmp_path / "taxonomy.csv"), workers=1,
                        splits=SplitConfig(**{"protocol": "file", "file": str(tmp_path / "published.csv"),
                                              **splits}))


def test_file_protocol_end_to_end(dataset):
    tmp_path, md5s = dataset
    rows, taxonomy, ingest_report = ingest(_config(tmp_path))
    by_id = rows.set_index("image_id")
    assert (by_id.loc[md5s[:20], "split"] == "train").all()
    assert (by_id.loc[md5s[20:24], "split"] == "val").all()
    assert (by_id.loc[md5s[24:30], "split"] == "test").all()
    assert (by_id.loc[md5s[30:], "split"] == "unused").all()

    manifest, quarantine, report = validate(rows, taxonomy, ValidateConfig())
    assert report["rows_in"] == 40 and len(manifest) + len(quarantine) == 40
    assert sorted(manifest["image_id"]) == sorted(md5s[:30])
    reasons = quarantine.set_index("image_id")["reason"]
    assert (reasons[md5s[30:34]] == Reason.REMOVED_BY_SPLIT_FILE).all()
    assert (reasons[md5s[34:]] == Reason.NOT_IN_SPLIT_FILE).all()
    assert report["quarantine_by_reason"] == {"not_in_split_file": 6, "removed_by_split_file": 4}

    published = ingest_report["split_file"]
    assert published["active"] and published["file_rows"] == 35
    assert published["not_in_file"] == 6 and sorted(published["not_in_file_ids"]) == sorted(md5s[34:])
    assert published["removed_by_file"] == 4 and published["file_ids_not_in_table"] == 1
    text = render_markdown(report, ingest_report)
    assert "rows the file does not list **6**" in text and md5s[34] in text


def test_file_recorded_but_inactive_drops_nothing(dataset):
    tmp_path, md5s = dataset
    rows, taxonomy, ingest_report = ingest(_config(tmp_path, protocol="random_holdout"))
    assert "split_exclusion" not in rows and set(rows["split_file"]) == {"train", "val", "test", "unused"}
    manifest, quarantine, _ = validate(rows, taxonomy, ValidateConfig())
    assert len(manifest) == 40 and len(quarantine) == 0
    assert not ingest_report["split_file"]["active"]


@pytest.mark.parametrize("edit, message", [
    (lambda f: f.rename(columns={"partition": "fold"}), "no column 'partition'"),
    (lambda f: f.assign(partition=["train"] * 34 + ["holdout"]), "unknown partition name"),
    (lambda f: pd.concat([f, f.iloc[:1].assign(partition="test")]), "two partitions"),
])
def test_bad_split_files_are_clear_errors(dataset, edit, message):
    tmp_path, _ = dataset
    path = tmp_path / "published.csv"
    edit(pd.read_csv(path, dtype=str)).to_csv(path, index=False)
    with pytest.raises(IngestError, match=message):
        ingest(_config(tmp_path))


def test_file_protocol_needs_a_file():
    with pytest.raises(ValidationError, match="needs splits.file"):
        SplitConfig(protocol="file")
