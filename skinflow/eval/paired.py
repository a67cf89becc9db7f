"""Ablation statistics over training seeds: per-row summaries and paired differences with CIs.

Every ablation row (a model variant) is trained with one or more seeds, and each (variant, seed) is
evaluated on the same test images. Per image, ``image_indicators`` gives a numerator and a
denominator for every metric (e.g. miss@1: "malignant truth and top-1 not malignant" over
"malignant truth"). From those:

* Row summary: the metric per seed (sum num / sum den), then mean, sd (ddof=1), min and max over
  seeds, plus the seed-pooled value with a percentile bootstrap CI. Pooling averages each image's
  indicator over the row's seeds first, so the CI resamples images (the unit the test set samples)
  and not seeds (too few to resample).
* Paired difference A - B: both rows pooled over their seeds as above, then on each bootstrap
  replicate the same resampled images score both rows, num/den per row, and the difference is taken.
  Pairing removes the between-image variance the two rows share, so it is tighter than comparing
  two separate CIs. An effect is claimed only when the percentile CI excludes 0. The spread of the
  seed-paired differences (same seed number in both rows) is reported alongside as information on
  training noise; it does not enter the CI.

Determinism: images are sorted by id, seeds ascending, and each row / comparison draws from its own
``np.random.default_rng([seed, stream, crc32(name)])`` stream, so adding a row or reordering the
comparisons never changes another's CI and the same inputs give byte-identical reports.
"""

from __future__ import annotations

import ast
import json
import math
import re
import zlib
from dataclasses import dataclass
from typing import Annotated, Any, Mapping, Sequence

import numpy as np
import pandas as pd
from pydantic import Field, field_validator

from skinflow.config import Section
from skinflow.eval.equivalence import LabelSpace
from skinflow.eval.metrics import (
    bootstrap_ratios, image_indicators, metric_definitions, percentile_ci, ratio_or_nan,
)

# "{k}" is the evaluation's top-k depth (``effective_k``), filled in by ``metric_names``.
METRICS = ("top1_exact", "top{k}_exact", "top1_grounded", "top{k}_grounded", "malignant_miss_at1",
           "malignant_miss_at{k}", "dangerous_error_rate", "over_call_rate", "format_compliance")
# Mean per-image caption field score (macro over the schema's fields) on the images evaluate captioned; rows
# without captions (the baselines) have no value. Not a rate: "percent" of a score in [0, 1].
CAPTION_METRIC = "caption_macro"
HEADLINE = ("top1_exact", "top{k}_exact", "malignant_miss_at1", "dangerous_error_rate", "format_compliance",
            CAPTION_METRIC)
LOWER_IS_BETTER = ("malignant_miss_at1", "malignant_miss_at{k}", "dangerous_error_rate", "over_call_rate")
# The paper's rows first (base -> +S2 -> +S1+S2 -> +DVE+S1+S2), then controls and baselines.
ROW_ORDER = ("warmup", "stage2_only", "s1_s2", "stage1", "stage2", "dve_only", "vision_lora", "cfa", "skinvl")
DEFAULT_COMPARISONS = (
    ("stage2_only", "warmup", "+Stage II"),
    ("s1_s2", "stage2_only", "+Stage I"),
    ("stage2", "s1_s2", "+DVE"),
    ("stage2", "warmup", "SkinFlow vs warm-up"),
    ("stage1", "warmup", "Stage I alone"),
    ("dve_only", "stage2_only", "DVE without Stage I"),
    ("vision_lora", "stage2", "parameter-matched control"),
    ("cfa", "stage2", "CFA baseline vs SkinFlow"),
    ("skinvl", "stage2", "SkinVL baseline vs SkinFlow"),
)
NO_EFFECT = "no detectable difference"
_ROW_STREAM, _PAIR_STREAM = 1, 2
_DIGITS = 6  # JSON rounding: far below any CI width, and keeps the files small and stable


