"""DVC stage `attention`: where each model variant looks when it diagnoses.

    python -m pipelines.attention [name=model_dir ...] [--only] [--set key=value]

Variants: models/warmup, models/stage1-s0, models/stage2-s0 (seed 0) plus any ``name=dir`` given (``--only``: just
those). A variant whose directory is absent is listed under ``missing_variants``, not an error,
unless none is left. Images: the first ``n_images`` image_ids (sorted) of ``split``. Writes
``reports/attention.png`` (rows = images, columns = variants), ``metrics/attention.json`` (per
variant means) and ``reports/attention_maps.json`` (every map and number).
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np
import pandas as pd

from skinflow.captions.parser import parse_diagnoses
from skinflow.eval.attention import (
    AGGREGATION, AttentionConfig, back_project, explain_variant, lesion_geometry, map_separation,
    score_explanation, variant_summary,
)
from skinflow.eval.evaluate import diagnosis_examples
from skinflow.io import write_bytes, write_json
from skinflow.model.examples import load_rgb, model_max_pixels
from skinflow.model.prompts import model_prompt_style
from skinflow.not_applicable import not_applicable_reason
from skinflow.data.manifest import image_paths
from skinflow.report.figures import GridCell, GridRow, attention_grid_png
from skinflow.stage import params_parser, stage_config

DEFAULT_VARIANTS = {"warmup": "models/warmup", "stage1": "models/stage1-s0", "stage2": "models/stage2-s0"}
IN_MANIFEST = "data/manifest.parquet"
IN_TAXONOMY = "data/interim/taxonomy.csv"
OUT_PNG = "reports/attention.png"
OUT_METRICS = "metrics/attention.json"
OUT_MAPS = "reports/attention_maps.json"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def parse_variants(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not _NAME.match(name) or not path:
            raise SystemExit(f"variant {item!r} is not of the form name=model_dir")
        out[name] = path
    return out


FOOTER = ("H: normalised entropy of the map over image tokens (1 = uniform, 0 = one token). "
          "L: share of the map inside the lesion disc (cyan);\nc: the disc's area share, what a uniform "
          "map scores. -> the answer's first diagnosis. Heat scaled to each cell's maximum.")


def _caption(cell: dict) -> str:
    first = f"H {cell['entropy']:.2f}"
    if cell.get("lesion_share") is not None:
        first += f"  L {cell['lesion_share']:.2f} (c {cell['lesion_chance']:.2f})"
    parsed = parse_diagnoses(cell["answer"])
    return first + "\n" + (f"-> {parsed.diagnoses[0]}"[:28] if parsed.ok else "-> (unparsed answer)")


def main(argv: list[str] | None = None) -> dict:
    parser = params_parser("attention", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variants", nargs="*", metavar="NAME=DIR", help="extra model variants")
    parser.add_argument("--only", action="store_true", help="only the variants given, no defaults")
    cfg, args = stage_config("attention", AttentionConfig, argv, parser)
    variants = parse_variants(args.variants) if args.only else {**DEFAULT_VARIANTS, **parse_variants(args.variants)}

    manifest = pd.read_parquet(IN_MANIFEST)
    labels = sorted(pd.read_csv(IN_TAXONOMY)["label"].unique())
    rows = manifest[manifest["split"] == cfg.split].sort_values("image_id").head(cfg.n_images)
    if rows.empty:
        raise SystemExit(f"no images in split {cfg.split!r}")
    images = {i: load_rgb(p) for i, p in zip(rows["image_id"], image_paths(rows))}
    attributes = None
    if cfg.attributes and Path(cfg.attributes).exists():
        attributes = pd.read_parquet(cfg.attributes)
    geometry = lesion_geometry(attributes, rows["image_id"])
    if geometry:
        geometry_note = (f"SkinSynth main-lesion disc (radius x {cfg.lesion_margin}) from {cfg.attributes}; "
                         f"{len(geometry)}/{len(rows)} images")
    else:
        geometry_note = ("unavailable: no lesion geometry for these images "
                         f"(attributes: {cfg.attributes or 'none'}); lesion share not computed")

    results, missing = {}, []
    for name, model_dir in variants.items():
        if not Path(model_dir, "config.json").exists():
            missing.append({"variant": name, "model": model_dir})
            print(f"attention: {name}: no model at {model_dir}, skipped")
            continue
        reason = not_applicable_reason(model_dir)
        if reason:  # a pass-through copy: its map would be its start model's, shown under another name
            missing.append({"variant": name, "model": model_dir, "not_applicable": reason})
            print(f"attention: {name}: not applicable ({reason}), skipped")
            continue
        style = model_prompt_style(model_dir)
        explanations = explain_variant(model_dir, diagnosis_examples(rows, labels, style, model_max_pixels(model_dir)), cfg)
        cells = [score_explanation(e, images[e.image_id].size, geometry.get(e.image_id), cfg.lesion_margin)
                 for e in explanations]
        results[name] = {"model": model_dir, **variant_summary(cells), "images": cells}
        print(f"attention: {name}: mean entropy {results[name]['mean_entropy']}, "
              f"lesion share {results[name]['mean_lesion_share']}")
    if not results:
        raise SystemExit(f"none of the variant directories exist: {sorted(variants.values())}")

    grid_rows = []
    for k, (image_id, label) in enumerate(zip(rows["image_id"], rows["label"])):
        image = images[image_id]
        geo = geometry.get(image_id)
        disc = (geo["cx"], geo["cy"], geo["radius"] * cfg.lesion_margin) if geo else None
        cells = [GridCell(back_project(np.asarray(r["images"][k]["grid"]), image.height, image.width),
                          _caption(r["images"][k]), disc) for r in results.values()]
        grid_rows.append(GridRow(f"{str(image_id)[:10]}\n{label}", image, cells))
    separation = map_separation({n: [np.asarray(c["grid"]) for c in r["images"]] for n, r in results.items()},
                                cfg.separation_threshold)
    footer = FOOTER if geometry else FOOTER.split(" L:")[0] + "\nNo lesion geometry: lesion share not computed."
    footer = f"{separation['verdict'][:1].upper()}{separation['verdict'][1:]}.\n{footer}"
    write_bytes(OUT_PNG, attention_grid_png(grid_rows, list(results), cfg.cell_px, footer))

    header = {"method": cfg.method, "aggregation": AGGREGATION[cfg.method], "split": cfg.split,
              "n_images": int(len(rows)), "image_ids": [str(i) for i in rows["image_id"]],
              "lesion_geometry": geometry_note, "missing_variants": missing,
              "variant_order": list(results),  # the PNG's column order (JSON keys get sorted)
              "separation": separation}
    summary = {**header, "variants": {n: {k: v for k, v in r.items() if k != "images"}
                                      for n, r in results.items()}}
    write_json(OUT_METRICS, summary)
    write_json(OUT_MAPS, {**header, "labels": {str(i): l for i, l in zip(rows["image_id"], rows["label"])},
                          "variants": results})
    return summary


if __name__ == "__main__":
    main()
