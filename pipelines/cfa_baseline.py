"""DVC stage `cfa_baseline@<seed>`: a frozen-encoder classifier with the CFA loss, scored like the VLMs.

Trains on the manifest's train split (validation split for model selection), reports closed-set
classification metrics (accuracy with a bootstrap CI, macro-F1, balanced accuracy, macro AUC, ECE)
on the test split, and feeds each test image's ranked top-6 labels through the same mapping and
clinical metrics as the VLM variants, so the baseline is one more row of the ablation table, pooled over
the same seeds as the SkinFlow rows. The loss-term ablation (focal / alignment / calibration, each left out,
and focal alone) is scored on the validation split only: accuracy, NLL and ECE per variant.
"""

from __future__ import annotations

import time

import pandas as pd
import torch

from skinflow.baselines.cfa import (
    LOSS_TERMS, CFAConfig, cached_features, load_encoder, loss_term_ablation, predict, ranked_outputs, save_head,
    train_head, truth_labels,
)
from skinflow.baselines.classification_metrics import classification_summary, reliability_table
from skinflow.data.manifest import image_paths
from skinflow.eval.equivalence import LabelSpace
from skinflow.eval.metrics import compute_metrics, confusion_matrix, metrics_markdown, per_group_table, write_confusion
from skinflow.eval.predictions import map_predictions
from skinflow.io import atomic_dir, write_csv, write_json, write_parquet, write_text
from skinflow.timing import split_timing, write_results
from skinflow.stage import params_parser, show_progress, stage_config

IN_MANIFEST = "data/manifest.parquet"
IN_TAXONOMY = "data/interim/taxonomy.csv"
VARIANT = "cfa"
# One run per seed: "{run}" is cfa-s<seed>, the row name the ablation pools over seeds.
OUT_MODEL = "models/{run}"
OUT_METRICS = "metrics/baselines/{run}.json"
OUT_CURVE = "metrics/baselines/{run}_curve.csv"
OUT_RELIABILITY = "metrics/baselines/{run}_reliability.csv"  # calibration plot: confidence vs accuracy per bin
OUT_EVAL_METRICS = "metrics/eval/{run}.json"
OUT_EVAL_DIR = "data/eval/{run}"


