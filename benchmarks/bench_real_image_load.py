"""Building a warm-up training table from real dermoscopic JPEGs: decoded at full size (the old path) vs shrunk once
to LOAD_MARGIN x the model's pixel budget (``load_rgb(path, max_pixels)``), through the same ``datasets`` table the
SFT trainer consumes (where every image is PNG-encoded), then one processor pass over it as a training epoch would.

    python benchmarks/bench_real_image_load.py [--images 64] [--max-pixels 12544]

Needs the ISIC UDA-1 images under ../shared/data/isic_uda1 (or $SKINFLOW_SHARED). Prints the ratio and writes
benchmarks/results/real_image_load.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def build(paths: list[Path], max_pixels: int | None, processor) -> float:
    from datasets import Dataset

    from skinflow.model.examples import load_rgb

    started = time.perf_counter()
    images = [load_rgb(p, max_pixels) for p in paths]
    table = Dataset.from_list([{"images": [img], "label": str(i)} for i, img in enumerate(images)])
    for row in table:  # decode back from the table and preprocess, as each training step does
        processor(images=row["images"], return_tensors="pt")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--max-pixels", type=int, default=12544, help="models/base's budget (112 x 112)")
    args = parser.parse_args()
    shared = Path(os.environ.get("SKINFLOW_SHARED", REPO.parent / "shared")) / "data/isic_uda1/images"
    paths = sorted(shared.glob("*.jpg"))[: args.images]
    if not paths:
        raise SystemExit(f"no images under {shared}")
    from skinflow.model.processor import load_processor

    # The tiny default model's processor (models/base, `make repro`): its image processor is the one training uses.
    processor = load_processor(REPO / "models/base").image_processor
    build(paths[:2], None, processor)  # warm imports
    full = build(paths, None, processor)
    shrunk = build(paths, args.max_pixels, processor)
    result = {"images": len(paths), "max_pixels": args.max_pixels, "full_size_s": round(full, 3),
              "shrunk_once_s": round(shrunk, 3), "ratio": round(full / shrunk, 2), "machine": platform.machine(),
              "cpus": os.cpu_count()}
    out = REPO / "benchmarks/results/real_image_load.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{len(paths)} ISIC images: full size {full:.2f} s, shrunk once {shrunk:.2f} s -> {full / shrunk:.2f}x faster")


if __name__ == "__main__":
    main()