class AblationConfig(Section):
    # The training seeds: read by dvc.yaml (one RL run and one evaluation per seed); listed here so the section
    # validates and a row missing a seed is reported.
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    control_seeds: list[int] = Field(default_factory=list)   # empty: the control stages do not exist
    n_boot: int = Field(2000, ge=1)
    seed: int = 0
    ci: float = Field(0.95, gt=0, lt=1)
    taxonomy: str | None = None      # the label space evaluate used; None = data/interim/taxonomy.csv
    # Restrict every row to the images all rows share instead of failing when image sets differ
    # (e.g. a tiny run whose evaluate.limit caps the VLM rows but not a baseline).
    common_images: bool = False
    # [A, B] or [A, B, label]: the difference A - B. Lists, not tuples, so a dump equals the YAML.
    comparisons: list[Annotated[list[str], Field(min_length=2, max_length=3)]] = Field(
        default_factory=lambda: [list(c) for c in DEFAULT_COMPARISONS])

    @field_validator("comparisons")
    @classmethod
    def _distinct(cls, value: list[list[str]]) -> list[list[str]]:
        pairs = [(c[0], c[1]) for c in value]
        for a, b in pairs:
            if a == b:
                raise ValueError(f"comparison [{a}, {b}] compares a row with itself")
        duplicates = sorted({p for p in pairs if pairs.count(p) > 1})
        if duplicates:
            raise ValueError(f"comparisons listed twice: {duplicates}")
        return value


def metric_names(k: int, names: Sequence[str] = METRICS) -> tuple[str, ...]:
    return tuple(n.format(k=k) for n in names)


# ---- reading stored predictions -----------------------------------------------------------------

# The items of a str()-ed list or numpy array: quoted strings (either quote) and None/nan.
_TOKEN = re.compile(r"""'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|\b(?:None|nan|NaN)\b""")


def _item(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return str(value)


def parse_ranked(value: Any) -> list[str | None]:
    """A stored ranked list back as a list: JSON text, ``str()`` of a list or numpy array, or a
    list/array itself (parquet list column). Missing -> ``[]``; an unreadable string raises."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return []
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_item(v) for v in value]
    text = str(value).strip()
    if not text:
        return []
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = None
    if isinstance(parsed, list):
        return [_item(v) for v in parsed]
    # str() of a list or numpy array: token by token, since literal_eval would join numpy's
    # comma-less "['a' 'b']" into one string.
    if text.startswith("[") and text.endswith("]"):
        return [None if token in ("None", "nan", "NaN") else str(ast.literal_eval(token))
                for token in _TOKEN.findall(text)]
    raise ValueError(f"cannot read a ranked list from {text[:80]!r}")


# ---- per-image indicators of one evaluation and of one row --------------------------------------


@dataclass(frozen=True)
class Evaluation:
    """One (variant, seed) evaluation: per-image numerators and denominators, images sorted by id."""

    name: str                       # where it came from, e.g. the metrics file stem "stage2-s1"
    variant: str
    seed: int
    image_ids: tuple[str, ...]
    metrics: tuple[str, ...]
    num: np.ndarray                 # images x metrics
    den: np.ndarray

    def values(self) -> dict[str, float | None]:
        """Each metric on this evaluation alone (what evaluate's JSON reports as ``value``)."""
        return dict(zip(self.metrics, ratio_or_nan(self.num.sum(0), self.den.sum(0)).tolist()))

    def restricted(self, keep: set[str]) -> Evaluation:
        mask = np.fromiter((i in keep for i in self.image_ids), dtype=bool, count=len(self.image_ids))
        ids = tuple(i for i, m in zip(self.image_ids, mask) if m)
        return Evaluation(self.name, self.variant, self.seed, ids, self.metrics, self.num[mask], self.den[mask])


def evaluation(name: str, variant: str, seed: int, mapped: pd.DataFrame, space: LabelSpace,
               k: int, captions: pd.DataFrame | None = None) -> Evaluation:
    """Indicators of one stored prediction table (``ranked_labels`` may be text; see ``parse_ranked``), plus
    ``caption_macro`` from evaluate's per-image caption scores (``image_id``, ``macro``) when given."""
    ids = mapped["image_id"].astype(str)
    if ids.duplicated().any():
        raise ValueError(f"{name}: duplicate image_id values, e.g. {sorted(ids[ids.duplicated()].unique())[:3]}")
    frame = mapped.assign(image_id=ids, ranked_labels=[parse_ranked(v) for v in mapped["ranked_labels"]])
    frame = frame.sort_values("image_id", kind="mergesort").reset_index(drop=True)
    ind = image_indicators(frame, space, k)
    definitions = metric_definitions(k)
    names = metric_names(k)
    num = ind[[definitions[m][0] for m in names]].to_numpy(dtype=float)
    den = ind[[definitions[m][1] for m in names]].to_numpy(dtype=float)
    scores = (captions.assign(image_id=captions["image_id"].astype(str)).set_index("image_id")["macro"]
              if captions is not None else pd.Series(dtype=float))
    unknown = set(scores.index) - set(frame["image_id"])
    if unknown:
        raise ValueError(f"{name}: caption scores for images it did not evaluate, e.g. {sorted(unknown)[:3]}")
    caption = frame["image_id"].map(scores)
    num = np.column_stack([num, caption.fillna(0.0).to_numpy(dtype=float)])
    den = np.column_stack([den, caption.notna().to_numpy(dtype=float)])
    return Evaluation(name, variant, int(seed), tuple(frame["image_id"]), (*names, CAPTION_METRIC), num, den)


@dataclass(frozen=True)
class Row:
    """One variant over its seeds (ascending): arrays are seeds x images x metrics."""

    variant: str
    seeds: tuple[int, ...]
    names: tuple[str, ...]          # the evaluation behind each seed
    image_ids: tuple[str, ...]
    metrics: tuple[str, ...]
    num: np.ndarray
    den: np.ndarray

    @property
    def n_images(self) -> int:
        return len(self.image_ids)


def check_same_images(image_ids: Mapping[str, Sequence[str]]) -> None:
    """Raise, naming the evaluations, unless every one covers the same image_id set."""
    groups: dict[frozenset[str], list[str]] = {}
    for name in sorted(image_ids):
        groups.setdefault(frozenset(image_ids[name]), []).append(name)
    if len(groups) <= 1:
        return
    # The largest group is the reference; each other group is described relative to it.
    ordered = sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[1]))
    ref_set, ref_names = ordered[0]
    parts = [f"{', '.join(ref_names)}: {len(ref_set)} images"]
    for ids, names in ordered[1:]:
        missing, extra = sorted(ref_set - ids), sorted(ids - ref_set)
        detail = ", ".join(f"{len(v)} {what} (e.g. {v[0]})" for what, v in
                           (("missing", missing), ("extra", extra)) if v)
        parts.append(f"{', '.join(names)}: {len(ids)} images, {detail}")
    raise ValueError("rows were evaluated on different test images (paired differences need the same "
                     "images; set ablation.common_images to compare on the shared ones): " + "; ".join(parts))


