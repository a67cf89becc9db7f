"""Ingest + validate throughput vs a plain single-process PIL-decode + md5 loop on the same files.

    python benchmarks/bench_ingest.py [--images 3000] [--size 640] [--repeats 3]

SkinSynth images (256 px) are re-encoded at `--size` px, the size of a typical clinical atlas photo
(Fitzpatrick17k's are mostly 300-1000 px), with the table's md5hash updated to match. Both sides
read the same files from a warm page cache; each is timed `repeats` times alternately and the median
is kept. The pipeline is measured twice: as configured by default (JPEG verified in DCT-scaled draft
mode) and with `full_decode=True` (full-resolution decode, like the baseline). Prints the ratios
(baseline time / pipeline time; > 1 means the pipeline is faster) and writes
benchmarks/results/ingest.json.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from skinflow.data.ingest import IngestConfig, ingest  # noqa: E402
from skinflow.data.skinsynth import SynthConfig, generate  # noqa: E402
from skinflow.data.validation import ValidateConfig, validate  # noqa: E402
from skinflow.io import write_json  # noqa: E402


def baseline(paths: list[Path]) -> int:
    """What a user would write first: open, fully decode and hash each file in one process."""
    ok = 0
    for path in paths:
        data = path.read_bytes()
        hashlib.md5(data, usedforsecurity=False).hexdigest()
        with Image.open(path) as img:
            img.load()
            ok += img.mode == "RGB"
    return ok


def upscale(root: Path, size: int) -> None:
    """Re-encode every image at ``size`` px and rename it (and its table row) by the new md5."""
    table = pd.read_csv(root / "fitzpatrick17k.csv", dtype=str, keep_default_na=False)
    renamed = {}
    for old in table["md5hash"]:
        path = root / "images" / f"{old}.jpg"
        with Image.open(path) as img:
            big = img.resize((size, size), Image.Resampling.BICUBIC)
        buffer = io.BytesIO()
        big.save(buffer, format="JPEG", quality=90)
        data = buffer.getvalue()
        new = hashlib.md5(data, usedforsecurity=False).hexdigest()
        path.unlink()
        (root / "images" / f"{new}.jpg").write_bytes(data)
        renamed[old] = new
    table["md5hash"] = table["md5hash"].map(renamed)
    table.to_csv(root / "fitzpatrick17k.csv", index=False, lineterminator="\n")


def pipeline(root: Path, full_decode: bool = False) -> int:
    cfg = IngestConfig(csv=str(root / "fitzpatrick17k.csv"), image_root=str(root / "images"),
                       taxonomy=str(root / "taxonomy.csv"), full_decode=full_decode)
    rows, taxonomy, _ = ingest(cfg)
    manifest, _, _ = validate(rows, taxonomy, ValidateConfig())
    return len(manifest)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--size", type=int, default=640)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/results/ingest.json")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "skinsynth"
        generate(root, SynthConfig(n_images=args.images, image_size=256))
        if args.size != 256:
            upscale(root, args.size)
        paths = sorted((root / "images").iterdir())
        baseline(paths)  # warm the page cache for both sides
        times: dict[str, list[float]] = {"baseline": [], "pipeline": [], "pipeline_full_decode": []}
        for _ in range(args.repeats):
            for name, run in (("baseline", lambda: baseline(paths)), ("pipeline", lambda: pipeline(root)),
                              ("pipeline_full_decode", lambda: pipeline(root, full_decode=True))):
                start = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - start)

    base, pipe, full = (statistics.median(times[k]) for k in ("baseline", "pipeline", "pipeline_full_decode"))
    result = {
        "benchmark": "ingest+validate vs PIL decode+md5 loop",
        "images": len(paths), "image_size": args.size, "repeats": args.repeats,
        "baseline_s": round(base, 3), "pipeline_s": round(pipe, 3), "pipeline_full_decode_s": round(full, 3),
        "baseline_images_per_s": round(len(paths) / base, 1),
        "pipeline_images_per_s": round(len(paths) / pipe, 1),
        "ratio": round(base / pipe, 3),
        "ratio_full_decode": round(base / full, 3),
        "machine": f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}",
        "command": f"python benchmarks/bench_ingest.py --images {args.images} --size {args.size}",
    }
    write_json(args.out, result)
    print(f"baseline {base:.2f} s ({result['baseline_images_per_s']} img/s) | ingest+validate "
          f"{pipe:.2f} s ({result['pipeline_images_per_s']} img/s) | ratio {result['ratio']:.2f}x | "
          f"with full decode {full:.2f} s, ratio {result['ratio_full_decode']:.2f}x")


if __name__ == "__main__":
    main()
