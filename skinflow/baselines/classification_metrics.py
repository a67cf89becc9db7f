"""Closed-set classification metrics computed from class probabilities and integer labels.

Inputs everywhere: ``probs`` of shape ``(n, C)`` (row ``i`` = predicted distribution of image ``i``
over the ``C`` classes of the label space, columns in label-space order) and ``labels`` of shape
``(n,)`` holding the true column index. The prediction is the arg-max column (ties go to the lowest
index, as ``numpy.argmax``). sklearn computes F1, balanced accuracy and each ROC AUC; ECE has no
sklearn implementation and is written out here.

Classes missing from the test set:

* macro-F1 averages over the classes that occur as a truth or as a prediction (sklearn's default
  label set); a class nobody has and nobody predicts says nothing about the classifier.
* balanced accuracy is the mean recall over classes present in the truth (sklearn's definition).
* macro one-vs-rest AUC is defined per class only when the test set has at least one positive and
  one negative for it; other classes are skipped and listed in ``auc_skipped_classes`` rather than
  given an arbitrary 0.5. The macro value is the unweighted mean over scored classes (``None``
  when none can be scored).
"""

from __future__ import annotations

import warnings
from typing import Any, Sequence

import numpy as np
from sklearn.metrics import balanced_accuracy_score, f1_score, roc_auc_score


def _check(probs: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    probs = np.asarray(probs, dtype=float)
    labels = np.asarray(labels)
    if probs.ndim != 2:
        raise ValueError(f"probs must be (n, C), got shape {probs.shape}")
    if labels.shape != (probs.shape[0],):
        raise ValueError(f"labels must be ({probs.shape[0]},), got shape {labels.shape}")
    if probs.shape[0] == 0:
        raise ValueError("no samples")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integer class indices, got dtype {labels.dtype}")
    if labels.min() < 0 or labels.max() >= probs.shape[1]:
        raise ValueError(f"labels must lie in [0, {probs.shape[1]}), got [{labels.min()}, {labels.max()}]")
    if not np.all(np.isfinite(probs)) or probs.min() < 0:
        raise ValueError("probs must be finite and non-negative")
    return probs, labels.astype(int)


def predictions(probs: Any) -> np.ndarray:
    return np.asarray(probs, dtype=float).argmax(axis=1)


def accuracy(probs: Any, labels: Any) -> float:
    probs, labels = _check(probs, labels)
    return float(np.mean(predictions(probs) == labels))


def macro_f1(probs: Any, labels: Any) -> float:
    probs, labels = _check(probs, labels)
    return float(f1_score(labels, predictions(probs), average="macro", zero_division=0))


def balanced_accuracy(probs: Any, labels: Any) -> float:
    probs, labels = _check(probs, labels)
    with warnings.catch_warnings():
        # A prediction of a class absent from the truth is a miss (documented above), not news.
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        return float(balanced_accuracy_score(labels, predictions(probs)))


def macro_auc_ovr(probs: Any, labels: Any) -> tuple[float | None, list[int]]:
    """``(macro AUC over scorable classes or None, indices of skipped classes)``."""
    probs, labels = _check(probs, labels)
    scores, skipped = [], []
    for c in range(probs.shape[1]):
        positive = labels == c
        if positive.all() or not positive.any():
            skipped.append(c)  # AUC needs both a positive and a negative example
            continue
        scores.append(roc_auc_score(positive, probs[:, c]))
    return (float(np.mean(scores)) if scores else None), skipped


def reliability_table(probs: Any, labels: Any, n_bins: int = 15) -> list[dict[str, float]]:
    """Per non-empty confidence bin: its range, mean top-label confidence, accuracy and share of the images.

    Bin ``b`` holds confidences in ``(b/n_bins, (b+1)/n_bins]`` (a confidence of exactly 0 goes to the first
    bin): the binning of Guo et al. (2017)'s reference code, edges from linspace, right-closed."""
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    probs, labels = _check(probs, labels)
    confidence = probs.max(axis=1)
    correct = predictions(probs) == labels
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, n_bins - 1)
    return [{"bin_low": float(edges[b]), "bin_high": float(edges[b + 1]),
             "confidence": float(confidence[bins == b].mean()), "accuracy": float(correct[bins == b].mean()),
             "share": float((bins == b).mean())} for b in np.unique(bins)]


def expected_calibration_error(probs: Any, labels: Any, n_bins: int = 15) -> float:
    """Top-label ECE: sum over the non-empty bins of :func:`reliability_table` of
    ``|bin| / n * |accuracy(bin) - mean confidence(bin)|``."""
    return float(sum(r["share"] * abs(r["accuracy"] - r["confidence"]) for r in reliability_table(probs, labels, n_bins)))


def bootstrap_accuracy_ci(probs: Any, labels: Any, n_boot: int = 1000, seed: int = 0,
                          ci: float = 0.95) -> tuple[float | None, float | None]:
    """Percentile bootstrap CI of accuracy, resampling images with a seeded numpy stream."""
    if not 0 < ci < 1:
        raise ValueError(f"ci must be in (0, 1), got {ci}")
    probs, labels = _check(probs, labels)
    if n_boot <= 0:
        return None, None
    correct = (predictions(probs) == labels).astype(float)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(correct), size=(n_boot, len(correct)))
    replicates = correct[draws].mean(axis=1)
    alpha = (1 - ci) / 2 * 100
    low, high = np.percentile(replicates, [alpha, 100 - alpha])
    return float(low), float(high)


def classification_summary(probs: Any, labels: Any, class_names: Sequence[str] | None = None,
                           n_bins: int = 15, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Every metric above in one JSON-ready dict."""
    probs, labels = _check(probs, labels)
    auc, skipped = macro_auc_ovr(probs, labels)
    low, high = bootstrap_accuracy_ci(probs, labels, n_boot=n_boot, seed=seed)
    names = list(class_names) if class_names is not None else [str(c) for c in range(probs.shape[1])]
    return {
        "n": int(len(labels)),
        "accuracy": accuracy(probs, labels),
        "accuracy_ci95": [low, high],
        "macro_f1": macro_f1(probs, labels),
        "balanced_accuracy": balanced_accuracy(probs, labels),
        "macro_auc_ovr": auc,
        "auc_skipped_classes": [names[c] for c in skipped],
        "ece": expected_calibration_error(probs, labels, n_bins),
        "ece_bins": int(n_bins),
        "mean_confidence": float(probs.max(axis=1).mean()),
        "bootstrap": {"method": "percentile, images resampled with replacement", "n_boot": int(n_boot),
                      "seed": int(seed)},
    }
