"""Tune an RL stage or a baseline on the validation split (not a DVC stage: a sweep trains candidates x seeds).

    python -m pipelines.tune configs/tuning/stage2.yaml [--only NAME ...]
    python -m pipelines.tune configs/tuning/cfa.yaml          # or skinvl.yaml: the baselines

Reads the sweep file (``skinflow.rl.sweep.SweepSpec``, or ``skinflow.baselines.tuning.BaselineSweep`` for
``stage: cfa | skinvl``), trains and evaluates every candidate on the validation split against its
reference, and writes ``reports/tuning/<sweep>.md`` and ``.json``. Run it
after ``dvc repro`` has produced the start models; settings chosen from it go into ``params.yaml``
with the validation numbers quoted beside them.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from skinflow.baselines import tuning
from skinflow.io import write_json, write_text
from skinflow.rl import sweep

IN_MANIFEST = "data/manifest.parquet"
IN_CAPTIONS = "data/captions/captions.parquet"
IN_TAXONOMY = "data/interim/taxonomy.csv"
OUT_DIR = Path("reports/tuning")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep", help="sweep file, e.g. configs/tuning/stage2.yaml")
    parser.add_argument("--only", nargs="+", help="run only these candidates (the report then lists only them)")
    args = parser.parse_args(argv)
    raw = yaml.safe_load(Path(args.sweep).read_text(encoding="utf-8"))
    if raw.get("stage") in tuning.SECTIONS:
        spec = tuning.BaselineSweep.model_validate(raw)
        result = tuning.run_baseline_sweep(spec, IN_MANIFEST, IN_CAPTIONS, IN_TAXONOMY, args.only)
        text = tuning.markdown(result)
    else:
        spec = sweep.SweepSpec.model_validate(raw)
        result = sweep.run_sweep(spec, IN_MANIFEST, IN_CAPTIONS, IN_TAXONOMY, args.only)
        text = sweep.markdown(result)
    result["sweep_file"] = args.sweep
    stem = Path(args.sweep).stem
    write_json(OUT_DIR / f"{stem}.json", result)
    write_text(OUT_DIR / f"{stem}.md", text)
    print(text)
    return result


if __name__ == "__main__":
    main()
