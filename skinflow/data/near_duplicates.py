"""Near-duplicate images: perceptual hashes, clusters under a Hamming threshold, and their report.

Each readable image gets one perceptual hash: a DCT hash (pHash: signs of the low-frequency DCT
coefficients of a 4*s x 4*s grey thumbnail against their median) followed by a difference hash
(dHash: brightness gradient signs of an (s+1) x s thumbnail), s = ``HASH_SIZE``. Both survive
resizing, JPEG re-encoding and global colour shifts; together they tolerate a crop of a few percent.
Distances are the fraction of differing bits, so the threshold does not depend on the hash size.

Rows whose hashes are within ``max_distance`` are linked and a cluster is a connected component
(single linkage). A cluster's id is the smallest content md5 among its members, so it depends only
on the set of images, never on row order, and an image without near-duplicates keeps no id: split
grouping then falls back to its content hash exactly as before.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from PIL import Image
from pydantic import Field

from skinflow.config import Section

HASH_SIZE = 12  # 288 bits; 8 (128 bits) separated crops from distinct dermoscopic images less well


class NearDuplicateConfig(Section):
    enabled: bool = True
    # Fraction of the 288 hash bits that may differ. Re-encoding, resizing and colour shifts stay
    # under 0.10 on real dermoscopic images, 2 % crops under 0.17; distinct images sit above 0.21.
    max_distance: float = Field(0.18, ge=0.0, le=0.5)


def _dct_matrix(n: int) -> np.ndarray:
    k = np.arange(n)
    matrix = np.sqrt(2.0 / n) * np.cos(np.pi * (2 * k[None, :] + 1) * k[:, None] / (2 * n))
    matrix[0] /= np.sqrt(2.0)
    return matrix


_DCT = _dct_matrix(4 * HASH_SIZE)


def perceptual_hash(image: Image.Image, hash_size: int = HASH_SIZE) -> str:
    """Hex string of pHash bits followed by dHash bits of an already-opened image."""
    grey = image.convert("L")
    side = 4 * hash_size
    dct = _DCT if side == len(_DCT) else _dct_matrix(side)
    pixels = np.asarray(grey.resize((side, side), Image.Resampling.LANCZOS), dtype=np.float64)
    low = (dct @ pixels @ dct.T)[:hash_size, :hash_size].ravel()
    diff = np.asarray(grey.resize((hash_size + 1, hash_size), Image.Resampling.LANCZOS), dtype=np.int16)
    bits = np.concatenate([low > np.median(low), (diff[:, 1:] > diff[:, :-1]).ravel()])
    return np.packbits(bits).tobytes().hex()


def _as_words(hashes: list[str]) -> np.ndarray:
    """Hex hashes -> (n, words) uint64, zero-padded, for XOR + popcount."""
    raw = [bytes.fromhex(h) for h in hashes]
    width = -(-max(len(r) for r in raw) // 8) * 8
    buf = np.frombuffer(b"".join(r.ljust(width, b"\0") for r in raw), dtype=np.uint64)
    return buf.reshape(len(raw), width // 8)


_POPCOUNT8 = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint16)


def _popcount(words: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):  # numpy >= 2
        return np.bitwise_count(words).sum(axis=-1, dtype=np.uint16)
    as_bytes = words.view(np.uint8).reshape(*words.shape[:-1], -1)
    return _POPCOUNT8[as_bytes].sum(axis=-1, dtype=np.uint16)


def close_pairs(hashes: list[str], max_distance: float, chunk: int = 128) -> list[tuple[int, int, float]]:
    """All pairs (i < j) whose bit-difference fraction is <= max_distance. Exact, chunked O(n^2)."""
    if len(hashes) < 2:
        return []
    bits = len(bytes.fromhex(hashes[0])) * 8
    if any(len(h) * 4 != bits for h in hashes):
        raise ValueError("perceptual hashes of different lengths cannot be compared")
    words = _as_words(hashes)
    limit = int(np.floor(max_distance * bits + 1e-9))
    pairs = []
    for start in range(0, len(words), chunk):
        block = words[start : start + chunk]
        # Only the upper triangle: compare each row with itself-and-later rows.
        distance = _popcount(block[:, None, :] ^ words[None, start:, :])
        rows, cols = np.nonzero(distance <= limit)
        for r, c in zip(rows.tolist(), cols.tolist()):
            i, j = start + r, start + c
            if j > i:
                pairs.append((i, j, round(float(distance[r, c]) / bits, 4)))
    return pairs


def cluster_ids(frame: pd.DataFrame, max_distance: float) -> tuple[pd.Series, list[tuple[str, str, float]]]:
    """Cluster id per row (NA when an image has no near-duplicate), and the linked hash pairs.

    ``frame`` needs ``content_md5`` and ``perceptual_hash``; rows missing either stay unclustered.
    Identical bytes are one image here (exact copies are grouped by content hash elsewhere).
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    usable = frame[frame["content_md5"].notna() & frame["perceptual_hash"].notna()]
    images = (usable.drop_duplicates("content_md5")[["content_md5", "perceptual_hash"]]
              .sort_values("content_md5").reset_index(drop=True))
    out = pd.Series(pd.NA, index=frame.index, dtype="string")
    pairs = close_pairs(list(images["perceptual_hash"]), max_distance)
    if not pairs:
        return out, []
    i, j, _ = zip(*pairs)
    graph = coo_matrix((np.ones(len(pairs)), (i, j)), shape=(len(images), len(images)))
    _, component = connected_components(graph, directed=False)
    sizes = np.bincount(component)
    # Images are sorted by md5, so the first member of each component has the smallest md5.
    first = pd.Series(images["content_md5"].to_numpy()).groupby(component).transform("first")
    cluster = first.where(sizes[component] > 1)
    lookup = pd.Series(cluster.to_numpy(), index=images["content_md5"].to_numpy(), dtype="string")
    out.loc[usable.index] = usable["content_md5"].map(lookup).astype("string")
    md5 = images["content_md5"].to_numpy()
    return out, [(md5[a], md5[b], d) for a, b, d in pairs]


def summary(frame: pd.DataFrame, pairs: list[tuple[str, str, float]] | None = None,
            column: str = "near_dup_cluster", listed: int = 20) -> dict:
    """Counts for the reports: clusters, rows in them, largest, and mixed-label clusters."""
    clustered = frame[frame[column].notna()] if column in frame else frame.iloc[:0]
    sizes = clustered.groupby(column).size().sort_values(ascending=False, kind="stable")
    labels = clustered.groupby(column)["label"].nunique()
    images = clustered.groupby(column)["content_md5"].nunique()
    out = {
        "clusters": int(len(sizes)),
        "rows_in_clusters": int(sizes.sum()),
        "images_in_clusters": int(images.sum()),
        "largest_cluster": int(sizes.max()) if len(sizes) else 0,
        "clusters_with_mixed_labels": int((labels > 1).sum()),
        "largest": [{"cluster": k, "rows": int(v), "labels": sorted(clustered.loc[clustered[column] == k,
                                                                                   "label"].dropna().unique())}
                    for k, v in sizes.head(listed).items()],
    }
    if pairs is not None:
        out["linked_pairs"] = len(pairs)
    return out
