"""DVC stage `skinvl_baseline@<seed>`: MM-Skin's SkinVL recipe (LoRA SFT on an instruction mix of captions, open
questions with diagnosis among them, and demographics) as a baseline, one run per ablation seed (the row is pooled
over seeds like SkinFlow's), each evaluated like its start model (`skinvl_start`) and compared with it."""

from __future__ import annotations

import json

import pandas as pd

from skinflow.baselines.skinvl import SkinVLConfig, run_skinvl
from skinflow.not_applicable import pass_through
from skinflow.stage import params_parser, show_progress, stage_config
from skinflow.timing import write_results

IN_MANIFEST = "data/manifest.parquet"
IN_CAPTIONS = "data/captions/captions.parquet"
IN_TAXONOMY = "data/interim/taxonomy.csv"
IN_START = "metrics/baselines/skinvl_start.json"
VARIANT = "skinvl"
OUT_DIR = "models/{run}"
OUT_METRICS = "metrics/baselines/{run}.json"


def main(argv: list[str] | None = None) -> dict:
    parser = params_parser("skinvl_baseline", description=__doc__)
    parser.add_argument("--seed", type=int, default=None, help="the run's seed (overrides the section's seed)")
    cfg, args = stage_config("skinvl_baseline", SkinVLConfig, argv, parser)
    if args.seed is not None:
        cfg = cfg.model_copy(update={"seed": args.seed})
    run = f"{VARIANT}-s{cfg.seed}"
    out_dir, out_metrics = OUT_DIR.format(run=run), OUT_METRICS.format(run=run)
    start = json.loads(open(IN_START, encoding="utf-8").read())
    reason = start.get("not_applicable")
    if reason:  # the evaluation of the start model said why: pass the start model on with that reason
        pass_through(cfg.start_model, out_dir, reason)
        write_results(out_metrics, {"not_applicable": reason})
        print(f"{run}: not applicable ({reason})")
        return {"not_applicable": reason}
    summary = run_skinvl(out_dir, pd.read_parquet(IN_MANIFEST), pd.read_parquet(IN_CAPTIONS),
                         pd.read_csv(IN_TAXONOMY), cfg, start, progress=show_progress())
    write_results(out_metrics, summary)
    for name, part in (("start", start["base"]), (run, summary["skinvl"])):
        print(f"{name}: BLEU-4 {part['vqa']['bleu4']:.4f}  ROUGE-L {part['vqa']['rouge_l']:.4f}  "
              f"zero-shot acc {part['zero_shot']['accuracy']:.3f}  probe acc {part['linear_probe']['accuracy']:.3f}")
    return summary


if __name__ == "__main__":
    main()
