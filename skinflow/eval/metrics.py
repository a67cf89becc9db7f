"""Clinically grounded diagnosis metrics, overall and per Fitzpatrick group, with bootstrap CIs.

Every metric is a ratio of sums of per-image numerators and denominators (``METRICS``), computed
from the table ``map_predictions`` returns. Definitions (``truth`` = the ``label`` column, the
candidate list = ``ranked_labels`` with repeated canonical labels dropped after their first
occurrence, OOV items keeping their slot; ``top1`` = the canonical label of the rank-1 item, None
when the output is unparseable, the list empty or the first item out of vocabulary):

* ``top{1,k}_exact``: ``truth`` is among the first 1 / k candidates (string equality).
* ``top{1,k}_grounded``: some candidate among the first 1 / k is ``space.equivalent`` to truth.
* ``hierarchical_{nine,three}``: ``top1`` lies in the truth's nine / three-partition group.
* ``malignant_miss_at1``: truth malignant and ``top1`` not malignant - unparseable, empty and OOV
  rank-1 outputs are misses. Denominator: images with a malignant truth.
* ``malignant_miss_at{k}``: truth malignant and no malignant candidate among the first k.
* ``dangerous_error_rate``: truth malignant and ``top1`` is an in-vocabulary label that is not
  malignant (benign or non-neoplastic in Fitzpatrick17k). A subset of miss@1: the difference is
  exactly the malignant images whose output was unparseable, empty or OOV at rank 1, i.e. a miss
  that would reach a clinician as "no answer" rather than as a confident benign answer.
* ``over_call_rate``: truth in the taxonomy and not malignant, ``top1`` malignant.
* ``format_compliance``: ``parse_ok`` over all images. ``oov_rate``: OOV items / listed items
  (item level). ``mean_list_length``: listed items per parseable output, counted as written
  (two aliases of one label count twice here; not a rate).

Top-k denominators are all images, including unparseable ones (counted as misses) and truths
outside the taxonomy: those can never hit (canonical labels are taxonomy labels by construction),
are hierarchical misses, are excluded from the safety denominators (their malignancy is unknown)
and are counted in ``truth_out_of_taxonomy``. A rate whose denominator is empty is ``None`` (JSON
``null``), never 0 or NaN.

``k = min(6, n_classes)``: on a label space with six classes or fewer a top-6 list could name every
class and "top-6" would measure list length, not diagnosis. So a 3-class space reports ``top3_*``
and ``malignant_miss_at3`` (names carry the k they were computed with; the JSON records ``k`` and
``n_classes``), while Fitzpatrick17k and SkinSynth keep ``top6_*``.

CIs: percentile bootstrap over images. ``scipy.stats.bootstrap`` would resample once per metric
and chokes on replicates with an empty denominator; instead one seeded numpy stream draws image
indices, turns them into per-image resampling counts and scores every metric at once as
``counts @ numerators / counts @ denominators``. Replicates with an empty denominator are dropped
from that metric's percentile (a conditional bootstrap). Rows are sorted by ``image_id`` first,
so CIs depend on the seed and the data, not on row order. Each group is resampled separately.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from skinflow.captions.parser import MAX_DIAGNOSES
from skinflow.eval.equivalence import LabelSpace
from skinflow.eval.predictions import FITZPATRICK_GROUPS, fitzpatrick_group
from skinflow.io import write_csv, write_json

K = MAX_DIAGNOSES  # Top-6: the parser caps lists at six diagnoses
UNPARSED = "<oov/unparsed>"


def effective_k(n_classes: int) -> int:
    """Top-k depth on a label space: 6, or the number of classes when there are fewer."""
    return max(1, min(K, int(n_classes)))


def metric_definitions(k: int = K) -> dict[str, tuple[str, str]]:
    """metric -> (numerator column, denominator column) of ``image_indicators``; order = report order."""
    return {
        "top1_exact": ("top1_exact", "all"),
        f"top{k}_exact": (f"top{k}_exact", "all"),
        "top1_grounded": ("top1_grounded", "all"),
        f"top{k}_grounded": (f"top{k}_grounded", "all"),
        "hierarchical_nine": ("nine_hit", "all"),
        "hierarchical_three": ("three_hit", "all"),
        "malignant_miss_at1": ("miss_at1", "truth_malignant"),
        f"malignant_miss_at{k}": (f"miss_at{k}", "truth_malignant"),
        "dangerous_error_rate": ("dangerous_error", "truth_malignant"),
        "over_call_rate": ("over_call", "truth_non_malignant"),
        "format_compliance": ("parse_ok", "all"),
        "oov_rate": ("n_oov", "n_items"),
        "mean_list_length": ("n_items", "parse_ok"),
    }


METRICS = metric_definitions(K)  # the names on label spaces with six classes or more
RATES = tuple(m for m in METRICS if m != "mean_list_length")  # the ones bounded to [0, 1]


def _as_list(value: Any) -> list[Any]:
    # Lists come back from parquet as numpy arrays; a missing cell is an empty list.
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return []
    return [None if (isinstance(v, float) and math.isnan(v)) else v for v in value]


def candidates(labels: Any, k: int = K) -> list[str | None]:
    """First ``k`` candidates: a canonical label repeated (two aliases of one diagnosis) counts
    once and takes no extra slot; each OOV item stays as its own wrong guess."""
    out: list[str | None] = []
    seen: set[str] = set()
    for label in _as_list(labels):
        if label is None or label not in seen:
            out.append(label)
            if label is not None:
                seen.add(label)
        if len(out) == k:
            break
    return out


def first_malignant_rank(cands: Sequence[str | None], is_malignant: Callable[[str], Any]) -> int | None:
    """1-based rank of the first malignant candidate in a ``candidates`` list, None when there is none.

    The one definition behind ``malignant_miss_at{1,k}`` (rank != 1 / rank is None),
    ``dangerous_error_rate``, ``over_call_rate`` (rank == 1) and the Stage II safety reward. OOV
    items (None) are never malignant; ``is_malignant`` is called only on canonical labels.
    """
    for rank, label in enumerate(cands, 1):
        if label is not None and is_malignant(label):
            return rank
    return None


def _first(value: Any) -> Any:
    # A taxonomy listing one label twice (HAM10000's akiec/ak codes) makes LabelSpace lookups
    # return a Series; the rows agree, so take the first rather than crash on an ambiguous bool.
    return value.iloc[0] if isinstance(value, pd.Series) else value


def image_indicators(mapped: pd.DataFrame, space: LabelSpace, k: int | None = None) -> pd.DataFrame:
    """Per-image numerator/denominator columns for ``metric_definitions(k)`` (aligned with
    ``mapped``); ``k`` defaults to ``effective_k(space.n_classes)``."""
    k = effective_k(space.n_classes) if k is None else k
    labels = set(space.labels)
    nine = {label: _first(space.nine(label)) for label in labels}
    three = {label: _first(space.three(label)) for label in labels}
    malignant = {label: bool(_first(space.is_malignant(label))) for label in labels}
    truth = [t if isinstance(t, str) else None for t in mapped["label"]]
    lists = [candidates(v, k) for v in mapped["ranked_labels"]]
    top1 = [c[0] if c else None for c in lists]

    def arr(values: Any) -> np.ndarray:
        return np.fromiter(values, dtype=bool, count=len(truth))

    in_tax = arr(t in labels for t in truth)
    truth_mal = in_tax & arr(malignant.get(t, False) for t in truth)
    top1_in_vocab = arr(p in labels for p in top1)
    first_mal = [first_malignant_rank(cl, malignant.get) for cl in lists]
    top1_mal = arr(r == 1 for r in first_mal)
    any_mal = arr(r is not None for r in first_mal)
    eq = space.equivalent
    out = pd.DataFrame({
        "all": np.ones(len(truth), dtype=bool),
        "parse_ok": mapped["parse_ok"].to_numpy(dtype=bool),
        # in_tax guards against None == None and truths outside the taxonomy ever hitting.
        "top1_exact": in_tax & arr(p == t for p, t in zip(top1, truth)),
        f"top{k}_exact": in_tax & arr(t in cl for cl, t in zip(lists, truth)),
        "top1_grounded": in_tax & arr(eq(p, t) for p, t in zip(top1, truth)),
        f"top{k}_grounded": in_tax & arr(any(eq(c, t) for c in cl) for cl, t in zip(lists, truth)),
        "nine_hit": in_tax & top1_in_vocab & arr(nine.get(p) == nine.get(t) for p, t in zip(top1, truth)),
        "three_hit": in_tax & top1_in_vocab & arr(three.get(p) == three.get(t) for p, t in zip(top1, truth)),
        "truth_in_taxonomy": in_tax,
        "truth_malignant": truth_mal,
        "truth_non_malignant": in_tax & ~truth_mal,
        "miss_at1": truth_mal & ~top1_mal,
        f"miss_at{k}": truth_mal & ~any_mal,
        "dangerous_error": truth_mal & top1_in_vocab & ~top1_mal,
        "over_call": in_tax & ~truth_mal & top1_mal,
        "n_items": mapped["n_items"].to_numpy(dtype=int),
        "n_oov": mapped["n_oov"].to_numpy(dtype=int),
    }, index=mapped.index)
    out["top1"] = pd.Series(top1, index=mapped.index, dtype=object)  # keep None, not NaN
    return out


def ratio_or_nan(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den elementwise, NaN where den is 0."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def bootstrap_ratios(num: np.ndarray, den: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """``n_boot x columns`` replicates of ``sum num / sum den`` over resampled images (rows of
    ``num``/``den``); every column of one replicate sees the same resample. NaN = empty denominator."""
    n, m = num.shape
    reps = np.full((n_boot, m), np.nan)
    if n == 0:
        return reps
    chunk = max(1, 4_000_000 // n)  # bounds the (replicates x images) count matrix to ~32 MB
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        idx = rng.integers(0, n, size=(b, n)) + (np.arange(b) * n)[:, None]
        counts = np.bincount(idx.ravel(), minlength=b * n).reshape(b, n).astype(float)
        reps[start:start + b] = ratio_or_nan(counts @ num, counts @ den)  # integer-valued floats: exact
    return reps


def percentile_ci(reps: np.ndarray, ci: float) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval per column; replicates with an empty denominator are dropped (a
    conditional bootstrap); NaN where none is defined."""
    alpha = (1 - ci) / 2 * 100
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN column -> NaN, handled by callers
        low, high = np.nanpercentile(reps, [alpha, 100 - alpha], axis=0)
    return low, high


