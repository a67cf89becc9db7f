"""DVC stage `ablation`: every evaluated variant over its training seeds, and paired differences.

Rows come from ``metrics/eval/*.json``: a file ``<variant>-s<seed>.json`` (keys ``variant`` and
``seed``) is one seed of a variant; a file without a ``seed`` key and without the suffix (a baseline
such as ``cfa.json``) is seed 0 of ``json["variant"]`` or the file stem. Each file's per-image
predictions are read from ``data/eval/<stem>/predictions.parquet`` and rescored with the same
indicators evaluate used (statistics: ``skinflow.eval.paired``). Outputs: ``reports/ablation.md``,
``reports/ablation.json`` (per-row and paired headline numbers), ``reports/ablation_full.json`` and
``metrics/headline.json``, the few dozen numbers DVC shows as metrics (with each RL row's final reward gain over
its frozen control, from ``metrics/rl/<variant>-s<seed>.json``).
"""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from skinflow.eval.equivalence import LabelSpace
from skinflow.eval.metrics import candidates, effective_k
from skinflow.eval.paired import (
    AblationConfig, Evaluation, ablation_results, compact, evaluation, group_rows, headline, markdown, parse_ranked,
)
from skinflow.io import atomic_dir, write_json, write_text
from skinflow.stage import stage_config

IN_METRICS = Path("metrics/eval")
IN_EVAL = Path("data/eval")
IN_TAXONOMY = "data/interim/taxonomy.csv"
IN_RL = Path("metrics/rl")
OUT_MD = "reports/ablation.md"
OUT_JSON = "reports/ablation.json"
OUT_FULL = "reports/ablation_full.json"
OUT_HEADLINE = "metrics/headline.json"
OUT_PLOTS = "reports/plots"  # data of dvc.yaml's top-level plots: ablation.csv, confusion-<variant>.csv
CONFUSION_ROWS = ("warmup", "stage2")  # the headline comparison's two rows, lowest seed

_SEEDED = re.compile(r"^(?P<variant>.+)-s(?P<seed>\d+)$")


def row_key(stem: str, data: dict) -> tuple[str, int]:
    """``(variant, seed)`` of one metrics file; the ``-s<seed>`` suffix is not part of the variant."""
    name = str(data.get("variant") or stem)
    match = _SEEDED.match(name)
    seed = int(data["seed"]) if data.get("seed") is not None else int(match["seed"]) if match else 0
    if match and int(match["seed"]) == seed:
        name = match["variant"]
    return name, seed


def _check_stored(ev: Evaluation, data: dict, path: Path) -> None:
    # Rescoring must reproduce what evaluate reported; if not, the label space differs (set
    # ablation.taxonomy to evaluate's) or the predictions are stale.
    overall = data.get("overall") or {}
    for name, value in ev.values().items():
        if not isinstance(overall.get(name), dict):
            continue
        stored, recomputed = overall[name].get("value"), None if math.isnan(value) else value
        if (stored is None) != (recomputed is None) or (stored is not None and abs(stored - recomputed) > 1e-9):
            raise ValueError(f"{path}: {name} is {stored} there but {recomputed} rescored from "
                             f"{IN_EVAL / path.stem / 'predictions.parquet'}; was it evaluated with another "
                             "taxonomy (ablation.taxonomy) or are the predictions stale?")