def main(argv: list[str] | None = None) -> dict:
    parser = params_parser("cfa_baseline", description=__doc__)
    parser.add_argument("--seed", type=int, default=None, help="the run's seed (overrides the section's seed)")
    cfg, args = stage_config("cfa_baseline", CFAConfig, argv, parser)
    if args.seed is not None:
        cfg = cfg.model_copy(update={"seed": args.seed})
    run = f"{VARIANT}-s{cfg.seed}"
    out = {name: template.format(run=run) for name, template in (
        ("model", OUT_MODEL), ("metrics", OUT_METRICS), ("curve", OUT_CURVE), ("reliability", OUT_RELIABILITY),
        ("eval_metrics", OUT_EVAL_METRICS), ("eval_dir", OUT_EVAL_DIR))}
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    manifest = pd.read_parquet(IN_MANIFEST)
    taxonomy = pd.read_csv(IN_TAXONOMY)
    labels = sorted(taxonomy["label"].astype(str).unique())
    index = {label: i for i, label in enumerate(labels)}

    rows = manifest[manifest["split"].isin(["train", "val", "test"])]
    rows = rows.sort_values("image_id", key=lambda s: s.astype(str), kind="mergesort").reset_index(drop=True)
    truths = truth_labels(rows)
    known = torch.tensor([t in index for t in truths])
    y = torch.tensor([index.get(t, -1) for t in truths])
    split = {s: torch.tensor((rows["split"] == s).to_numpy(dtype=bool)) for s in ("train", "val", "test")}
    train, val = split["train"] & known, split["val"] & known
    if not train.any():
        raise ValueError(f"{IN_MANIFEST}: no train rows with a taxonomy label")

    start = time.perf_counter()
    encoder = load_encoder(cfg)
    features, cache_hit = cached_features(encoder, image_paths(rows), cfg.cache_dir,
                                          cfg.extract_batch_size, progress=show_progress())
    text_embeddings = encoder.text_embeddings(labels)
    extract_seconds = time.perf_counter() - start
    del encoder  # the frozen tower is not needed past this point

    head, history, summary = train_head(features[train], y[train], text_embeddings, cfg,
                                        features[val], y[val])
    # Which loss terms earn their place, judged on validation only (the test split is scored once, below).
    loss_terms = loss_term_ablation(features[train], y[train], text_embeddings, cfg, features[val], y[val], labels)
    test_rows = rows[split["test"].numpy()]
    probs, ranked = predict(head, features[split["test"]], text_embeddings, labels)

    # Closed-set metrics need a true class index: truths outside the taxonomy are counted, not scored.
    scored = known[split["test"]].numpy()
    if not scored.any():
        raise ValueError(f"{IN_MANIFEST}: no test rows with a taxonomy label")
    classification = classification_summary(probs[scored], y[split["test"]].numpy()[scored], labels,
                                            n_bins=cfg.ece_bins, n_boot=cfg.n_boot, seed=cfg.seed)
    encoder_source = {"vision_from": cfg.vision_from} if cfg.vision_from else {"clip_dir": cfg.clip_dir}
    report = {
        **classification,
        "variant": VARIANT, "seed": cfg.seed,
        "test_truth_out_of_taxonomy": int((~scored).sum()),
        "n_train": int(train.sum()), "n_val": int(val.sum()),
        "encoder": {**encoder_source, "pooling": cfg.pooling, "feature_dim": int(features.shape[1]),
                    "text_dim": int(text_embeddings.shape[1]), "feature_cache_hit": cache_hit},
        "final_losses": summary["final_losses"],
        "best_epoch": summary["best_epoch"], "epochs_run": summary["epochs_run"],
        "train_seconds": round(summary["train_seconds"], 3),
        "extract_seconds": round(extract_seconds, 3),
        "class_balance": {"scheme": cfg.class_balance, "alpha": summary["alpha"],
                          "train_class_counts": summary["train_class_counts"]},
        "loss_term_ablation_val": loss_terms,
    }

    with atomic_dir(out["model"]) as tmp:
        # Run facts (the feature-cache hit) stay out of the model directory, or its bytes would depend on the cache.
        save_head(tmp, head, text_embeddings, labels, cfg,
                  {"encoder": split_timing(report["encoder"])[0], "best_epoch": summary["best_epoch"]})
    write_results(out["metrics"], report)
    curve_columns = ["epoch", *LOSS_TERMS, *(c for c in history[0] if c.startswith("val_"))]
    write_csv(out["curve"], pd.DataFrame(history, columns=curve_columns))
    write_csv(out["reliability"], pd.DataFrame(reliability_table(probs[scored], y[split["test"]].numpy()[scored],
                                                              cfg.ece_bins)).round(6))

    # The VLM evaluation path: ranked lists as the JSON the parser reads, mapped and scored as-is.
    raw = ranked_outputs(test_rows, ranked)
    space = LabelSpace(taxonomy)
    mapped, match_log = map_predictions(raw, space)
    clinical = compute_metrics(mapped, space, n_boot=cfg.n_boot, seed=cfg.seed)
    eval_metrics = {**clinical, "variant": run, "seed": cfg.seed, "model": out["model"]}
    table = mapped.assign(probabilities=[list(map(float, p)) for p in probs])
    write_parquet(f"{out['eval_dir']}/predictions.parquet",
                  table.astype({"ranked_raw": str, "ranked_labels": str}))
    write_parquet(f"{out['eval_dir']}/match_log.parquet", match_log)
    write_confusion(confusion_matrix(mapped, space), f"{out['eval_dir']}/confusion.csv")
    write_csv(f"{out['eval_dir']}/by_group.csv", per_group_table(clinical))
    write_text(f"{out['eval_dir']}/metrics.md", f"# {VARIANT}\n\n" + metrics_markdown(clinical))
    write_json(out["eval_metrics"], eval_metrics)

    low, high = classification["accuracy_ci95"]
    ci = f" [{low:.3f}, {high:.3f}]" if low is not None else ""
    print(f"{run}: accuracy {classification['accuracy']:.3f}{ci}, ECE {classification['ece']:.3f}, "
          f"macro-F1 {classification['macro_f1']:.3f} on {classification['n']} test images "
          f"(best epoch {summary['best_epoch']}, train {summary['train_seconds']:.1f}s, "
          f"features {extract_seconds:.1f}s)")
    return {"classification": report, "eval": eval_metrics}


if __name__ == "__main__":
    main()