def _opt(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def _summarise(ind: pd.DataFrame, definitions: dict[str, tuple[str, str]], n_boot: int,
               rng: np.random.Generator, ci: float) -> dict:
    num = ind[[n for n, _ in definitions.values()]].to_numpy(dtype=float)
    den = ind[[d for _, d in definitions.values()]].to_numpy(dtype=float)
    tot_num, tot_den = num.sum(axis=0), den.sum(axis=0)
    low = high = np.full(len(definitions), np.nan)
    if n_boot > 0 and len(ind) > 0:
        low, high = percentile_ci(bootstrap_ratios(num, den, n_boot, rng), ci)
    out = {}
    for j, name in enumerate(definitions):
        defined = tot_den[j] > 0
        out[name] = {"value": float(tot_num[j] / tot_den[j]) if defined else None,
                     "ci_low": _opt(low[j]) if defined else None,
                     "ci_high": _opt(high[j]) if defined else None,
                     "n": int(tot_den[j])}
    return out


def _sorted(mapped: pd.DataFrame) -> pd.DataFrame:
    ordered = mapped.sort_values("image_id", key=lambda s: s.astype(str), kind="mergesort")
    return ordered.reset_index(drop=True)


def _groups(mapped: pd.DataFrame) -> pd.Series:
    if "fitzpatrick_group" in mapped.columns:
        return mapped["fitzpatrick_group"]
    return mapped["fitzpatrick_scale"].map(fitzpatrick_group)


def compute_metrics(mapped: pd.DataFrame, space: LabelSpace, n_boot: int = 1000, seed: int = 0,
                    ci: float = 0.95) -> dict[str, Any]:
    """All ``metric_definitions(k)`` overall and per Fitzpatrick group, ``k = effective_k(n_classes)``
    (JSON-ready; see the module docstring).

    ``{"overall": {metric: {"value", "ci_low", "ci_high", "n"}}, "by_fitzpatrick": {group: ...},
    "n_images", "n_images_by_fitzpatrick", "truth_out_of_taxonomy", "parse_errors",
    "label_space_version", "mapping_rules", "n_classes", "k", "k_max", "bootstrap"}``. ``n`` is the denominator: images, except listed
    items for ``oov_rate`` and parseable outputs for ``mean_list_length``. ``n_boot=0`` skips CIs.
    """
    if not 0 < ci < 1:
        raise ValueError(f"ci must be in (0, 1), got {ci}")
    if n_boot < 0:
        raise ValueError(f"n_boot must be >= 0, got {n_boot}")
    mapped = _sorted(mapped)
    k = effective_k(space.n_classes)
    definitions = metric_definitions(k)
    ind = image_indicators(mapped, space, k)
    groups = _groups(mapped).to_numpy()
    # One independent stream per block, so adding a group never shifts another's CI.
    overall = _summarise(ind, definitions, n_boot, np.random.default_rng([seed, 0]), ci)
    by_group = {g: _summarise(ind[groups == g], definitions, n_boot, np.random.default_rng([seed, i + 1]), ci)
                for i, g in enumerate(FITZPATRICK_GROUPS)}
    codes = mapped["parse_error"] if "parse_error" in mapped.columns else pd.Series(None, index=mapped.index)
    errors = codes[~ind["parse_ok"]].fillna("UNKNOWN").value_counts()
    return {
        "overall": overall,
        "by_fitzpatrick": by_group,
        "n_images": int(len(mapped)),
        "n_images_by_fitzpatrick": {g: int((groups == g).sum()) for g in FITZPATRICK_GROUPS},
        "truth_out_of_taxonomy": int((~ind["truth_in_taxonomy"]).sum()),
        "parse_errors": {str(code): int(n) for code, n in sorted(errors.items())},
        "label_space_version": space.version,
        "mapping_rules": space.rules_version,
        "n_classes": space.n_classes,
        "k": k,
        "k_max": K,
        "bootstrap": {"method": "percentile, images resampled with replacement", "n_boot": int(n_boot),
                      "seed": int(seed), "ci": float(ci)},
    }


# ---- plots and reports --------------------------------------------------------------------------


def confusion_matrix(mapped: pd.DataFrame, space: LabelSpace) -> pd.DataFrame:
    """Long format for a DVC confusion plot: one row per image, ``image_id, actual, predicted``.

    ``predicted`` is the rank-1 canonical label, or ``<oov/unparsed>`` when the output was
    unparseable, empty or OOV at rank 1. ``confusion_counts`` pivots it to truth x prediction.
    """
    mapped = _sorted(mapped)
    top1 = image_indicators(mapped, space)["top1"]
    return pd.DataFrame({
        "image_id": mapped["image_id"].to_numpy(),
        "actual": [t if isinstance(t, str) else UNPARSED for t in mapped["label"]],
        "predicted": [p if isinstance(p, str) else UNPARSED for p in top1],
        "fitzpatrick_group": _groups(mapped).to_numpy(),
    })


def confusion_counts(confusion: pd.DataFrame, space: LabelSpace) -> pd.DataFrame:
    """Wide truth x rank-1 count table over every label of the space plus ``<oov/unparsed>``."""
    columns = [*space.labels, UNPARSED]
    rows = list(dict.fromkeys([*space.labels, *sorted(set(confusion["actual"]) - set(space.labels))]))
    table = pd.crosstab(confusion["actual"], confusion["predicted"])
    return table.reindex(index=rows, columns=columns, fill_value=0).rename_axis(
        index="actual", columns="predicted")


def write_confusion(confusion: pd.DataFrame, path: str | Path) -> None:
    """Atomically write the long table: ``.json`` -> a list of records (DVC plots), else CSV."""
    if Path(path).suffix.lower() == ".json":
        write_json(path, confusion.to_dict(orient="records"))
    else:
        write_csv(path, confusion)


def _blocks(metrics: dict[str, Any]) -> dict[str, dict]:
    return {"overall": metrics["overall"], **metrics["by_fitzpatrick"]}


def per_group_table(metrics: dict[str, Any]) -> pd.DataFrame:
    """Long ``group, metric, value, ci_low, ci_high, n`` rows (``overall`` first) for DVC bar plots."""
    rows = [{"group": group, "metric": name, **cell}
            for group, block in _blocks(metrics).items() for name, cell in block.items()]
    return pd.DataFrame(rows, columns=["group", "metric", "value", "ci_low", "ci_high", "n"])


def _cell(cell: dict[str, Any]) -> str:
    if cell["value"] is None:
        return "—"
    if cell["ci_low"] is None:
        return f"{cell['value']:.3f}"
    return f"{cell['value']:.3f} [{cell['ci_low']:.3f}, {cell['ci_high']:.3f}]"


def metrics_markdown(metrics: dict[str, Any]) -> str:
    """Markdown table: one row per metric, ``value [CI]`` overall and per Fitzpatrick group."""
    blocks = _blocks(metrics)
    counts = {"overall": metrics["n_images"], **metrics.get("n_images_by_fitzpatrick", {})}
    header = ["metric", *(f"{g} (n={counts[g]})" if g in counts else g for g in blocks)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    names = list(dict.fromkeys(name for block in blocks.values() for name in block))
    for name in names:
        cells = [_cell(block[name]) if name in block else "—" for block in blocks.values()]
        lines.append("| " + " | ".join([name, *cells]) + " |")
    ci = metrics.get("bootstrap", {})
    if ci.get("n_boot"):
        lines.append(f"\nValues with {ci['ci']:.0%} percentile bootstrap CIs ({ci['n_boot']} resamples "
                     f"of images, seed {ci['seed']}); — = empty denominator. "
                     f"Label space {metrics['label_space_version']}.")
    k, k_max = metrics.get("k"), metrics.get("k_max")
    if k is not None and k_max is not None and k < k_max:
        lines.append(f"\nTop-k with k = min({k_max}, n_classes) = {k}: the label space has "
                     f"{metrics.get('n_classes')} classes, so top-{k_max} would count listing every class.")
    return "\n".join(lines) + "\n"