def load_evaluations(space: LabelSpace) -> tuple[list[Evaluation], dict[str, str]]:
    """The evaluations, and the rows not produced (variant -> why: e.g. Stage I without captions)."""
    k = effective_k(space.n_classes)
    out, not_produced = [], {}
    for path in sorted(IN_METRICS.glob("*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("not_applicable"):
            not_produced[row_key(path.stem, data)[0]] = data["not_applicable"]
            continue
        predictions = IN_EVAL / path.stem / "predictions.parquet"
        if not predictions.exists():
            raise FileNotFoundError(f"{path} has no per-image predictions at {predictions}")
        if data.get("n_classes") not in (None, space.n_classes):
            raise ValueError(f"{path} was scored on {data['n_classes']} classes, the ablation's label space has "
                             f"{space.n_classes}: set ablation.taxonomy to the taxonomy evaluate used")
        variant, seed = row_key(path.stem, data)
        captions = IN_EVAL / path.stem / "caption_scores.parquet"
        ev = evaluation(path.stem, variant, seed, pd.read_parquet(predictions), space, k,
                        pd.read_parquet(captions) if captions.exists() else None)
        _check_stored(ev, data, path)
        out.append(ev)
    return out, not_produced


def rl_gains(evaluations: list[Evaluation]) -> dict[str, list[float]]:
    """Per RL variant, each seed's final reward gain over the frozen control (rows without an RL summary, such
    as the warm-up or a baseline, have none)."""
    gains: dict[str, list[float]] = {}
    for ev in evaluations:
        path = IN_RL / f"{ev.name}.json"
        if path.exists():
            gain = (json.loads(path.read_text(encoding="utf-8")).get("control") or {}).get("gain_last_third")
            if gain is not None:
                gains.setdefault(ev.variant, []).append(float(gain))
    return gains


def topk_curve(results: dict, evaluations: list[Evaluation], labels: set[str]) -> pd.DataFrame:
    """Exact Top-k accuracy (percent) for k = 1..K, one column per row (pooled over its seeds: hits over the
    truths in the taxonomy, summed over seeds), K the evaluation's top-k depth."""
    k_max = results["k"] or 1
    curve = {"k": list(range(1, k_max + 1))}
    for variant in results["row_order"]:
        hits, total = np.zeros(k_max), 0
        for ev in (e for e in evaluations if e.variant == variant):
            frame = pd.read_parquet(IN_EVAL / ev.name / "predictions.parquet")
            for truth, ranked in zip(frame["label"], frame["ranked_labels"]):
                if truth not in labels:
                    continue
                total += 1
                listed = candidates(parse_ranked(ranked), k_max)
                if truth in listed:
                    hits[listed.index(truth):] += 1
        curve[variant] = [round(100 * h / total, 2) if total else None for h in hits]
    return pd.DataFrame(curve)


def write_plot_data(results: dict, evaluations: list[Evaluation], labels: set[str]) -> None:
    """CSV tables for `dvc plots show`: one line per row with Top-1, Top-k and malignant-miss@1 (percent, mean over
    seeds, pooled CI), Top-k accuracy for every k, and the actual-vs-first-answer pairs of the warm-up and
    SkinFlow (no answer: ``(none)``)."""
    heads = {"top1_exact": "top1", f"top{results['k']}_exact": "topk", "malignant_miss_at1": "miss1"}

    def pct(x: float | None) -> float | None:
        return None if x is None else round(100 * x, 2)

    table = [{"variant": v, **{f"{short}{suffix}": pct(results["rows"][v]["metrics"][m][key])
                               for m, short in heads.items() if m in results["rows"][v]["metrics"]
                               for suffix, key in (("", "mean"), ("_lo", "ci_low"), ("_hi", "ci_high"))}}
             for v in results["row_order"]]
    with atomic_dir(OUT_PLOTS) as tmp:
        pd.DataFrame(table).to_csv(tmp / "ablation.csv", index=False)
        topk_curve(results, evaluations, labels).to_csv(tmp / "topk.csv", index=False)
        for variant in CONFUSION_ROWS:
            seeds = sorted((ev.seed, ev.name) for ev in evaluations if ev.variant == variant)
            if not seeds:
                continue
            frame = pd.read_parquet(IN_EVAL / seeds[0][1] / "predictions.parquet")
            first = [(parse_ranked(v) or [None])[0] or "(none)" for v in frame["ranked_labels"]]
            (pd.DataFrame({"actual": frame["label"].astype(str), "predicted": first})
             .sort_values(["actual", "predicted"], kind="mergesort")
             .to_csv(tmp / f"confusion-{variant}.csv", index=False))


def main(argv: list[str] | None = None) -> dict:
    # None (how `skinflow ablation` calls it) means the defaults, not this process's sys.argv.
    cfg, _ = stage_config("ablation", AblationConfig, argv or [])
    taxonomy = (pd.read_csv(cfg.taxonomy, dtype=str, keep_default_na=False) if cfg.taxonomy
                else pd.read_csv(IN_TAXONOMY))
    space = LabelSpace(taxonomy)
    evaluations, not_produced = load_evaluations(space)
    if not evaluations:
        raise FileNotFoundError(f"no evaluations in {IN_METRICS}/*.json: run the evaluate stages first")
    results = ablation_results(group_rows(evaluations, cfg.common_images), cfg, not_produced)
    text = markdown(results)
    write_text(OUT_MD, text)
    write_json(OUT_JSON, compact(results))
    write_json(OUT_FULL, results)
    write_json(OUT_HEADLINE, headline(results, rl_gains(evaluations)))
    write_plot_data(results, evaluations, set(space.labels))
    print(text)
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
