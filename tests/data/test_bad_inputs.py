"""Bad input to the ingestion layer: every defect ends as a clear ``IngestError`` or as a quarantine
row with the right reason code, and no row is ever lost (rows in = accepted + quarantined).

Datasets are built in ``tmp_path`` in the Fitzpatrick17k file format (plus HAM10000 / ISIC and
generic CSVs): a taxonomy CSV, an image folder of small seeded-noise JPEGs named ``<md5>.jpg`` and
the source table. The two large per-row catalogues (one Fitzpatrick17k, one generic) are ingested
and validated once per module; each defect is still its own test.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from skinflow.data import ingest as ingest_module
from skinflow.data.adapters import IngestError
from skinflow.data.ingest import IngestConfig, ingest
from skinflow.data.manifest import Reason
from skinflow.data.validation import ValidateConfig, validate

F17K_HEADER = ["md5hash", "fitzpatrick_scale", "fitzpatrick_centaur", "label", "nine_partition_label",
               "three_partition_label", "qc", "url", "url_alphanum"]
TAXONOMY = [
    ("psoriasis", "inflammatory", "non-neoplastic"),
    ("melanoma", "malignant melanoma", "malignant"),
    ("dermatofibroma", "benign dermal", "benign"),
]
PARTITIONS = {label: (nine, three) for label, nine, three in TAXONOMY}
# Partitions as in skinflow/data/taxonomies/ham10000.csv, which the HAM adapter fills in itself.
HAM_TAXONOMY = [
    ("melanoma", "malignant melanoma", "malignant"),
    ("nevocytic nevus", "benign melanocyte", "benign"),
    ("basal cell carcinoma", "malignant epidermal", "malignant"),
]
ISIC_HEADER = ["image", "MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC", "UNK"]
TRUNCATED_OR_CORRUPT = {Reason.TRUNCATED_IMAGE.value, Reason.CORRUPT_IMAGE.value}


# --------------------------------------------------------------------------- image bytes

def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def noise(seed: int, shape: tuple[int, ...], dtype=np.uint8) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, np.iinfo(dtype).max, shape, dtype=dtype, endpoint=True)


def jpeg_bytes(seed: int, size: int = 64, mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(noise(seed, (size, size, 3))).convert(mode).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def genuine_bomb_png(width: int = 8000, height: int = 5100) -> bytes:
    """A complete, decodable single-colour 8-bit grayscale PNG of width*height pixels (~180 kB)."""
    comp = zlib.compressobj(1)
    idat = comp.compress(b"\x00" * ((width + 1) * height)) + comp.flush()
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b""))


def lying_header_png(width: int = 50_000, height: int = 50_000) -> bytes:
    """A PNG whose header claims a huge RGB image but whose data is a few bytes."""
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + _png_chunk(b"IEND", b""))


# --------------------------------------------------------------------------- dataset builders

def write_taxonomy(path: Path, rows=TAXONOMY) -> Path:
    lines = ["label,nine_partition_label,three_partition_label"] + [",".join(r) for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_csv(path: Path, header: list[str], rows: list[list[str]], newline: str = "\n",
              encoding: str = "utf-8", bom: bool = False) -> Path:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator=newline)
    writer.writerow(header)
    writer.writerows(rows)
    data = buf.getvalue().encode(encoding)
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + data)
    return path


class F17kDataset:
    """A tiny Fitzpatrick17k-format dataset: taxonomy.csv, images/<md5>.jpg, fitzpatrick17k.csv."""

    def __init__(self, root: Path, taxonomy=TAXONOMY):
        self.root = root
        self.images = root / "images"
        self.images.mkdir(parents=True, exist_ok=True)
        self.taxonomy = write_taxonomy(root / "taxonomy.csv", taxonomy)
        self.rows: list[dict[str, str]] = []
        self._seed = 1000

    def fresh_jpeg(self, size: int = 64, mode: str = "RGB") -> bytes:
        self._seed += 1
        return jpeg_bytes(self._seed, size, mode)

    def put(self, data: bytes, name: str | None = None) -> str:
        """Write image bytes into the image folder (as ``<md5>.jpg`` by default); return their md5."""
        digest = md5(data)
        (self.images / (name or f"{digest}.jpg")).write_bytes(data)
        return digest

    def add(self, md5hash: str | None = None, **fields: str) -> int:
        """Append a row (a fresh valid image unless md5hash is given); return its source_row."""
        if md5hash is None:
            md5hash = self.put(self.fresh_jpeg())
        label = fields.get("label", "psoriasis")
        nine, three = PARTITIONS.get(label, ("inflammatory", "non-neoplastic"))
        row = {"md5hash": md5hash, "fitzpatrick_scale": "2", "fitzpatrick_centaur": "2",
               "label": label, "nine_partition_label": nine, "three_partition_label": three,
               "qc": "", "url": f"https://example.org/atlas/{label.replace(' ', '-')}/{len(self.rows)}.jpg",
               "url_alphanum": ""}
        row.update(fields)
        self.rows.append(row)
        return len(self.rows) - 1

    def add_good(self, n: int) -> list[int]:
        labels = [t[0] for t in TAXONOMY]
        fitz = ["-1", "1", "2", "3", "4", "5", "6"]
        return [self.add(label=labels[i % 3], fitzpatrick_scale=fitz[i % 7], fitzpatrick_centaur=fitz[(i + 2) % 7],
                         qc="1 Diagnostic" if i % 4 == 0 else "") for i in range(n)]

    def write(self, name: str = "fitzpatrick17k.csv", header: list[str] | None = None, **kw) -> Path:
        header = header or F17K_HEADER
        rows = [[r.get(c, "") for c in header] for r in self.rows]
        return write_csv(self.root / name, header, rows, **kw)

    def config(self, csv_path: Path | None = None, **kw) -> IngestConfig:
        csv_path = csv_path or self.write()
        return IngestConfig(csv=str(csv_path), image_root=str(self.images), taxonomy=str(self.taxonomy),
                            workers=1, **kw)


@dataclass
class Result:
    rows: pd.DataFrame          # ingest output (incl. failed rows)
    ingest_report: dict
    manifest: pd.DataFrame      # accepted
    quarantine: pd.DataFrame
    report: dict

    def reason(self, source_row: int) -> str | None:
        hit = self.quarantine.loc[self.quarantine["source_row"] == source_row, "reason"]
        assert len(hit) <= 1, f"source row {source_row} quarantined {len(hit)} times"
        return None if hit.empty else str(hit.iat[0])

    def accepted(self, source_row: int) -> bool:
        return bool((self.manifest["source_row"] == source_row).any())


def run(cfg: IngestConfig, vcfg: ValidateConfig | None = None) -> Result:
    """ingest + validate, asserting conservation on every run."""
    rows, taxonomy, ingest_report = ingest(cfg)
    manifest, quarantine, report = validate(rows, taxonomy, vcfg or ValidateConfig())
    assert report["rows_in"] == len(rows) == report["accepted"] + report["quarantined"]
    assert report["conservation_ok"] is True
    assert len(manifest) == report["accepted"] and len(quarantine) == report["quarantined"]
    seen = sorted(list(manifest["source_row"]) + list(quarantine["source_row"]))
    assert seen == list(range(len(rows))), "every source row must be accepted or quarantined exactly once"
    assert sum(report["quarantine_by_reason"].values()) == len(quarantine)
    return Result(rows, ingest_report, manifest, quarantine, report)


# --------------------------------------------------------------------------- F17k per-row catalogue

# case id -> expected reason. Each builder below adds that case's rows to a shared dataset.
F17K_CASES: dict[str, str | set[str]] = {
    "missing_image": Reason.MISSING_IMAGE,
    "zero_byte_file": Reason.EMPTY_FILE,
    "truncated_jpeg": Reason.TRUNCATED_IMAGE,
    "random_bytes_as_jpeg": Reason.CORRUPT_IMAGE,
    "jpeg_soi_then_garbage": TRUNCATED_OR_CORRUPT,  # Pillow: "Truncated File Read"
    "md5_mismatch": Reason.MD5_MISMATCH,
    "cmyk_jpeg": Reason.NON_RGB,
    "grayscale_jpeg": Reason.NON_RGB,
    "tiny_8x8": Reason.TINY_IMAGE,
    "unknown_label": Reason.UNKNOWN_LABEL,
    "melanoma_in_inflammatory": Reason.PARTITION_MISMATCH,
    "wrong_three_partition": Reason.PARTITION_MISMATCH,
    "fitzpatrick_7": Reason.BAD_FITZPATRICK,
    "fitzpatrick_abc": Reason.BAD_FITZPATRICK,
    "fitzpatrick_3.5": Reason.BAD_FITZPATRICK,
    "fitzpatrick_empty": Reason.BAD_FITZPATRICK,
    "fitzpatrick_0": Reason.BAD_FITZPATRICK,
    "centaur_7": Reason.BAD_FITZPATRICK,
    "md5hash_not_hex": Reason.BAD_ID,
    "md5hash_31_chars": Reason.BAD_ID,
    "md5hash_33_chars": Reason.BAD_ID,
    "md5hash_traversal": Reason.BAD_ID,
    "url_alphanum_dotdot": Reason.UNSAFE_PATH,
    "url_alphanum_backslash_dotdot": Reason.UNSAFE_PATH,
    "url_alphanum_absolute": Reason.UNSAFE_PATH,
    "duplicate_row_second_copy": Reason.DUPLICATE_ROW,
    "same_bytes_two_labels": Reason.CONFLICTING_DUPLICATE,
}


def _build_f17k_catalogue(ds: F17kDataset, outside: Path) -> tuple[dict[str, list[int]], list[int], int]:
    cases: dict[str, list[int]] = {}
    good = ds.add_good(12)
    # A good row found through url_alphanum (no <md5>.jpg file), as in the real dataset.
    data = ds.fresh_jpeg()
    ds.put(data, name="psoriasisexampleorg42.jpg")
    good.append(ds.add(md5hash=md5(data), url_alphanum="psoriasisexampleorg42.jpg"))

    cases["missing_image"] = [ds.add(md5hash=md5(b"never written"))]
    cases["zero_byte_file"] = [ds.add(md5hash=ds.put(b""))]
    half = ds.fresh_jpeg()
    half = half[: len(half) // 2]
    cases["truncated_jpeg"] = [ds.add(md5hash=ds.put(half))]
    cases["random_bytes_as_jpeg"] = [ds.add(md5hash=ds.put(noise(7, (3000,)).tobytes()))]
    cases["jpeg_soi_then_garbage"] = [ds.add(md5hash=ds.put(b"\xff\xd8\xff\xe0" + noise(8, (2000,)).tobytes()))]
    content = ds.fresh_jpeg()
    claimed = md5(b"what the table claims")
    ds.put(content, name=f"{claimed}.jpg")
    cases["md5_mismatch"] = [ds.add(md5hash=claimed)]
    cases["cmyk_jpeg"] = [ds.add(md5hash=ds.put(ds.fresh_jpeg(mode="CMYK")))]
    cases["grayscale_jpeg"] = [ds.add(md5hash=ds.put(ds.fresh_jpeg(mode="L")))]
    cases["tiny_8x8"] = [ds.add(md5hash=ds.put(ds.fresh_jpeg(size=8)))]
    cases["unknown_label"] = [ds.add(label="eczema", nine_partition_label="inflammatory",
                                     three_partition_label="non-neoplastic")]
    cases["melanoma_in_inflammatory"] = [ds.add(label="melanoma", nine_partition_label="inflammatory",
                                                three_partition_label="malignant")]
    cases["wrong_three_partition"] = [ds.add(label="dermatofibroma", three_partition_label="malignant")]
    cases["fitzpatrick_7"] = [ds.add(fitzpatrick_scale="7")]
    cases["fitzpatrick_abc"] = [ds.add(fitzpatrick_scale="abc")]
    cases["fitzpatrick_3.5"] = [ds.add(fitzpatrick_scale="3.5")]
    cases["fitzpatrick_empty"] = [ds.add(fitzpatrick_scale="")]
    cases["fitzpatrick_0"] = [ds.add(fitzpatrick_scale="0")]
    cases["centaur_7"] = [ds.add(fitzpatrick_centaur="7")]
    cases["md5hash_not_hex"] = [ds.add(md5hash="zz" + "0" * 30)]
    cases["md5hash_31_chars"] = [ds.add(md5hash="a" * 31)]
    cases["md5hash_33_chars"] = [ds.add(md5hash="a" * 33)]
    # A valid image exists at the traversal target: it must still be refused, never read.
    (ds.root / "evil.jpg").write_bytes(ds.fresh_jpeg())
    cases["md5hash_traversal"] = [ds.add(md5hash="../evil")]
    outside.write_bytes(ds.fresh_jpeg())
    cases["url_alphanum_dotdot"] = [ds.add(md5hash=md5(b"no such file 1"), url_alphanum=f"../{outside.name}")]
    cases["url_alphanum_backslash_dotdot"] = [ds.add(md5hash=md5(b"no such file 2"),
                                                     url_alphanum=f"..\\{outside.name}")]
    cases["url_alphanum_absolute"] = [ds.add(md5hash=md5(b"no such file 3"), url_alphanum=str(outside))]
    first = ds.add(label="melanoma", fitzpatrick_scale="5", fitzpatrick_centaur="5")
    good.append(first)
    cases["duplicate_row_second_copy"] = [ds.add(**ds.rows[first])]
    shared = ds.put(ds.fresh_jpeg())
    cases["same_bytes_two_labels"] = [ds.add(md5hash=shared, label="psoriasis"),
                                      ds.add(md5hash=shared, label="melanoma")]
    assert set(cases) == set(F17K_CASES)
    return cases, good, first


@pytest.fixture(scope="module")
def f17k_catalogue(tmp_path_factory):
    root = tmp_path_factory.mktemp("f17k_catalogue")
    ds = F17kDataset(root)
    outside = root / "outside.jpg"      # i.e. images/../outside.jpg
    cases, good, first_copy = _build_f17k_catalogue(ds, outside)
    opened: list[str] = []
    original = ingest_module.probe_images

    def spy(paths, *args, **kwargs):
        paths = [str(p) for p in paths]
        opened.extend(paths)
        return original(paths, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ingest_module, "probe_images", spy)
        result = run(ds.config())
    return {"ds": ds, "cases": cases, "good": good, "first_copy": first_copy, "result": result,
            "opened": opened, "outside": outside}


@pytest.mark.parametrize("case", list(F17K_CASES))
def test_f17k_defect_is_quarantined_with_reason(f17k_catalogue, case):
    result: Result = f17k_catalogue["result"]
    expected = F17K_CASES[case]
    expected = expected if isinstance(expected, set) else {expected}
    for source_row in f17k_catalogue["cases"][case]:
        assert result.reason(source_row) in expected, result.quarantine.loc[
            result.quarantine["source_row"] == source_row, ["reason", "detail"]].to_dict("records")
        assert not result.accepted(source_row)


def test_f17k_truncated_jpeg_code_is_precise(f17k_catalogue):
    (row,) = f17k_catalogue["cases"]["truncated_jpeg"]
    reason = f17k_catalogue["result"].reason(row)
    assert reason in TRUNCATED_OR_CORRUPT
    assert reason == Reason.TRUNCATED_IMAGE  # observed with Pillow: "image file is truncated"


def test_f17k_good_rows_accepted(f17k_catalogue):
    """Valid rows (skin types -1..6, QC notes, url_alphanum lookup, first of two copies) pass."""
    result: Result = f17k_catalogue["result"]
    for source_row in f17k_catalogue["good"]:
        assert result.accepted(source_row), result.quarantine[result.quarantine["source_row"] == source_row]
    accepted = result.manifest.set_index("source_row")
    assert {-1, 1, 2, 3, 4, 5, 6} <= set(accepted["fitzpatrick_scale"].dropna().astype(int))
    assert (accepted["mode"] == "RGB").all() and (accepted["width"] == 64).all()
    assert (accepted["content_md5"] == accepted["image_id"]).all()
    assert accepted.loc[f17k_catalogue["good"][12], "rel_path"] == "psoriasisexampleorg42.jpg"


def test_f17k_unsafe_targets_never_opened(f17k_catalogue):
    result: Result = f17k_catalogue["result"]
    images = Path(f17k_catalogue["ds"].images).resolve()
    assert f17k_catalogue["opened"], "the probe spy saw no paths"
    for path in f17k_catalogue["opened"]:
        assert Path(path).resolve().is_relative_to(images), f"probed a file outside the image root: {path}"
    cases = f17k_catalogue["cases"]
    for case in ("md5hash_traversal", "url_alphanum_dotdot", "url_alphanum_backslash_dotdot",
                 "url_alphanum_absolute"):
        for source_row in cases[case]:
            row = result.rows.loc[result.rows["source_row"] == source_row].iloc[0]
            assert pd.isna(row["content_md5"]), f"{case}: bytes were read"


def test_f17k_duplicate_keeps_first_copy(f17k_catalogue):
    result: Result = f17k_catalogue["result"]
    first = f17k_catalogue["first_copy"]
    (second,) = f17k_catalogue["cases"]["duplicate_row_second_copy"]
    assert result.accepted(first) and result.reason(second) == Reason.DUPLICATE_ROW
    both = f17k_catalogue["cases"]["same_bytes_two_labels"]
    assert [result.reason(r) for r in both] == [Reason.CONFLICTING_DUPLICATE] * 2


def test_f17k_conservation_and_records(f17k_catalogue):
    result: Result = f17k_catalogue["result"]
    ds: F17kDataset = f17k_catalogue["ds"]
    cases = f17k_catalogue["cases"]
    bad_rows = [r for rows in cases.values() for r in rows]
    assert len({F17K_CASES[c] for c in cases if isinstance(F17K_CASES[c], str)}) >= 10 and len(f17k_catalogue["good"]) >= 10
    assert result.report["rows_in"] == len(ds.rows) == result.ingest_report["rows"]
    assert result.report["accepted"] + result.report["quarantined"] == len(ds.rows)
    assert result.report["accepted"] == len(f17k_catalogue["good"])
    counts = result.quarantine["source_row"].value_counts()
    assert sorted(counts.index) == sorted(bad_rows) and (counts == 1).all()
    for _, q in result.quarantine.iterrows():
        record = json.loads(q["record"])
        assert record["source_row"] == q["source_row"]
        assert record["label"] == ds.rows[q["source_row"]]["label"]
        assert record["image_id"] == ds.rows[q["source_row"]]["md5hash"].lower()
    assert not set(result.manifest["source_row"]) & set(bad_rows)
    duplicate_cases = {"duplicate_row_second_copy", "same_bytes_two_labels"}
    bad_ids = {ds.rows[r]["md5hash"] for c, rows in cases.items() if c not in duplicate_cases for r in rows}
    assert not set(result.manifest["image_id"]) & bad_ids
    assert result.report["quarantine_by_reason"] == result.quarantine["reason"].value_counts().to_dict()


def test_f17k_quarantine_detail_names_the_failing_expectation(f17k_catalogue):
    result: Result = f17k_catalogue["result"]
    q = result.quarantine.set_index("source_row")
    (empty,) = f17k_catalogue["cases"]["fitzpatrick_empty"]
    (centaur,) = f17k_catalogue["cases"]["centaur_7"]
    assert "fitzpatrick_scale_present" in q.loc[empty, "detail"]
    assert "fitzpatrick_centaur_domain" in q.loc[centaur, "detail"]


def test_table_expectations_are_reported_under_their_own_names():
    from skinflow.data import gx_suites
    from skinflow.data.manifest import conform

    accepted = conform(pd.DataFrame({"image_id": ["a", "b"], "source": "x", "source_row": [0, 1],
                                     "label": ["psoriasis"] * 2, "content_md5": ["0" * 32, "1" * 32],
                                     "mode": ["RGB", "L"], "split": ["train", "train"]}))
    accepted = accepted.assign(row_id=[0, 1], label_path="x")
    outcomes = {o.name: o.success for o in gx_suites.table_outcomes(accepted, ["psoriasis"], 1)}
    assert outcomes["mode_is_rgb"] is False
    assert outcomes["label_distinct_count"] is True and outcomes["split_values"] is True


# --------------------------------------------------------------------------- F17k: one-off datasets

def test_md5_mismatch_accepted_when_verification_off(tmp_path):
    ds = F17kDataset(tmp_path)
    good = ds.add_good(2)
    claimed = md5(b"not these bytes")
    ds.put(ds.fresh_jpeg(), name=f"{claimed}.jpg")
    row = ds.add(md5hash=claimed)
    checked = run(ds.config(verify_md5=True))
    assert checked.reason(row) == Reason.MD5_MISMATCH
    unchecked = run(ds.config(verify_md5=False))
    assert unchecked.ingest_report["md5_verified"] is False
    assert all(unchecked.accepted(r) for r in [*good, row]) and unchecked.report["quarantined"] == 0


def test_truncated_jpeg_without_md5_verification(tmp_path):
    ds = F17kDataset(tmp_path)
    good = ds.add_good(1)
    whole = ds.fresh_jpeg()
    digest = ds.put(whole)
    (ds.images / f"{digest}.jpg").write_bytes(whole[: len(whole) // 2])  # name no longer matches bytes
    row = ds.add(md5hash=digest)
    result = run(ds.config(verify_md5=False))
    assert result.reason(row) in TRUNCATED_OR_CORRUPT
    assert result.reason(row) == Reason.TRUNCATED_IMAGE
    assert result.accepted(good[0])


def test_max_pixels_treats_large_header_as_bomb(tmp_path):
    ds = F17kDataset(tmp_path)
    big = ds.add()                                        # 64x64 = 4096 px > 1000
    small = ds.add(md5hash=ds.put(ds.fresh_jpeg(size=24)))  # 576 px
    result = run(ds.config(max_pixels=1000, min_side=8), ValidateConfig(min_side=8))
    assert result.reason(big) == Reason.DECOMPRESSION_BOMB
    assert "exceeds 1000" in result.quarantine.iloc[0]["detail"]
    assert result.accepted(small)


def test_f17k_empty_label_is_missing_label(tmp_path):
    ds = F17kDataset(tmp_path)
    ds.add_good(1)
    row = ds.add(label="", nine_partition_label="", three_partition_label="")
    assert run(ds.config()).reason(row) == Reason.MISSING_LABEL


def test_f17k_bad_centaur_is_bad_fitzpatrick(tmp_path):
    ds = F17kDataset(tmp_path)
    ds.add_good(1)
    rows = {value: ds.add(fitzpatrick_centaur=value) for value in ("abc", "3.5", "")}
    result = run(ds.config())
    assert {value: result.reason(row) for value, row in rows.items()} == {
        value: Reason.BAD_FITZPATRICK for value in rows}


@pytest.mark.filterwarnings("ignore:invalid value encountered in cast:RuntimeWarning")
@pytest.mark.parametrize("value", ["inf", "-inf", "1e30"])
def test_f17k_non_finite_fitzpatrick_is_quarantined(tmp_path, value):
    ds = F17kDataset(tmp_path)
    ds.add_good(1)
    row = ds.add(fitzpatrick_scale=value)
    assert run(ds.config()).reason(row) == Reason.BAD_FITZPATRICK


# --------------------------------------------------------------------------- whole-table problems

def test_empty_csv_raises(tmp_path):
    ds = F17kDataset(tmp_path)
    for content in (b"", b"\n\r\n  \n"):
        path = tmp_path / "empty.csv"
        path.write_bytes(content)
        with pytest.raises(IngestError, match="empty"):
            ingest(ds.config(path))


def test_header_only_csv_yields_zero_rows_and_fails_validation(tmp_path):
    ds = F17kDataset(tmp_path)
    rows, taxonomy, ingest_report = ingest(ds.config())
    assert len(rows) == 0 and ingest_report["rows"] == 0
    manifest, quarantine, report = validate(rows, taxonomy, ValidateConfig())
    assert report["rows_in"] == report["accepted"] == report["quarantined"] == 0
    assert report["status"] == "fail"
    row_count = {t["name"]: t["success"] for t in report["table_expectations"]}["row_count"]
    assert row_count is False


def test_table_with_no_readable_row_is_quarantined(tmp_path):
    ds = F17kDataset(tmp_path)
    rows = [ds.add(md5hash="not-an-md5"), ds.add(md5hash="../../etc/passwd")]
    result = run(ds.config())
    assert [result.reason(r) for r in rows] == [Reason.BAD_ID] * 2


def test_missing_column_is_named(tmp_path):
    ds = F17kDataset(tmp_path)
    ds.add_good(2)
    header = [c for c in F17K_HEADER if c != "qc"]
    with pytest.raises(IngestError, match=r"missing required column\(s\) 'qc'"):
        ingest(ds.config(ds.write(header=header)))


def test_renamed_column_gets_a_suggestion(tmp_path):
    ds = F17kDataset(tmp_path)
    ds.add_good(2)
    for row in ds.rows:
        row["labels"] = row.pop("label")
    header = ["labels" if c == "label" else c for c in F17K_HEADER]
    with pytest.raises(IngestError) as err:
        ingest(ds.config(ds.write(header=header)))
    message = str(err.value)
    assert "'label'" in message and "found 'labels'" in message and "renamed" in message


def test_legacy_fitzpatrick_column_is_accepted_with_note(tmp_path):
    ds = F17kDataset(tmp_path)
    good = ds.add_good(3)
    for row in ds.rows:
        row["fitzpatrick"] = row.pop("fitzpatrick_scale")
    header = ["fitzpatrick" if c == "fitzpatrick_scale" else c for c in F17K_HEADER]
    result = run(ds.config(ds.write(header=header)))
    assert all(result.accepted(r) for r in good)
    assert any("legacy" in n and "'fitzpatrick'" in n for n in result.ingest_report["notes"])
    assert list(result.manifest["fitzpatrick_scale"]) == [-1, 1, 2]


def test_extra_column_is_accepted_with_note(tmp_path):
    ds = F17kDataset(tmp_path)
    good = ds.add_good(2)
    for row in ds.rows:
        row["annotator_comment"] = "ok"
    result = run(ds.config(ds.write(header=F17K_HEADER + ["annotator_comment"])))
    assert all(result.accepted(r) for r in good)
    assert any("extra columns" in n and "annotator_comment" in n for n in result.ingest_report["notes"])


def test_non_utf8_csv_names_byte_offset_and_encoding(tmp_path):
    label = "café au lait macule"
    ds = F17kDataset(tmp_path, taxonomy=TAXONOMY + [(label, "benign epidermal", "benign")])
    ds.add_good(1)
    row = ds.add(label=label, nine_partition_label="benign epidermal", three_partition_label="benign")
    path = ds.write(encoding="cp1252")
    offset = path.read_bytes().index(b"\xe9")
    with pytest.raises(IngestError) as err:
        ingest(ds.config(path))
    message = str(err.value)
    assert f"byte {offset}" in message and "encoding" in message and "utf-8" in message
    result = run(ds.config(path, encoding="cp1252"))
    assert result.accepted(row)
    assert result.manifest.loc[result.manifest["source_row"] == row, "label"].iat[0] == label


def test_crlf_and_bom_give_the_same_manifest(tmp_path):
    ds = F17kDataset(tmp_path)
    ds.add_good(6)
    ds.add(label="eczema")  # one quarantined row too
    columns = ["source_row", "image_id", "label", "nine_partition_label", "fitzpatrick_scale", "qc", "url",
               "content_md5", "split"]
    lf_cfg = ds.config(ds.write("lf.csv"))
    lf_rows, _, lf_report = ingest(lf_cfg)
    assert not lf_report["notes"]
    variants = {"crlf.csv": dict(newline="\r\n"), "bom.csv": dict(bom=True),
                "bom_crlf.csv": dict(newline="\r\n", bom=True)}
    for name, kw in variants.items():
        rows, _, report = ingest(ds.config(ds.write(name, **kw)))
        pd.testing.assert_frame_equal(rows[columns], lf_rows[columns], obj=name)
        assert ("CRLF line endings normalised" in report["notes"]) == ("newline" in kw)
        # No stray '\r' or BOM survives in any value.
        assert not rows[["image_id", "label", "url"]].apply(
            lambda c: c.str.contains("\r|\ufeff", regex=True)).any().any()
    lf, crlf = run(lf_cfg), run(ds.config(tmp_path / "bom_crlf.csv"))
    pd.testing.assert_frame_equal(crlf.manifest[columns], lf.manifest[columns])
    assert lf.report["accepted"] == 6
    assert list(crlf.quarantine["reason"]) == list(lf.quarantine["reason"]) == [Reason.UNKNOWN_LABEL]


# --------------------------------------------------------------------------- generic adapter

GENERIC_IMAGE_CASES = {
    "rgba_png": Reason.NON_RGB,
    "gray16_png": Reason.NON_RGB,
    "palette_png": Reason.NON_RGB,
    "genuine_bomb_png": Reason.DECOMPRESSION_BOMB,
    "lying_header_png": Reason.DECOMPRESSION_BOMB,
}
GENERIC_UNSAFE = {
    "dotdot": "../outside.jpg",
    "etc_passwd": "/etc/passwd",
    "windows_drive": "C:\\x.jpg",
    "nested_escape": "a/../../b.jpg",
    "backslash_escape": "..\\outside.jpg",
    "home": "~/x.jpg",
    "absolute_to_valid_image": "<absolute path of outside.jpg>",
}

def _spy_probe(opened: list[str]):
    original = ingest_module.probe_images

    def spy(paths, *args, **kwargs):
        paths = [str(p) for p in paths]
        opened.extend(paths)
        return original(paths, *args, **kwargs)

    return spy


@pytest.fixture(scope="module")
def generic_catalogue(tmp_path_factory):
    """Generic CSV (safe paths only): PNG mode defects, decompression bombs, a missing label, 10 good rows."""
    root = tmp_path_factory.mktemp("generic_catalogue")
    images = root / "images"
    (images / "derm").mkdir(parents=True)
    rows: list[list[str]] = []
    good = []
    for i in range(10):
        (images / "derm" / f"good_{i}.jpg").write_bytes(jpeg_bytes(5000 + i))
        good.append(len(rows))
        rows.append([f"derm/good_{i}.jpg", TAXONOMY[i % 3][0]])
    blobs = {
        "rgba_png": png_bytes(Image.fromarray(noise(1, (64, 64, 4)), "RGBA")),
        "gray16_png": png_bytes(Image.fromarray(noise(2, (64, 64), np.uint16))),
        "palette_png": png_bytes(Image.fromarray(noise(3, (64, 64, 3))).convert("P")),
        "genuine_bomb_png": genuine_bomb_png(),
        "lying_header_png": lying_header_png(),
    }
    image_cases = {}
    for case, data in blobs.items():
        (images / f"{case}.png").write_bytes(data)
        image_cases[case] = len(rows)
        rows.append([f"{case}.png", "melanoma"])
    missing_label = len(rows)
    (images / "derm" / "nolabel.jpg").write_bytes(jpeg_bytes(6002))
    rows.append(["derm/nolabel.jpg", ""])
    csv_path = write_csv(root / "generic.csv", ["path", "label"], rows)
    cfg = IngestConfig(source="generic", csv=str(csv_path), image_root=str(images),
                       taxonomy=str(write_taxonomy(root / "taxonomy.csv")), workers=1)
    return {"result": run(cfg), "good": good, "image_cases": image_cases, "missing_label": missing_label}


@pytest.mark.parametrize("case", list(GENERIC_IMAGE_CASES))
def test_generic_image_defect(generic_catalogue, case):
    result: Result = generic_catalogue["result"]
    assert result.reason(generic_catalogue["image_cases"][case]) == GENERIC_IMAGE_CASES[case]


def test_generic_16bit_png_mode_is_reported(generic_catalogue):
    result: Result = generic_catalogue["result"]
    row = result.rows.loc[result.rows["source_row"] == generic_catalogue["image_cases"]["gray16_png"]].iloc[0]
    assert row["mode"].startswith("I;16") and "16bit" in row["mode"]


def test_generic_bombs_are_caught_before_decoding(generic_catalogue):
    result: Result = generic_catalogue["result"]
    rows = result.rows.set_index("source_row")
    genuine = rows.loc[generic_catalogue["image_cases"]["genuine_bomb_png"]]
    assert (genuine["width"], genuine["height"]) == (8000, 5100)   # header read, pixels never decoded
    assert "exceeds 40000000" in genuine["ingest_detail"]
    lying = rows.loc[generic_catalogue["image_cases"]["lying_header_png"]]
    assert "decompression bomb" in lying["ingest_detail"]          # Pillow's own guard, as an error


def test_generic_missing_label_and_good_rows(generic_catalogue):
    result: Result = generic_catalogue["result"]
    assert result.reason(generic_catalogue["missing_label"]) == Reason.MISSING_LABEL
    assert all(result.accepted(r) for r in generic_catalogue["good"])
    assert result.report["accepted"] == len(generic_catalogue["good"])
    # Partitions come from the taxonomy for sources without partition columns.
    accepted = result.manifest
    assert (accepted["nine_partition_label"] == accepted["label"].map(
        {k: v[0] for k, v in PARTITIONS.items()})).all()


@pytest.fixture(scope="module")
def generic_traversal(tmp_path_factory):
    """Generic CSV with unsafe paths whose targets are valid images; ingested lazily (inside the test)."""
    root = tmp_path_factory.mktemp("generic_traversal")
    images = root / "images"
    images.mkdir()
    outside = root / "outside.jpg"
    outside.write_bytes(jpeg_bytes(6000))
    (root / "b.jpg").write_bytes(jpeg_bytes(6001))
    paths = {**GENERIC_UNSAFE, "absolute_to_valid_image": str(outside)}
    rows, unsafe, good = [], {}, []
    for i in range(3):
        (images / f"good_{i}.jpg").write_bytes(jpeg_bytes(6100 + i))
        good.append(len(rows))
        rows.append([f"good_{i}.jpg", TAXONOMY[i][0]])
    for case, path in paths.items():
        unsafe[case] = len(rows)
        rows.append([path, "psoriasis"])
    cfg = IngestConfig(source="generic", csv=str(write_csv(root / "generic.csv", ["path", "label"], rows)),
                       image_root=str(images), taxonomy=str(write_taxonomy(root / "taxonomy.csv")), workers=1)
    memo: dict = {"opened": []}

    def result() -> Result:
        if "result" not in memo:
            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(ingest_module, "probe_images", _spy_probe(memo["opened"]))
                memo["result"] = run(cfg)
        return memo["result"]

    return {"result": result, "opened": memo["opened"], "unsafe": unsafe, "good": good, "images": images,
            "planted": [outside, root / "b.jpg"]}


def test_generic_unsafe_path_helper():
    """safe_relpath itself (the adapter's only gate) refuses every escaping / absolute form."""
    from skinflow.data.adapters import safe_relpath

    for path in GENERIC_UNSAFE.values():
        if not path.startswith("<"):
            assert safe_relpath(path) is None, path
    assert safe_relpath("/tmp/x.jpg") is None and safe_relpath("a\x00.jpg") is None
    assert safe_relpath("derm/./a.jpg") == "derm/a.jpg" and safe_relpath("derm\\a.jpg") == "derm/a.jpg"


@pytest.mark.parametrize("case", list(GENERIC_UNSAFE))
def test_generic_unsafe_path_is_quarantined(generic_traversal, case):
    result = generic_traversal["result"]()
    source_row = generic_traversal["unsafe"][case]
    assert result.reason(source_row) == Reason.UNSAFE_PATH
    row = result.rows.loc[result.rows["source_row"] == source_row].iloc[0]
    assert pd.isna(row["content_md5"]) and pd.isna(row["width"]), "the file was read"
    assert all(result.accepted(r) for r in generic_traversal["good"])


def test_generic_traversal_targets_never_opened(generic_traversal):
    for planted in generic_traversal["planted"]:
        assert Image.open(planted).size == (64, 64)  # the bait really is a valid image
    generic_traversal["result"]()
    images = Path(generic_traversal["images"]).resolve()
    assert len(generic_traversal["opened"]) == len(generic_traversal["good"])
    for path in generic_traversal["opened"]:
        assert Path(path).resolve().is_relative_to(images), f"probed a file outside the image root: {path}"


def test_validate_accepts_sources_without_url(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.jpg").write_bytes(jpeg_bytes(1))
    csv_path = write_csv(tmp_path / "g.csv", ["path", "label"], [["a.jpg", "psoriasis"]])
    cfg = IngestConfig(source="generic", csv=str(csv_path), image_root=str(tmp_path / "images"),
                       taxonomy=str(write_taxonomy(tmp_path / "taxonomy.csv")), workers=1)
    rows, taxonomy, _ = ingest(cfg)
    manifest, quarantine, report = validate(rows, taxonomy, ValidateConfig())
    assert report["accepted"] == 1


@pytest.mark.parametrize("csv_is_root", [False, True], ids=["csv-null", "csv-names-the-root"])
def test_generic_imagefolder_same_file_name_in_two_classes(tmp_path, csv_is_root):
    images = tmp_path / "images"
    for i, label in enumerate(["psoriasis", "melanoma"]):
        (images / label).mkdir(parents=True)
        (images / label / "0001.jpg").write_bytes(jpeg_bytes(100 + i))
    cfg = IngestConfig(source="generic", csv=str(images) if csv_is_root else None, image_root=str(images),
                       taxonomy=str(write_taxonomy(tmp_path / "taxonomy.csv")), workers=1)
    result = run(cfg)
    assert result.report["accepted"] == 2, result.quarantine[["rel_path", "reason", "detail"]]


def test_generic_csv_naming_another_directory_is_an_error(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "elsewhere").mkdir()
    cfg = IngestConfig(source="generic", csv=str(tmp_path / "elsewhere"), image_root=str(tmp_path / "images"),
                       taxonomy=str(write_taxonomy(tmp_path / "taxonomy.csv")), workers=1)
    with pytest.raises(IngestError, match="not the image root"):
        run(cfg)


# --------------------------------------------------------------------------- HAM10000 / ISIC

def _ham_images(root: Path, ids: list[str]) -> Path:
    images = root / "images"
    images.mkdir()
    for i, image_id in enumerate(ids):
        (images / f"{image_id}.jpg").write_bytes(jpeg_bytes(7000 + i))
    return images


def test_ham10000_metadata(tmp_path):
    header = ["lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization", "dataset"]
    good_ids = [f"ISIC_00{i:05d}" for i in range(6)]
    images = _ham_images(tmp_path, good_ids + ["ISIC_0099999"])
    (tmp_path / "evil.jpg").write_bytes(jpeg_bytes(7999))
    dxs = ["mel", "nv", "bcc", "MEL", "nv", "bcc"]
    rows = [[f"HAM_{i:07d}", image_id, dx, "histo", "45.0", "female", "back", "vidir_modern"]
            for i, (image_id, dx) in enumerate(zip(good_ids, dxs))]
    rows.append(["HAM_0000100", "ISIC_0099999", "xyz", "histo", "50.0", "male", "face", "rosendahl"])
    rows.append(["HAM_0000101", "../evil", "mel", "histo", "50.0", "male", "face", "rosendahl"])
    rows.append(["HAM_0000102", "ISIC_0099998", "", "histo", "50.0", "male", "face", "rosendahl"])
    csv_path = write_csv(tmp_path / "HAM10000_metadata.csv", header, rows, newline="\r\n")
    cfg = IngestConfig(source="ham10000", csv=str(csv_path), image_root=str(images),
                       taxonomy=str(write_taxonomy(tmp_path / "taxonomy.csv", HAM_TAXONOMY)), workers=1)
    result = run(cfg)
    assert result.reason(6) == Reason.UNKNOWN_LABEL
    assert result.reason(7) == Reason.BAD_ID
    assert result.reason(8) == Reason.MISSING_IMAGE  # no file and no dx: the ingest error comes first
    assert [result.accepted(r) for r in range(6)] == [True] * 6
    assert list(result.manifest["label"]) == ["melanoma", "nevocytic nevus", "basal cell carcinoma",
                                              "melanoma", "nevocytic nevus", "basal cell carcinoma"]
    assert "CRLF line endings normalised" in result.ingest_report["notes"]
    assert set(result.manifest["source"]) == {"ham10000"}


def test_ham10000_empty_dx_is_missing_label(tmp_path):
    header = ["lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization", "dataset"]
    images = _ham_images(tmp_path, ["ISIC_0000001", "ISIC_0000002"])
    rows = [["HAM_1", "ISIC_0000001", "mel", "histo", "", "", "", ""],
            ["HAM_2", "ISIC_0000002", "", "histo", "", "", "", ""]]
    csv_path = write_csv(tmp_path / "meta.csv", header, rows)
    cfg = IngestConfig(source="ham10000", csv=str(csv_path), image_root=str(images),
                       taxonomy=str(write_taxonomy(tmp_path / "taxonomy.csv", HAM_TAXONOMY)), workers=1)
    result = run(cfg)
    assert result.accepted(0) and result.reason(1) == Reason.MISSING_LABEL


def test_isic_onehot(tmp_path):
    ids = [f"ISIC_{i:07d}" for i in range(7)]
    images = _ham_images(tmp_path, ids)
    (tmp_path / "evil.jpg").write_bytes(jpeg_bytes(7999))

    def onehot(*hot: str) -> list[str]:
        return ["1.0" if c in hot else "0.0" for c in ISIC_HEADER[1:]]

    rows = [[ids[0], *onehot("MEL")], [ids[1], *onehot("NV")], [ids[2], *onehot("BCC")],
            [ids[3], *onehot("MEL", "NV")],      # two 1.0s: ambiguous ground truth
            [ids[4], *onehot()],                 # no class at all
            [ids[5], *onehot("DF")],             # a real class, but not in this taxonomy
            [ids[6], *onehot("NV")],
            ["../evil", *onehot("MEL")],
            ["ISIC_1/../../evil", *onehot("NV")]]
    csv_path = write_csv(tmp_path / "ISIC_GroundTruth.csv", ISIC_HEADER, rows)
    cfg = IngestConfig(source="isic", csv=str(csv_path), image_root=str(images),
                       taxonomy=str(write_taxonomy(tmp_path / "taxonomy.csv", HAM_TAXONOMY)), workers=1)
    result = run(cfg)
    assert [result.accepted(r) for r in (0, 1, 2, 6)] == [True] * 4
    assert result.reason(3) == Reason.MISSING_LABEL
    assert result.reason(4) == Reason.MISSING_LABEL
    assert result.reason(5) == Reason.UNKNOWN_LABEL
    assert result.reason(7) == Reason.BAD_ID and result.reason(8) == Reason.BAD_ID
    assert set(result.manifest["source"]) == {"isic"}
    bad = result.rows[result.rows["source_row"].isin([7, 8])]
    assert bad["content_md5"].isna().all(), "a traversal id was read"
