"""Tune a baseline on the validation split: candidates x seeds, paired differences from the committed settings.

A sweep file (``configs/tuning/cfa.yaml``, ``configs/tuning/skinvl.yaml``; section ``BaselineSweep``) names the
baseline, the seeds and the candidates (a name and the overrides it applies to the baseline's params section);
the ``reference`` candidate holds the settings every other candidate is compared with. Each (candidate, seed)
is trained exactly as its DVC stage trains it and scored on the validation split only, per image, so the
comparison is the ablation's: seed-pooled values and paired bootstrap CIs on the same images
(``skinflow.eval.paired``).

- **CFA**: the head is trained on the frozen encoder's cached features (the stage's early stopping also reads
  the validation split) and its ranked top-6 labels go through the evaluation's mapping and indicators:
  Top-1/Top-6, malignant-miss@1, dangerous errors, format. NLL and ECE are reported beside them. Ranked like
  the RL sweeps: safety not detectably worse than the reference first, then the mean Top-1/Top-6 gain.
- **SkinVL**: the start model is fine-tuned on the instruction mix and asked MM-Skin's zero-shot question
  (category list, first class named) and the held-out short questions. Per image: zero-shot correct, and the
  exact-match rate of its short answers (overall and per question type). Eligible when the short answers are
  not detectably worse than the reference; then by the zero-shot gain. The start model is a row too.

Runs are cached under ``work_dir`` by a hash of everything that shapes them, so an interrupted sweep resumes.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from pydantic import Field, model_validator

from skinflow.config import Section, load_section
from skinflow.eval.paired import Evaluation, evaluation, group_rows, paired_difference, summarise_row
from skinflow.io import md5_file, write_json

SECTIONS = {"cfa": "cfa_baseline", "skinvl": "skinvl_baseline"}
START = "start"
CFA_METRICS = ("top1_exact", "top{k}_exact", "malignant_miss_at1", "dangerous_error_rate", "format_compliance")
SKINVL_METRICS = ("zero_shot_accuracy", "short_answer_exact")


class BaselineSweep(Section):
    stage: Literal["cfa", "skinvl"]
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    split: Literal["val"] = "val"       # never test: the test split is touched once per variant
    params: str = "params.yaml"
    reference: str = "current"          # the candidate holding the committed settings
    candidates: dict[str, list[str]] = Field(min_length=1)
    work_dir: str = ".cache/tune"
    n_boot: int = Field(2000, ge=1)
    ci: float = Field(0.95, gt=0, lt=1)
    seed: int = 0                       # bootstrap stream

    @model_validator(mode="after")
    def _reference_is_a_candidate(self) -> "BaselineSweep":
        if self.reference not in self.candidates:
            raise ValueError(f"reference {self.reference!r} is not among the candidates {sorted(self.candidates)}")
        return self


def _config(spec: BaselineSweep, name: str, seed: int):
    from skinflow.baselines.cfa import CFAConfig
    from skinflow.baselines.skinvl import SkinVLConfig

    model = {"cfa": CFAConfig, "skinvl": SkinVLConfig}[spec.stage]
    return load_section(SECTIONS[spec.stage], model, spec.params, [f"seed={seed}", *spec.candidates[name]])


def _key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ---- CFA -------------------------------------------------------------------------------------------


def _cfa_evaluations(spec: BaselineSweep, names: list[str], inputs: dict) -> tuple[list[Evaluation], dict]:
    from skinflow.baselines.cfa import cached_features, load_encoder, predict, ranked_outputs, train_head, truth_labels
    from skinflow.baselines.classification_metrics import expected_calibration_error
    from skinflow.data.manifest import image_paths
    from skinflow.eval.equivalence import LabelSpace
    from skinflow.eval.metrics import effective_k
    from skinflow.eval.predictions import map_predictions

    manifest, taxonomy = inputs["manifest"], inputs["taxonomy"]
    labels = sorted(taxonomy["label"].astype(str).unique())
    index = {label: i for i, label in enumerate(labels)}
    space = LabelSpace(taxonomy)
    k = effective_k(space.n_classes)
    encoders: dict[str, tuple] = {}   # features depend on the encoder settings only, not on the head's
    evaluations, runs = [], {}
    for name in names:
        for seed in spec.seeds:
            cfg = _config(spec, name, seed)
            enc_key = _key(cfg.vision_from, cfg.clip_dir, cfg.pooling, cfg.text_template)
            if enc_key not in encoders:
                rows = manifest[manifest["split"].isin(["train", "val"])]
                rows = rows.sort_values("image_id", key=lambda s: s.astype(str), kind="mergesort").reset_index(drop=True)
                encoder = load_encoder(cfg)
                features, _ = cached_features(encoder, image_paths(rows), cfg.cache_dir, cfg.extract_batch_size)
                encoders[enc_key] = (rows, features, encoder.text_embeddings(labels))
                del encoder
            rows, features, texts = encoders[enc_key]
            truths = truth_labels(rows)
            known = torch.tensor([t in index for t in truths])
            y = torch.tensor([index.get(t, -1) for t in truths])
            train = torch.tensor((rows["split"] == "train").to_numpy()) & known
            val = torch.tensor((rows["split"] == "val").to_numpy())
            head, _, summary = train_head(features[train], y[train], texts, cfg, features[val & known], y[val & known])
            probs, ranked = predict(head, features[val], texts, labels)
            mapped, _ = map_predictions(ranked_outputs(rows[val.numpy()], ranked), space)
            evaluations.append(evaluation(f"{name}-s{seed}", name, seed, mapped, space, k))
            scored = known[val].numpy()
            truth = y[val].numpy()[scored]
            p = probs[scored]
            runs.setdefault(name, []).append({
                "seed": seed, "best_epoch": summary["best_epoch"],
                "val_nll": round(float(-np.log(np.clip(p[np.arange(len(truth)), truth], 1e-12, None)).mean()), 6),
                "val_ece": round(float(expected_calibration_error(p, truth, cfg.ece_bins)), 6)})
    return evaluations, runs


# ---- SkinVL ----------------------------------------------------------------------------------------


def _skinvl_evaluation(name: str, seed: int, per_image: dict) -> Evaluation:
    """Per image: zero-shot correct (0/1) and short answers exact (correct / asked), overall and per type."""

    ids = per_image["image_ids"]
    kinds = sorted({q["type"] for q in per_image["qa"]})
    metrics = (*SKINVL_METRICS, *(f"exact_{kind}" for kind in kinds))
    num, den = np.zeros((len(ids), len(metrics))), np.zeros((len(ids), len(metrics)))
    num[:, 0], den[:, 0] = np.asarray(per_image["zero_shot_correct"], dtype=float), 1.0
    for q in per_image["qa"]:
        for col in (1, 2 + kinds.index(q["type"])):
            num[q["index"], col] += q["correct"]
            den[q["index"], col] += 1
    order = np.argsort(np.asarray(ids, dtype=str), kind="stable")
    return Evaluation(f"{name}-s{seed}", name, seed, tuple(np.asarray(ids, dtype=str)[order]), metrics,
                      num[order], den[order])


def _skinvl_evaluations(spec: BaselineSweep, names: list[str], inputs: dict) -> tuple[list[Evaluation], dict]:
    from skinflow.baselines.skinvl import _weights_md5, eval_data, evaluate_variant, fine_tune

    reference = _config(spec, spec.reference, spec.seeds[0]).model_copy(update={"eval_split": spec.split})
    data = eval_data(inputs["manifest"], inputs["captions"], inputs["taxonomy"], reference)  # decoded once
    shared = {"data": md5_file(inputs["manifest_path"]), "captions": md5_file(inputs["captions_path"])}
    evaluations, runs = [], {}

    def cached(run_dir: Path, key: str, produce) -> dict:
        done = run_dir / "summary.json"
        if done.exists() and json.loads(done.read_text())["key"] == key:
            return json.loads(done.read_text())
        out = {"key": key, **produce()}
        write_json(done, out)
        return out

    start_dir = reference.start_model
    start_key = _key(_weights_md5(start_dir), shared, reference.model_dump(include={
        "eval_split", "eval_images", "max_new_tokens", "zero_shot_max_new_tokens", "qa_max_new_tokens",
        "generation_batch_size"}))
    start = cached(Path(spec.work_dir) / spec.stage / START, start_key,
                   lambda: {"per_image": evaluate_variant(start_dir, data, reference, probe=False)[1]})
    evaluations.append(_skinvl_evaluation(START, 0, start["per_image"]))
    for name in names:
        for seed in spec.seeds:
            cfg = _config(spec, name, seed).model_copy(update={"eval_split": spec.split})
            if cfg.start_model != start_dir:
                raise ValueError(f"candidate {name!r} changes start_model; sweep one start model at a time")
            run_dir = Path(spec.work_dir) / spec.stage / f"{name}-s{seed}"
            key = _key(cfg.model_dump(mode="json", exclude={"threads"}), _weights_md5(start_dir), shared)

            def produce() -> dict:
                model_dir = run_dir / "model"
                shutil.rmtree(model_dir, ignore_errors=True)
                training = fine_tune(str(model_dir), data, cfg)
                _, per_image = evaluate_variant(str(model_dir), data, cfg, probe=False)
                shutil.rmtree(model_dir, ignore_errors=True)  # the per-image answers are what the sweep keeps
                return {"per_image": per_image,
                        "train": {k: training[k] for k in ("examples", "steps", "seconds", "loss_first", "loss_last")}}

            run = cached(run_dir, key, produce)
            evaluations.append(_skinvl_evaluation(name, seed, run["per_image"]))
            runs.setdefault(name, []).append({"seed": seed, **run["train"]})
    return evaluations, runs


# ---- the sweep -------------------------------------------------------------------------------------


def rank(stage: str, candidates: dict[str, Any], metrics: tuple[str, ...]) -> list[dict[str, Any]]:
    """CFA: safety (malignant-miss@1, dangerous errors) and format not detectably worse than the reference, then
    by the mean Top-1/Top-k difference. SkinVL: short answers not detectably worse, then by the zero-shot
    difference. The reference itself ranks with a gain of 0."""
    if stage == "cfa":
        k_metric = next(m for m in metrics if m.startswith("top") and m.endswith("_exact") and m != "top1_exact")
        worse = {"malignant_miss_at1": 1, "dangerous_error_rate": 1, "format_compliance": -1}
        gain = ("top1_exact", k_metric)
    else:
        worse, gain = {"short_answer_exact": -1}, ("zero_shot_accuracy",)
    order = []
    for name, c in candidates.items():
        d = c["vs_reference"]
        failing = [m for m, sign in worse.items() if d[m]["effect"] and sign * d[m]["diff"] > 0]
        score = sum(d[m]["diff"] or 0 for m in gain) / len(gain)
        order.append({"candidate": name, "eligible": not failing, "worse_on": failing, "gain": round(score, 6),
                      "beats_reference": [m for m in gain if d[m]["effect"] and d[m]["diff"] > 0]})
    return sorted(order, key=lambda r: (not r["eligible"], -r["gain"], r["candidate"]))


def run_baseline_sweep(spec: BaselineSweep, manifest_path: str, captions_path: str, taxonomy_path: str,
                       only: list[str] | None = None) -> dict[str, Any]:
    """Train and score every candidate (or those in ``only``, always with the reference) on the validation split."""
    inputs = {"manifest_path": manifest_path, "captions_path": captions_path,
              "manifest": pd.read_parquet(manifest_path), "captions": pd.read_parquet(captions_path),
              "taxonomy": pd.read_csv(taxonomy_path)}
    names = [n for n in spec.candidates if only is None or n in only or n == spec.reference]
    build = _cfa_evaluations if spec.stage == "cfa" else _skinvl_evaluations
    evaluations, runs = build(spec, names, inputs)
    rows = group_rows(evaluations)
    ref = rows[spec.reference]
    out = {"stage": spec.stage, "split": spec.split, "n_images": ref.n_images, "seeds": spec.seeds,
           "reference": spec.reference, "metrics": list(ref.metrics), "candidates": {}}
    if START in rows:
        out["start"] = {"row": summarise_row(rows[START], spec.n_boot, spec.seed, spec.ci),
                        "vs_reference": paired_difference(rows[START], ref, spec.n_boot, spec.seed, spec.ci)}
    for name in names:
        out["candidates"][name] = {
            "overrides": spec.candidates[name], "runs": runs[name],
            "row": summarise_row(rows[name], spec.n_boot, spec.seed, spec.ci),
            "vs_reference": paired_difference(rows[name], ref, spec.n_boot, spec.seed, spec.ci)}
        if START in rows:
            out["candidates"][name]["vs_start"] = paired_difference(rows[name], rows[START], spec.n_boot, spec.seed,
                                                                    spec.ci)
    out["ranking"] = rank(spec.stage, out["candidates"], ref.metrics)
    out["chosen"] = choose(out["ranking"], spec.reference)
    return out


def choose(ranking: list[dict[str, Any]], reference: str) -> str:
    """The committed settings stay unless an eligible candidate beats them detectably (CI above zero); then the
    best-ranked such candidate. A gain inside the noise never moves a setting."""
    return next((r["candidate"] for r in ranking if r["eligible"] and r["beats_reference"]), reference)


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}"


def _cell(value: float | None, d: dict[str, Any] | None) -> str:
    if d is None:
        return _pct(value)
    diff = "—" if d["diff"] is None else f"{100 * d['diff']:+.1f} [{_pct(d['ci_low'])}, {_pct(d['ci_high'])}]"
    return f"{_pct(value)}<br>{'**' + diff + '**' if d['effect'] else diff}"


def markdown(result: dict[str, Any]) -> str:
    shown = [m for m in result["metrics"] if m in (*SKINVL_METRICS, "top1_exact", "malignant_miss_at1",
                                                     "dangerous_error_rate", "format_compliance")
             or (m.startswith("top") and m.endswith("_exact")) or m.startswith("exact_")]
    extra = ("val NLL", "val ECE") if result["stage"] == "cfa" else ("train s",)
    lines = [f"# Tuning the {result['stage']} baseline on the {result['split']} split ({result['n_images']} images, "
             f"seeds {', '.join(map(str, result['seeds']))})", "",
             f"Reference: `{result['reference']}` (the committed settings). Each cell: the candidate's seed-pooled "
             "value and, below, the paired difference from the reference on the same images with its 95 % CI; "
             "**bold** = the CI excludes 0. Values in %."
             + (" NLL and ECE: mean over seeds (the head's early stopping also reads this split)."
                if result["stage"] == "cfa" else ""), "",
             "| candidate | overrides | " + " | ".join(shown) + " | " + " | ".join(extra) + " |",
             "|---" * (len(shown) + len(extra) + 2) + "|"]
    if "start" in result:
        s = result["start"]
        lines.append("| start model | — | " + " | ".join(_cell(s["row"]["metrics"][m]["mean"], s["vs_reference"][m])
                                                         for m in shown) + " |" + " — |" * len(extra))
    for name, c in result["candidates"].items():
        runs = c["runs"]
        mean = lambda key: f"{sum(r[key] for r in runs) / len(runs):.3f}"  # noqa: E731
        tail = [mean("val_nll"), mean("val_ece")] if result["stage"] == "cfa" else [mean("seconds")]
        ref = None if name == result["reference"] else c["vs_reference"]
        lines.append(f"| {name} | `{' '.join(c['overrides']) or '(params.yaml)'}` | "
                     + " | ".join(_cell(c["row"]["metrics"][m]["mean"], ref and ref[m]) for m in shown)
                     + " | " + " | ".join(tail) + " |")
    rule = ("malignant-miss@1, dangerous errors and format not detectably worse than the reference; then by the "
            "mean of the Top-1 and Top-k differences" if result["stage"] == "cfa" else
            "short-answer exact match not detectably below the reference; then by the zero-shot difference")
    chosen = result.get("chosen", result["reference"])
    verdict = (f"**{chosen}** (beats the reference detectably)" if chosen != result["reference"] else
               f"**{chosen}**, the committed settings: no eligible candidate beats them detectably")
    lines += ["", "## Ranking", "", f"Eligible = {rule}. Chosen: {verdict}.", "",
              "| # | candidate | eligible | gain (pp) | beats the reference on |", "|---|---|---|---|---|"]
    for i, r in enumerate(result["ranking"], 1):
        why = "yes" if r["eligible"] else "no (" + ", ".join(r["worse_on"]) + ")"
        lines.append(f"| {i} | {r['candidate']} | {why} | {100 * r['gain']:+.1f} | "
                     f"{', '.join(r['beats_reference']) or '—'} |")
    return "\n".join(lines) + "\n"