def group_rows(evaluations: Sequence[Evaluation], common_images: bool = False) -> dict[str, Row]:
    """Rows by variant after checking every evaluation used the same images (or restricting to
    the images they share when ``common_images``) and that no (variant, seed) appears twice."""
    if not evaluations:
        return {}
    seen: dict[tuple[str, int], str] = {}
    for ev in evaluations:
        if (ev.variant, ev.seed) in seen:
            raise ValueError(f"variant {ev.variant!r} seed {ev.seed} comes from both {seen[ev.variant, ev.seed]} "
                             f"and {ev.name}")
        seen[ev.variant, ev.seed] = ev.name
    if common_images:
        shared = set.intersection(*(set(ev.image_ids) for ev in evaluations))
        if not shared:
            raise ValueError("the evaluations share no test image")
        evaluations = [ev.restricted(shared) for ev in evaluations]
    check_same_images({ev.name: ev.image_ids for ev in evaluations})
    if len({ev.metrics for ev in evaluations}) > 1:
        raise ValueError("evaluations were scored with different top-k depths")
    rows = {}
    for variant in sorted({ev.variant for ev in evaluations}):
        evs = sorted((ev for ev in evaluations if ev.variant == variant), key=lambda ev: ev.seed)
        rows[variant] = Row(variant, tuple(ev.seed for ev in evs), tuple(ev.name for ev in evs), evs[0].image_ids,
                            evs[0].metrics, np.stack([ev.num for ev in evs]), np.stack([ev.den for ev in evs]))
    return rows


def ordered_variants(variants: Sequence[str]) -> list[str]:
    return [v for v in ROW_ORDER if v in variants] + sorted(v for v in variants if v not in ROW_ORDER)


# ---- statistics ---------------------------------------------------------------------------------


def _pooled(row: Row) -> tuple[np.ndarray, np.ndarray]:
    """Per-image numerators and denominators pooled over the row's seeds (images x metrics).

    Summed rather than averaged: the seed count cancels in every ratio, and integer-valued floats
    keep the bootstrap's matrix products exact, hence identical on every run and machine."""
    return row.num.sum(0), row.den.sum(0)


def _stream(seed: int, kind: int, name: str) -> np.random.Generator:
    # crc32 of the name, not Python's salted hash(): stable across processes.
    return np.random.default_rng([seed, kind, zlib.crc32(name.encode("utf-8"))])


