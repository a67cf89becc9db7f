"""DVC stage `skinvl_start`: the SkinVL baseline's start model under MM-Skin's three evaluations (text metrics
per question type, zero-shot with the category list, linear probe), once; every seed's fine-tuning
(`skinvl_baseline@<seed>`) is compared with it."""

from __future__ import annotations

import pandas as pd

from skinflow.baselines.skinvl import SkinVLConfig, evaluate_start
from skinflow.not_applicable import NO_CAPTIONS
from skinflow.stage import show_progress, stage_config
from skinflow.timing import write_results

IN_MANIFEST = "data/manifest.parquet"
IN_CAPTIONS = "data/captions/captions.parquet"
IN_TAXONOMY = "data/interim/taxonomy.csv"
OUT_METRICS = "metrics/baselines/skinvl_start.json"


def main(argv: list[str] | None = None) -> dict:
    cfg, _ = stage_config("skinvl_baseline", SkinVLConfig, argv)
    captions = pd.read_parquet(IN_CAPTIONS)
    if captions.empty:  # the text metrics need reference descriptions; SkinVL itself is not applicable either
        summary = {"not_applicable": f"SkinVL trains on image-description pairs; {NO_CAPTIONS}"}
        write_results(OUT_METRICS, summary)
        print(f"skinvl start model: not applicable ({summary['not_applicable']})")
        return summary
    summary = evaluate_start(pd.read_parquet(IN_MANIFEST), captions, pd.read_csv(IN_TAXONOMY), cfg,
                             progress=show_progress())
    write_results(OUT_METRICS, summary)
    base = summary["base"]
    print(f"skinvl start model: BLEU-4 {base['vqa']['bleu4']:.4f}  ROUGE-L {base['vqa']['rouge_l']:.4f}  "
          f"zero-shot acc {base['zero_shot']['accuracy']:.3f}  probe acc {base['linear_probe']['accuracy']:.3f}")
    return summary


if __name__ == "__main__":
    main()
