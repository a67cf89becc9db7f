"""DVC stage `evaluate@<variant>`: clinically grounded metrics for one model variant."""

from __future__ import annotations

import json

import pandas as pd

from skinflow.eval.evaluate import EvalConfig, evaluate_model
from skinflow.eval.metrics import metrics_markdown, per_group_table, write_confusion
from skinflow.io import write_csv, write_json, write_parquet, write_text
from skinflow.not_applicable import MARKER, not_applicable_reason
from skinflow.stage import params_parser, show_progress, stage_config

IN_MANIFEST = "data/manifest.parquet"
IN_CAPTIONS = "data/captions/captions.parquet"
IN_TAXONOMY = "data/interim/taxonomy.csv"


def main(argv: list[str] | None = None) -> dict:
    parser = params_parser("evaluate", description=__doc__)
    parser.add_argument("--variant", required=True)
    parser.add_argument("--model", required=True, help="model directory to evaluate")
    parser.add_argument("--seed", type=int, default=0,
                        help="training seed of the evaluated model (recorded; the ablation pools over it)")
    cfg, args = stage_config("evaluate", EvalConfig, argv, parser)
    out = f"data/eval/{args.variant}"
    reason = not_applicable_reason(args.model)
    if reason:  # a pass-through model (e.g. Stage I without captions): no row, and the ablation says why
        metrics = {"variant": args.variant, "seed": args.seed, "model": args.model, "not_applicable": reason}
        write_json(f"{out}/{MARKER}", {"reason": reason})
        write_json(f"metrics/eval/{args.variant}.json", metrics)
        print(f"{args.variant}: not applicable ({reason})")
        return metrics
    result = evaluate_model(args.model, pd.read_parquet(IN_MANIFEST), pd.read_parquet(IN_CAPTIONS),
                            pd.read_csv(IN_TAXONOMY), cfg, progress=show_progress())
    metrics = {**result["metrics"], "variant": args.variant, "seed": args.seed, "model": args.model}
    if result["caption_scores"] is not None:
        metrics["caption_vs_reference"] = result["caption_scores"]
    # Ranked lists as JSON text (None -> null), which skinflow.eval.paired.parse_ranked reads back.
    as_json = {c: [json.dumps(list(v)) for v in result["mapped"][c]] for c in ("ranked_raw", "ranked_labels")}
    write_parquet(f"{out}/predictions.parquet", result["mapped"].assign(**as_json))
    write_parquet(f"{out}/match_log.parquet", result["match_log"])
    if result.get("caption_per_image") is not None:
        write_parquet(f"{out}/caption_scores.parquet", result["caption_per_image"])
    write_confusion(result["confusion"], f"{out}/confusion.csv")
    write_csv(f"{out}/by_group.csv", per_group_table(result["metrics"]))
    write_text(f"{out}/metrics.md", f"# {args.variant}\n\n" + metrics_markdown(result["metrics"]))
    write_json(f"metrics/eval/{args.variant}.json", metrics)
    top1 = metrics["overall"]["top1_exact"]
    print(f"{args.variant}: top-1 exact {top1['value']} [{top1['ci_low']}, {top1['ci_high']}] "
          f"on {metrics['n_images']} images")
    return metrics


if __name__ == "__main__":
    main()
