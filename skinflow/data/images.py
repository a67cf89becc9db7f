"""Image probing: read once, hash, decode-check and describe, in a process pool.

Probing never raises on bad files; it returns a reason code instead, so one corrupt JPEG can't stop
an ingest of 16k rows. JPEGs are decoded in libjpeg's DCT-scaled draft mode by default: the whole
entropy-coded stream is still parsed (truncation and corruption are caught) but the full-size
inverse DCT is skipped, which is most of the decode cost.
"""

from __future__ import annotations

import io
import os
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from PIL import Image

from skinflow.data.manifest import Reason
from skinflow.data.near_duplicates import perceptual_hash
from skinflow.io import md5_bytes


@dataclass(frozen=True)
class ProbeSettings:
    min_side: int = 32
    max_pixels: int = 40_000_000
    full_decode: bool = False
    hash_size: int = 0       # > 0: also compute the perceptual hash (near_duplicates) from the decode


@dataclass(frozen=True)
class Probe:
    content_md5: str | None = None
    width: int | None = None
    height: int | None = None
    mode: str | None = None
    error: str | None = None
    detail: str | None = None
    perceptual_hash: str | None = None


def probe_image(path: str | os.PathLike, settings: ProbeSettings = ProbeSettings()) -> Probe:
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return Probe(error=Reason.MISSING_IMAGE, detail=str(path))
    except OSError as exc:
        return Probe(error=Reason.CORRUPT_IMAGE, detail=f"unreadable: {exc}")
    if not data:
        return Probe(error=Reason.EMPTY_FILE, detail="zero bytes")
    return probe_bytes(data, settings)


def probe_bytes(data: bytes, settings: ProbeSettings = ProbeSettings()) -> Probe:
    digest = md5_bytes(data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                width, height = img.size
                mode = img.mode
                base = dict(content_md5=digest, width=width, height=height, mode=mode)
                # Check the header's claimed size before decoding anything.
                if width * height > settings.max_pixels:
                    return Probe(**base, error=Reason.DECOMPRESSION_BOMB,
                                 detail=f"{width}x{height} exceeds {settings.max_pixels} pixels")
                if img.format == "JPEG" and not settings.full_decode:
                    # The hash needs a thumbnail of at least 4 * hash_size px; ask for 64.
                    floor = 64 if settings.hash_size else 1
                    img.draft(img.mode, (max(floor, width // 8), max(floor, height // 8)))
                img.load()
                if img.format == "PNG" and len(data) > 24 and data[24] > 8:
                    mode = f"{mode};{data[24]}bit"
                elif settings.hash_size and mode == "RGB" and min(width, height) >= settings.min_side:
                    base["perceptual_hash"] = perceptual_hash(img, settings.hash_size)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        return Probe(content_md5=digest, error=Reason.DECOMPRESSION_BOMB, detail=str(exc)[:200])
    except OSError as exc:
        code = Reason.TRUNCATED_IMAGE if "truncated" in str(exc).lower() else Reason.CORRUPT_IMAGE
        return Probe(content_md5=digest, error=code, detail=str(exc)[:200])
    except Exception as exc:  # PIL raises assorted types on hostile input; all mean "corrupt"
        return Probe(content_md5=digest, error=Reason.CORRUPT_IMAGE,
                     detail=f"{type(exc).__name__}: {exc}"[:200])
    if mode != "RGB":
        return Probe(**{**base, "mode": mode}, error=Reason.NON_RGB, detail=f"mode {mode}")
    if min(width, height) < settings.min_side:
        return Probe(**base, error=Reason.TINY_IMAGE,
                     detail=f"{width}x{height} below {settings.min_side}px")
    return Probe(**base)


def _probe_many(args: tuple[list[str], ProbeSettings]) -> list[Probe]:
    paths, settings = args
    return [probe_image(p, settings) for p in paths]


def probe_images(
    paths: Iterable[str | os.PathLike],
    settings: ProbeSettings = ProbeSettings(),
    workers: int | None = None,
    chunk: int = 64,
    progress: bool = False,
) -> list[Probe]:
    """Probe many files; order of results matches ``paths``. ``workers=1`` stays in-process."""
    paths = [str(p) for p in paths]
    workers = workers or os.cpu_count() or 1
    if workers == 1 or len(paths) <= chunk:
        return _probe_many((paths, settings))
    chunks = [(paths[i : i + chunk], settings) for i in range(0, len(paths), chunk)]
    results: list[Probe] = []
    with ProcessPoolExecutor(max_workers=workers) as pool:
        iterator = pool.map(_probe_many, chunks)
        if progress:
            from tqdm import tqdm

            iterator = tqdm(iterator, total=len(chunks), desc="probe images", unit="chunk")
        for part in iterator:
            results.extend(part)
    return results