def _num(x: Any) -> float | int | None:
    if x is None or not math.isfinite(x):
        return None
    x = float(x)
    return int(x) if x.is_integer() else round(x, _DIGITS)


def _spread(values: Sequence[float]) -> dict[str, Any]:
    arr = np.asarray(values, dtype=float)
    return {"mean": _num(arr.mean()) if len(arr) else None,
            "sd": _num(arr.std(ddof=1)) if len(arr) >= 2 else None,
            "min": _num(arr.min()) if len(arr) else None,
            "max": _num(arr.max()) if len(arr) else None}


def summarise_row(row: Row, n_boot: int, seed: int, ci: float) -> dict[str, Any]:
    """Per metric: mean/sd/min/max over seeds, each seed's value, and the seed-pooled value with
    its bootstrap CI (``n`` = the pooled denominator, e.g. malignant truths for miss@1)."""
    per_seed = ratio_or_nan(row.num.sum(1), row.den.sum(1))                 # seeds x metrics
    num, den = _pooled(row)
    pooled = ratio_or_nan(num.sum(0), den.sum(0))
    low, high = percentile_ci(bootstrap_ratios(num, den, n_boot, _stream(seed, _ROW_STREAM, row.variant)), ci)
    metrics = {}
    for j, name in enumerate(row.metrics):
        defined = [v for v in per_seed[:, j] if math.isfinite(v)]
        metrics[name] = {**_spread(defined), "n_seeds": len(defined),
                         "per_seed": [_num(v) for v in per_seed[:, j]],
                         "pooled": _num(pooled[j]), "ci_low": _num(low[j]), "ci_high": _num(high[j]),
                         "n": _num(den[:, j].sum() / len(row.seeds))}
    return {"variant": row.variant, "seeds": list(row.seeds), "evaluations": list(row.names),
            "n_images": row.n_images, "metrics": metrics}


def verdict(diff: float | None, low: float | None, high: float | None) -> tuple[bool, str]:
    """``(effect, text)``: an effect only when the CI lies entirely on one side of 0."""
    if diff is None:
        return False, "undefined (empty denominator)"
    effect = low is not None and high is not None and (low > 0 or high < 0)
    return effect, f"effect ({100 * diff:+.1f} pp)" if effect else NO_EFFECT


def paired_difference(a: Row, b: Row, n_boot: int, seed: int, ci: float) -> dict[str, dict[str, Any]]:
    """Per metric: the seed-pooled difference A - B, its paired percentile bootstrap CI, the
    verdict, and the seed-paired differences when both rows have at least two seeds in common."""
    if a.image_ids != b.image_ids or a.metrics != b.metrics:
        raise ValueError(f"{a.variant} and {b.variant} were not scored on the same images and metrics")
    m = len(a.metrics)
    (num_a, den_a), (num_b, den_b) = _pooled(a), _pooled(b)
    num, den = np.hstack([num_a, num_b]), np.hstack([den_a, den_b])   # images x (metrics of A | of B)
    point = ratio_or_nan(num.sum(0), den.sum(0))
    reps = bootstrap_ratios(num, den, n_boot, _stream(seed, _PAIR_STREAM, f"{a.variant}\0{b.variant}"))
    low, high = percentile_ci(reps[:, :m] - reps[:, m:], ci)
    # Same seed number in both rows; only meaningful as a spread with two pairs or more.
    common = sorted(set(a.seeds) & set(b.seeds)) if min(len(a.seeds), len(b.seeds)) >= 2 else []
    va, vb = ratio_or_nan(a.num.sum(1), a.den.sum(1)), ratio_or_nan(b.num.sum(1), b.den.sum(1))
    out = {}
    for j, name in enumerate(a.metrics):
        diff = _num(point[j] - point[m + j])
        lo, hi = _num(low[j]), _num(high[j])
        effect, text = verdict(diff, lo, hi)
        pairs = [(s, va[a.seeds.index(s), j] - vb[b.seeds.index(s), j]) for s in common]
        pairs = [(s, d) for s, d in pairs if math.isfinite(d)]
        out[name] = {"a": _num(point[j]), "b": _num(point[m + j]), "diff": diff, "ci_low": lo, "ci_high": hi,
                     "effect": effect, "verdict": text,
                     "seed_paired": ({"seeds": [s for s, _ in pairs], "diffs": [_num(d) for _, d in pairs],
                                      **_spread([d for _, d in pairs])} if len(pairs) >= 2 else None)}
    return out


