"""Near-duplicate clusters on real images: the 200 ISIC UDA-1 JPEGs plus planted copies.

Every fifth original gets four planted copies in tmp_path — resized to half size, re-encoded at
JPEG quality 30, cropped by 2 % on every side, and colour-shifted (per-channel offsets) — and the
whole folder is ingested as a generic ImageFolder. Each planted copy must land in its original's
cluster and nothing else may join those clusters. The originals are linked in, never copied.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from shared_data import shared_file
from skinflow.data.ingest import IngestConfig, ingest
from skinflow.data.near_duplicates import NearDuplicateConfig, close_pairs, cluster_ids, perceptual_hash
from skinflow.data.splits import SplitConfig, leaking_groups
from skinflow.data.validation import ValidateConfig, validate

PLANTED_EVERY = 5


def _plant(original: Image.Image) -> dict[str, Image.Image]:
    image = original.convert("RGB")
    w, h = image.size
    dx, dy = round(w * 0.02), round(h * 0.02)
    shifted = np.clip(np.asarray(image).astype(np.int16) + np.array([18, -12, 6]), 0, 255).astype(np.uint8)
    return {
        "resized": image.resize((w // 2, h // 2), Image.Resampling.BILINEAR),
        "q30": image,
        "cropped": image.crop((dx, dy, w - dx, h - dy)),
        "colour": Image.fromarray(shifted),
    }


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    images = shared_file("isic_uda1/images")
    root = tmp_path_factory.mktemp("isic_planted")
    folder = root / "lesion"
    folder.mkdir()
    originals = sorted(images.glob("*.jpg"))
    assert len(originals) == 200
    expected: dict[str, str] = {}  # planted file stem -> original stem
    for k, path in enumerate(originals):
        (folder / path.name).symlink_to(path)
        if k % PLANTED_EVERY:
            continue
        with Image.open(path) as original:
            for kind, copy in _plant(original).items():
                stem = f"{path.stem}_{kind}"
                copy.save(folder / f"{stem}.jpg", quality=30 if kind == "q30" else 90)
                expected[stem] = path.stem
    cfg = IngestConfig(source="generic", csv=None, image_root=str(root), taxonomy=str(root / "taxonomy.csv"),
                       verify_md5=False, workers=1, splits=SplitConfig(seed=3))
    (root / "taxonomy.csv").write_text("label,nine_partition_label,three_partition_label\n"
                                       "lesion,benign melanocyte,benign\n")
    rows, taxonomy, report = ingest(cfg)
    rows["stem"] = rows["image_id"].str.split("/").str[-1]
    return rows, taxonomy, report, expected


def test_every_planted_copy_joins_its_original_and_nothing_else(planted):
    rows, _, report, expected = planted
    assert rows["ingest_error"].isna().all()
    cluster = rows.set_index("stem")["near_dup_cluster"]
    md5 = rows.set_index("stem")["content_md5"]
    originals = set(expected.values())
    for stem, original in expected.items():
        assert pd.notna(cluster[stem]) and cluster[stem] == cluster[original], (stem, original)
    members = rows[rows["near_dup_cluster"].notna()].groupby("near_dup_cluster")["stem"].apply(set)
    # ISIC_0000512 is a byte-identical copy of ISIC_0000477 in the archive: the same image.
    same = {"ISIC_0000512": "ISIC_0000477"}
    for group in members:
        roots = {same.get(expected.get(s, s), expected.get(s, s)) for s in group}
        assert len(roots) == 1, f"cluster mixes images: {sorted(group)}"
    # Originals without planted copies are not clustered (exact twins group by content hash).
    lonely = rows[~rows["stem"].isin(originals) & ~rows["stem"].isin(expected)]
    assert lonely["near_dup_cluster"].isna().all(), lonely.loc[lonely["near_dup_cluster"].notna(), "stem"].tolist()
    assert md5["ISIC_0000477"] == md5["ISIC_0000512"]
    dups = report["near_duplicates"]
    assert dups["clusters"] == len(originals) and dups["images_in_clusters"] == len(originals) + len(expected)


def test_clusters_never_straddle_splits_and_validation_counts_them(planted):
    rows, taxonomy, _, _ = planted
    rows = rows.drop(columns="stem")
    for column in [c for c in rows.columns if c.startswith("split")]:
        per_cluster = rows.dropna(subset=["near_dup_cluster"]).groupby("near_dup_cluster")[column].nunique()
        assert (per_cluster == 1).all(), column
        assert not leaking_groups(rows, column).any()
    manifest, quarantine, report = validate(rows, taxonomy, ValidateConfig())
    assert report["near_duplicates"]["clusters"] == 40 and report["near_duplicates"]["straddling_splits"] == 0
    assert len(manifest) + len(quarantine) == len(rows)


def test_distances_and_threshold_edges():
    rng = np.random.default_rng(0)
    base = Image.fromarray(rng.integers(0, 255, (96, 96, 3), dtype=np.uint8)).resize((256, 256))
    other = Image.fromarray(rng.integers(0, 255, (96, 96, 3), dtype=np.uint8)).resize((256, 256))
    hashes = [perceptual_hash(base), perceptual_hash(base.resize((128, 128))), perceptual_hash(other)]
    assert len(hashes[0]) == 72  # 288 bits
    assert [(i, j) for i, j, _ in close_pairs(hashes, 0.18)] == [(0, 1)]
    with pytest.raises(ValueError, match="different lengths"):
        close_pairs(hashes + ["ab"], 0.1)


def test_cluster_ids_ignore_row_order_and_missing_hashes():
    frame = pd.DataFrame({"content_md5": ["c", "a", "b", "d", None],
                          "perceptual_hash": ["ff00", "ff01", "00ff", None, "ff00"]})
    ids, pairs = cluster_ids(frame, max_distance=2 / 16)
    assert ids.iloc[:2].tolist() == ["a", "a"] and ids.iloc[2:].isna().all() and pairs == [("a", "c", 0.0625)]
    shuffled, _ = cluster_ids(frame.iloc[::-1], max_distance=2 / 16)
    assert shuffled.reindex(frame.index).equals(ids)


def test_disabled_leaves_no_clusters(tmp_path):
    images = shared_file("isic_uda1/images")
    root = tmp_path / "imgs" / "lesion"
    root.mkdir(parents=True)
    first = sorted(images.glob("*.jpg"))[0]
    (root / first.name).symlink_to(first)
    with Image.open(first) as image:
        image.save(root / "copy.jpg", quality=40)
    (tmp_path / "taxonomy.csv").write_text("label,nine_partition_label,three_partition_label\n"
                                           "lesion,benign melanocyte,benign\n")
    base = dict(source="generic", csv=None, image_root=str(tmp_path / "imgs"),
                taxonomy=str(tmp_path / "taxonomy.csv"), verify_md5=False, workers=1)
    on, _, _ = ingest(IngestConfig(**base))
    off, _, report = ingest(IngestConfig(**base, near_duplicates=NearDuplicateConfig(enabled=False)))
    assert on["near_dup_cluster"].notna().all()
    assert off["near_dup_cluster"].isna().all() and off["perceptual_hash"].isna().all()
    assert report["near_duplicates"]["clusters"] == 0
