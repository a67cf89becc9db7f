"""DVC stage `skinvl_baseline`: MM-Skin's SkinVL recipe (LoRA SFT on an instruction mix of captions, open
questions with diagnosis among them, and demographics) as a baseline, with its text-metric (per question type),
zero-shot and linear-probe evaluations for the start and tuned model."""

from __future__ import annotations

import pandas as pd

from skinflow.baselines.skinvl import SkinVLConfig, run_skinvl
from skinflow.not_applicable import NO_CAPTIONS, pass_through
from skinflow.timing import write_results
from skinflow.stage import show_progress, stage_config

IN_MANIFEST = "data/manifest.parquet"
IN_CAPTIONS = "data/captions/captions.parquet"
IN_TAXONOMY = "data/interim/taxonomy.csv"
OUT_DIR = "models/skinvl"
OUT_METRICS = "metrics/baselines/skinvl.json"


def main(argv: list[str] | None = None) -> dict:
    cfg, _ = stage_config("skinvl_baseline", SkinVLConfig, argv)
    captions = pd.read_parquet(IN_CAPTIONS)
    if captions.empty:  # SkinVL is tuned on image-description pairs: with no captions there is no recipe to run
        reason = f"SkinVL trains on image-description pairs; {NO_CAPTIONS}"
        summary = {"not_applicable": pass_through(cfg.start_model, OUT_DIR, reason)["not_applicable"]}
        write_results(OUT_METRICS, summary)
        print(f"skinvl: not applicable ({reason})")
        return summary
    summary = run_skinvl(OUT_DIR, pd.read_parquet(IN_MANIFEST), captions,
                         pd.read_csv(IN_TAXONOMY), cfg, progress=show_progress())
    write_results(OUT_METRICS, summary)
    for name in ("base", "skinvl"):
        part = summary[name]
        print(f"{name}: BLEU-4 {part['vqa']['bleu4']:.4f}  ROUGE-L {part['vqa']['rouge_l']:.4f}  "
              f"zero-shot acc {part['zero_shot']['accuracy']:.3f}  probe acc {part['linear_probe']['accuracy']:.3f}")
    return summary


if __name__ == "__main__":
    main()
