"""Tune an RL stage on the validation split: candidates x seeds, paired differences against a baseline.

A sweep file (``configs/tuning/*.yaml``, section ``SweepSpec``) names the stage, the model each run
starts from, the baseline model every candidate is compared with (the warm-up), the seeds and the
candidates: a name and the overrides it applies to the stage's params section. Every (candidate,
seed) run trains with ``run_grpo`` exactly as the DVC stage would, then is evaluated on the sweep's
split (validation, never test) with the evaluate stage's protocol. The report gives, per candidate,
the seed-pooled value and the paired difference from the baseline on the same validation images,
with the bootstrap CI of ``skinflow.eval.paired``, and the reward gain over the frozen-policy
control that each run logged. Candidates are ranked by a stated rule (``choose``), so a setting in
``params.yaml`` can quote the validation evidence that chose it.

Runs are cached under ``work_dir`` by a hash of everything that shapes them (stage config, start
model weights, manifest), so an interrupted sweep resumes and adding a candidate trains only it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any, Literal

import pandas as pd
from pydantic import Field

from skinflow.config import Section, load_section
from skinflow.eval.equivalence import LabelSpace
from skinflow.eval.evaluate import EvalConfig, evaluate_model
from skinflow.eval.metrics import effective_k
from skinflow.eval.paired import (
    HEADLINE, LOWER_IS_BETTER, Evaluation, evaluation, group_rows, metric_names, paired_difference, summarise_row,
)
from skinflow.io import md5_file, write_json
from skinflow.rl.control import third_means
from skinflow.rl.grpo import Stage1Config, Stage2Config, history_frame, run_grpo

SECTIONS = {"stage1": ("stage1_rl", Stage1Config), "stage2": ("stage2_rl", Stage2Config)}
BASELINE, START = "baseline", "start"
# Ranked on these (the issue's targets): accuracy up, safety not detectably worse, format kept.
SAFETY = ("malignant_miss_at1", "dangerous_error_rate")


class SweepSpec(Section):
    stage: Literal["stage1", "stage2"]
    init: str                               # start model of every run; "{seed}" is filled in
    baseline: str = "models/warmup"         # compared with every candidate on the same images
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    split: Literal["val", "train"] = "val"  # never test: the test split is touched once per variant
    params: str = "params.yaml"             # the stage's section (and evaluate's) come from here
    eval_overrides: list[str] = Field(default_factory=lambda: ["caption_images=0"])
    candidates: dict[str, list[str]] = Field(min_length=1)   # name -> overrides of the stage section
    work_dir: str = ".cache/tune"
    n_boot: int = Field(2000, ge=1)
    ci: float = Field(0.95, gt=0, lt=1)
    seed: int = 0                           # bootstrap stream


def _weights_key(model_dir: str) -> str:
    return "-".join(md5_file(p)[:12] for p in sorted(Path(model_dir).glob("*.safetensors"))) or model_dir


def run_key(cfg: Section, init: str, manifest_path: str) -> str:
    """What determines a run's weights: its config (minus where it works), start weights and data."""
    shape = cfg.model_dump(mode="json", exclude={"work_dir"})
    blob = json.dumps([shape, _weights_key(init), md5_file(manifest_path)], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _train(spec: SweepSpec, name: str, seed: int, inputs: dict[str, Any]) -> tuple[str, dict]:
    """Train one (candidate, seed) run unless the cache holds it; returns (model dir, run summary)."""
    section, model = SECTIONS[spec.stage]
    init = spec.init.format(seed=seed)
    run_dir = Path(spec.work_dir) / spec.stage / f"{name}-s{seed}"
    cfg = load_section(section, model, spec.params,
                       [f"work_dir={run_dir}/work", f"seed={seed}", *spec.candidates[name]])
    key = run_key(cfg, init, inputs["manifest_path"])
    done = run_dir / "summary.json"
    if done.exists() and json.loads(done.read_text())["key"] == key:
        return str(run_dir / "model"), json.loads(done.read_text())
    shutil.rmtree(run_dir / "model", ignore_errors=True)
    summary = run_grpo(spec.stage, init, str(run_dir / "model"), inputs["manifest"], inputs["captions"],
                       inputs["taxonomy"], cfg)
    history = history_frame(summary.pop("history"))
    first, last = third_means(history["reward"]) if "reward" in history else (None, None)
    keep = {"key": key, "control": summary.get("control"), "seconds_per_step": summary.get("seconds_per_step"),
            "reward_first_third": first, "reward_last_third": last}
    write_json(done, keep)
    return str(run_dir / "model"), keep


def _evaluate(spec: SweepSpec, model_dir: str, variant: str, seed: int, inputs: dict[str, Any]) -> Evaluation:
    cfg = load_section("evaluate", EvalConfig, spec.params, [*spec.eval_overrides, f"split={spec.split}"])
    result = evaluate_model(model_dir, inputs["manifest"], inputs["captions"], inputs["taxonomy"], cfg)
    space = LabelSpace(inputs["taxonomy"])
    return evaluation(f"{variant}-s{seed}", variant, seed, result["mapped"], space, effective_k(space.n_classes))


def run_sweep(spec: SweepSpec, manifest_path: str, captions_path: str, taxonomy_path: str,
              only: list[str] | None = None) -> dict[str, Any]:
    """Train and evaluate every candidate (or those in ``only``), then compare each with the baseline."""
    inputs = {"manifest_path": manifest_path, "manifest": pd.read_parquet(manifest_path),
              "captions": pd.read_parquet(captions_path), "taxonomy": pd.read_csv(taxonomy_path)}
    names = [n for n in spec.candidates if only is None or n in only]
    evaluations = [_evaluate(spec, spec.baseline, BASELINE, 0, inputs)]
    # The start models themselves: what RL adds is the candidate's difference from this row, not the baseline's.
    evaluations += [_evaluate(spec, spec.init.format(seed=s), START, s, inputs) for s in spec.seeds]
    runs: dict[str, list[dict]] = {}
    for name in names:
        for seed in spec.seeds:
            model_dir, summary = _train(spec, name, seed, inputs)
            evaluations.append(_evaluate(spec, model_dir, name, seed, inputs))
            runs.setdefault(name, []).append({"seed": seed, **{k: v for k, v in summary.items() if k != "key"}})
    rows = group_rows(evaluations)
    base = rows[BASELINE]
    out = {"stage": spec.stage, "split": spec.split, "n_images": base.n_images, "seeds": spec.seeds,
           "k": effective_k(LabelSpace(inputs["taxonomy"]).n_classes),
           "baseline": {"model": spec.baseline, **summarise_row(base, spec.n_boot, spec.seed, spec.ci)},
           "start": {"model": spec.init, "row": summarise_row(rows[START], spec.n_boot, spec.seed, spec.ci),
                     "vs_baseline": paired_difference(rows[START], base, spec.n_boot, spec.seed, spec.ci)},
           "candidates": {}}
    for name in names:
        out["candidates"][name] = {
            "overrides": spec.candidates[name], "runs": runs[name],
            "row": summarise_row(rows[name], spec.n_boot, spec.seed, spec.ci),
            "vs_baseline": paired_difference(rows[name], base, spec.n_boot, spec.seed, spec.ci),
            "vs_start": paired_difference(rows[name], rows[START], spec.n_boot, spec.seed, spec.ci)}
    out["ranking"] = rank(out["candidates"], base.metrics)
    return out


def rank(candidates: dict[str, Any], metrics: tuple[str, ...]) -> list[dict[str, Any]]:
    """Order candidates: first those whose safety is not detectably worse than the baseline and whose
    format does not detectably fall, then by the mean of the Top-1 and Top-k differences."""
    k_metric = next(m for m in metrics if m.startswith("top") and m.endswith("_exact") and m != "top1_exact")
    order = []
    for name, c in candidates.items():
        d = c["vs_baseline"]
        unsafe = [m for m in SAFETY if d[m]["effect"] and d[m]["diff"] > 0]
        format_falls = d["format_compliance"]["effect"] and d["format_compliance"]["diff"] < 0
        score = ((d["top1_exact"]["diff"] or 0) + (d[k_metric]["diff"] or 0)) / 2
        order.append({"candidate": name, "eligible": not unsafe and not format_falls, "unsafe": unsafe,
                      "format_falls": bool(format_falls), "accuracy_gain": round(score, 6),
                      "beats_baseline": [m for m in ("top1_exact", k_metric) if d[m]["effect"] and d[m]["diff"] > 0]})
    return sorted(order, key=lambda r: (not r["eligible"], -r["accuracy_gain"], r["candidate"]))


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}"


