"""Ingest + validate throughput vs a plain single-process PIL-decode + md5 loop on the same files.

    python benchmarks/bench_ingest.py [--images 3000] [--size 128] [--repeats 3]

Both sides read the same SkinSynth files from a warm page cache; each is timed `repeats` times
alternately and the median is kept. Prints the ratio (baseline time / pipeline time; > 1 means the
pipeline is faster) and writes benchmarks/results/ingest.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

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


def pipeline(root: Path) -> int:
    cfg = IngestConfig(csv=str(root / "fitzpatrick17k.csv"), image_root=str(root / "images"),
                       taxonomy=str(root / "taxonomy.csv"))
    rows, taxonomy, _ = ingest(cfg)
    manifest, _, _ = validate(rows, taxonomy, ValidateConfig())
    return len(manifest)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/results/ingest.json")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "skinsynth"
        generate(root, SynthConfig(n_images=args.images, image_size=args.size))
        paths = sorted((root / "images").iterdir())
        baseline(paths)  # warm the page cache for both sides
        base_times, pipe_times = [], []
        for _ in range(args.repeats):
            start = time.perf_counter(); baseline(paths); base_times.append(time.perf_counter() - start)
            start = time.perf_counter(); pipeline(root); pipe_times.append(time.perf_counter() - start)

    base, pipe = statistics.median(base_times), statistics.median(pipe_times)
    result = {
        "benchmark": "ingest+validate vs PIL decode+md5 loop",
        "images": len(paths), "image_size": args.size, "repeats": args.repeats,
        "baseline_s": round(base, 3), "pipeline_s": round(pipe, 3),
        "baseline_images_per_s": round(len(paths) / base, 1),
        "pipeline_images_per_s": round(len(paths) / pipe, 1),
        "ratio": round(base / pipe, 3),
        "machine": f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}",
        "command": f"python benchmarks/bench_ingest.py --images {args.images} --size {args.size}",
    }
    write_json(args.out, result)
    print(f"baseline {base:.2f} s ({result['baseline_images_per_s']} img/s) | ingest+validate "
          f"{pipe:.2f} s ({result['pipeline_images_per_s']} img/s) | ratio {result['ratio']:.2f}x")


if __name__ == "__main__":
    main()