# ---- the whole ablation -------------------------------------------------------------------------


def ablation_results(rows: Mapping[str, Row], cfg: AblationConfig,
                     not_produced: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Row summaries and every configured comparison (missing rows -> status "not run", or "not applicable" with
    the reason when the row's stage could not apply to this configuration, e.g. Stage I without captions)."""
    not_produced = dict(sorted((not_produced or {}).items()))
    order = ordered_variants(list(rows))
    first = rows[order[0]] if order else None
    comparisons = []
    for a, b, *label in cfg.comparisons:
        entry: dict[str, Any] = {"name": f"{a}_vs_{b}", "a": a, "b": b, "label": label[0] if label else f"{a} vs {b}"}
        missing = [v for v in (a, b) if v not in rows]
        if missing:
            entry.update(status="not applicable" if set(missing) <= set(not_produced) else "not run", missing=missing)
        else:
            entry.update(status="ok", seeds={"a": list(rows[a].seeds), "b": list(rows[b].seeds)},
                         metrics=paired_difference(rows[a], rows[b], cfg.n_boot, cfg.seed, cfg.ci))
        comparisons.append(entry)
    return {
        "rows": {v: summarise_row(rows[v], cfg.n_boot, cfg.seed, cfg.ci) for v in order},
        "row_order": order,
        "comparisons": comparisons,
        **({"not_produced": not_produced} if not_produced else {}),
        "metrics": list(first.metrics) if first else [],
        "k": _k(first.metrics) if first else None,
        "n_images": first.n_images if first else 0,
        "bootstrap": {"method": "percentile; images resampled with replacement, per-image indicators "
                                "averaged over each row's seeds; paired: both rows on the same resample",
                      "n_boot": cfg.n_boot, "seed": cfg.seed, "ci": cfg.ci},
    }


def _k(metrics: Sequence[str]) -> int:
    # The top-k depth the metric names were made with ("top6_exact" -> 6).
    found = [int(m[3:-6]) for m in metrics if re.fullmatch(r"top\d+_exact", m) and m != "top1_exact"]
    return found[0] if found else 1


def _headline(results: dict[str, Any]) -> list[str]:
    return [m for m in metric_names(results["k"] or 1, HEADLINE) if m in results["metrics"]]


def compact(results: dict[str, Any]) -> dict[str, Any]:
    """The headline numbers only, for ``dvc metrics``: per row mean (``value``), sd and pooled CI of
    the headline metrics; per comparison the headline differences with CI and effect flag."""
    heads = _headline(results)
    rows = {v: {"n_seeds": len(r["seeds"]), "n_images": r["n_images"],
                **{m: {key: r["metrics"][m][src] for key, src in
                       (("value", "mean"), ("sd", "sd"), ("ci_low", "ci_low"), ("ci_high", "ci_high"))}
                   for m in heads}}
            for v, r in results["rows"].items()}
    paired = {c["name"]: ({m: {key: c["metrics"][m][key] for key in ("diff", "ci_low", "ci_high", "effect")}
                            for m in heads} if c["status"] == "ok" else {"status": c["status"]})
              for c in results["comparisons"]}
    # row_order: the JSON's keys get sorted, the report keeps the paper's order.
    return {"rows": rows, "row_order": results["row_order"], "paired": paired, "n_boot": results["bootstrap"]["n_boot"],
            "ci": results["bootstrap"]["ci"], **({"not_produced": results["not_produced"]}
                                                 if results.get("not_produced") else {})}


def headline(results: dict[str, Any], rl_gains: Mapping[str, Sequence[float]] | None = None,
             comparison: str = "stage2_vs_warmup") -> dict[str, Any]:
    """The declared DVC metrics, sized for ``dvc exp show``: per row Top-1, Top-k and malignant-miss@1 (percent,
    mean over seeds); one comparison (SkinFlow vs the warm-up by default) with its paired CI; per RL variant
    the final reward gain over the frozen control, mean over seeds. Everything else is in the full reports."""
    def pct(x: float | None) -> float | None:
        return None if x is None else round(100 * x, 1)

    heads = [m for m in _headline(results) if m.startswith("top") or m == "malignant_miss_at1"]
    short = {m: m.replace("_exact", "").replace("malignant_miss_at1", "miss1") for m in heads}
    out: dict[str, Any] = {"rows": {v: {short[m]: pct(r["metrics"][m]["mean"]) for m in heads}
                                    for v, r in results["rows"].items()}}
    chosen = next((c for c in results["comparisons"] if c["name"] == comparison and c["status"] == "ok"), None)
    if chosen:
        out[comparison] = {f"{short[m]}{suffix}": pct(chosen["metrics"][m][key]) for m in heads
                           for suffix, key in (("", "diff"), ("_lo", "ci_low"), ("_hi", "ci_high"))}
    if rl_gains:
        out["rl_gain"] = {v: round(float(np.mean(g)), 4) for v, g in sorted(rl_gains.items()) if g}
    return out


# ---- markdown -----------------------------------------------------------------------------------


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}"


def _row_cell(cell: dict[str, Any]) -> str:
    if cell["mean"] is None:
        return "—"
    sd = f" ± {_pct(cell['sd'])}" if cell["sd"] is not None else ""
    ci = f" [{_pct(cell['ci_low'])}, {_pct(cell['ci_high'])}]" if cell["ci_low"] is not None else ""
    return f"{_pct(cell['mean'])}{sd}{ci}"


def _seed_cell(spread: dict[str, Any] | None) -> str:
    if spread is None:
        return "—"
    sd = f" ± {_pct(spread['sd'])}" if spread["sd"] is not None else ""
    return f"{_pct(spread['mean'])}{sd} (n={len(spread['diffs'])}, {_pct(spread['min'])} to {_pct(spread['max'])})"


def markdown(results: dict[str, Any]) -> str:
    metrics = results["metrics"]
    lower = set(metric_names(results["k"] or 1, LOWER_IS_BETTER))
    label = {m: f"{m} ↓" if m in lower else m for m in metrics}
    boot = results["bootstrap"]
    level = f"{boot['ci']:.0%}"
    lines = [f"# Ablation over training seeds (test split, {results['n_images']} images, %)", "",
             "## Rows", "", "| variant | seeds | n | " + " | ".join(label[m] for m in metrics) + " |",
             "|---" * (len(metrics) + 3) + "|"]
    for variant in results["row_order"]:
        row = results["rows"][variant]
        seeds = ",".join(str(s) for s in row["seeds"])
        lines.append(f"| {variant} | {seeds} | {row['n_images']} | "
                     + " | ".join(_row_cell(row["metrics"][m]) for m in metrics) + " |")
    lines += ["", "## Paired differences (A − B, percentage points)", "",
              f"| comparison | metric | A − B | {level} CI | verdict | seed-paired A − B |", "|---" * 6 + "|"]
    not_run = []
    for c in results["comparisons"]:
        if c["status"] != "ok":
            not_run.append(f"- {c['label']} ({c['a']} − {c['b']}): {c['status']} (missing {', '.join(c['missing'])})")
            continue
        for m in metrics:
            d = c["metrics"][m]
            ci = f"[{_pct(d['ci_low'])}, {_pct(d['ci_high'])}]" if d["ci_low"] is not None else "—"
            diff = "—" if d["diff"] is None else f"{100 * d['diff']:+.1f}"
            lines.append(f"| {c['label']}: {c['a']} − {c['b']} | {label[m]} | {diff} | {ci} | {d['verdict']} "
                         f"| {_seed_cell(d['seed_paired'])} |")
    if not_run:
        lines += ["", "Comparisons not run:", "", *not_run]
    if results.get("not_produced"):
        lines += ["", "## Rows not produced", "", *(f"- {v}: {why}" for v, why in results["not_produced"].items())]
    lines += ["", "## How to read this", "",
              "- Rows: mean ± sd over training seeds (sd with ≥ 2 seeds), then the seed-pooled "
              f"{level} CI: each image's indicator is averaged over the row's seeds and images are "
              f"resampled with replacement ({boot['n_boot']} percentile-bootstrap replicates, seed {boot['seed']}).",
              "- Paired differences: both rows pooled over their seeds, scored on the same resampled images in "
              "every replicate, each rate computed as numerator / denominator on that resample (e.g. miss@1 "
              "over the malignant truths drawn). \"effect\" only when the CI excludes 0; otherwise "
              f"\"{NO_EFFECT}\".",
              "- Seed-paired A − B: the per-seed differences for seed numbers both rows share (with ≥ 2 such "
              "seeds): mean ± sd and range, as a view of training noise; not part of the CI.",
              "- ↓: lower is better (a positive difference means A misses more). — = undefined or not available."]
    return "\n".join(lines) + "\n"