def _cell(value: float | None, d: dict[str, Any]) -> str:
    diff = "—" if d["diff"] is None else f"{100 * d['diff']:+.1f} [{_pct(d['ci_low'])}, {_pct(d['ci_high'])}]"
    return f"{_pct(value)}<br>{'**' + diff + '**' if d['effect'] else diff}"


def markdown(result: dict[str, Any]) -> str:
    headline = metric_names(result["k"], HEADLINE)
    lower = set(metric_names(result["k"], LOWER_IS_BETTER))
    lines = [f"# Tuning {result['stage']} on the {result['split']} split ({result['n_images']} images, "
             f"seeds {', '.join(map(str, result['seeds']))})", "",
             f"Baseline: `{result['baseline']['model']}`. Each cell: candidate value (seed-pooled) and, below, "
             "the paired difference from the baseline on the same images with its 95 % CI; **bold** = the CI "
             "excludes 0. ↓ = lower is better. Reward gain = mean reward over the frozen starting policy on "
             "the same prompts (last third of steps, mean over seeds).", "",
             "| candidate | overrides | " + " | ".join(f"{m}{' ↓' if m in lower else ''}" for m in headline)
             + " | reward gain | s/step |", "|---" * (len(headline) + 4) + "|"]
    base = result["baseline"]["metrics"]
    lines.append("| baseline | — | " + " | ".join(_pct(base[m]["mean"]) for m in headline) + " | — | — |")
    start = result["start"]
    lines.append(f"| start (no RL) | `{start['model']}` | " + " | ".join(
        _cell(start["row"]["metrics"][m]["mean"], start["vs_baseline"][m]) for m in headline) + " | — | — |")
    for name, c in result["candidates"].items():
        cells = []
        for m in headline:
            cells.append(_cell(c["row"]["metrics"][m]["mean"], c["vs_baseline"][m]))
        gains = [r["control"]["gain_last_third"] for r in c["runs"] if r.get("control")]
        gain = f"{sum(gains) / len(gains):+.3f}" if gains else "—"
        speed = [r["seconds_per_step"] for r in c["runs"] if r.get("seconds_per_step")]
        pace = f"{sum(speed) / len(speed):.2f}" if speed else "—"
        lines.append(f"| {name} | `{' '.join(c['overrides']) or '(params.yaml)'}` | " + " | ".join(cells)
                     + f" | {gain} | {pace} |")
    lines += ["", "## Ranking", "", "Eligible = malignant-miss@1 and dangerous-error not detectably above the "
              "baseline and format compliance not detectably below it; then by the mean of the Top-1 and "
              "Top-k differences.", "", "| # | candidate | eligible | accuracy gain (pp) | beats baseline on |",
              "|---|---|---|---|---|"]
    for i, r in enumerate(result["ranking"], 1):
        why = "yes" if r["eligible"] else "no (" + ", ".join(r["unsafe"] + (["format"] if r["format_falls"] else [])) + ")"
        lines.append(f"| {i} | {r['candidate']} | {why} | {100 * r['accuracy_gain']:+.1f} | "
                     f"{', '.join(r['beats_baseline']) or '—'} |")
    lines += ["", "## What RL added: each candidate minus its own start model (same seeds, same images)", "",
              "| candidate | " + " | ".join(headline) + " |", "|---" * (len(headline) + 1) + "|"]
    for name, c in result["candidates"].items():
        lines.append(f"| {name} | " + " | ".join(_cell(None, c["vs_start"][m]).split("<br>")[1] for m in headline) + " |")
    return "\n".join(lines) + "\n"
