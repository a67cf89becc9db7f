"""Closed-set classification metrics against hand-computed toys."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from skinflow.baselines.classification_metrics import (
    accuracy, balanced_accuracy, bootstrap_accuracy_ci, classification_summary,
    expected_calibration_error, macro_auc_ovr, macro_f1,
)

# Predictions (arg-max): 0, 1, 0, 1 against truths 0, 1, 1, 1.
PROBS = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
LABELS = np.array([0, 1, 1, 1])


def test_accuracy_f1_and_balanced_accuracy_by_hand():
    assert accuracy(PROBS, LABELS) == pytest.approx(0.75)
    # class 0: TP 1, FP 1, FN 0 -> F1 2/3; class 1: TP 2, FP 0, FN 1 -> P 1, R 2/3, F1 0.8
    assert macro_f1(PROBS, LABELS) == pytest.approx((2 / 3 + 0.8) / 2)
    # recalls: class 0 1/1, class 1 2/3
    assert balanced_accuracy(PROBS, LABELS) == pytest.approx((1 + 2 / 3) / 2)


def test_macro_f1_ignores_a_class_nobody_has_or_predicts():
    three = np.hstack([PROBS * 0.9, np.full((4, 1), 0.05)])  # a third class, never the arg-max
    assert macro_f1(three, LABELS) == pytest.approx(macro_f1(PROBS, LABELS))


def test_auc_by_hand_and_skips_a_class_absent_from_the_test_set():
    probs = np.array([[0.6, 0.3, 0.1], [0.3, 0.2, 0.5], [0.5, 0.4, 0.1], [0.2, 0.7, 0.1]])
    labels = np.array([0, 0, 1, 1])
    # class 0: positives (0.6, 0.3) vs negatives (0.5, 0.2): 3 of 4 pairs ordered -> 0.75
    # class 1: positives (0.4, 0.7) vs negatives (0.3, 0.2): 4 of 4 -> 1.0; class 2 has no positive
    auc, skipped = macro_auc_ovr(probs, labels)
    assert auc == pytest.approx((0.75 + 1.0) / 2)
    assert skipped == [2]


def test_auc_matches_sklearn_ovr_when_every_class_is_present():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(4), size=60)
    labels = np.arange(60) % 4
    auc, skipped = macro_auc_ovr(probs, labels)
    assert skipped == []
    assert auc == pytest.approx(roc_auc_score(labels, probs, multi_class="ovr", average="macro"))


def test_auc_undefined_when_no_class_has_both_positives_and_negatives():
    auc, skipped = macro_auc_ovr(np.array([[0.8, 0.2], [0.6, 0.4]]), np.array([0, 0]))
    assert auc is None and skipped == [0, 1]


def test_ece_by_hand_with_ten_bins():
    probs = np.array([[0.95, 0.05], [0.95, 0.05], [0.35, 0.65], [0.55, 0.45]])
    labels = np.array([0, 1, 1, 0])
    # (0.9, 1]: 2 images, acc 0.5, conf 0.95 -> 0.45 * 2/4; (0.6, 0.7]: acc 1, conf 0.65 -> 0.35 / 4;
    # (0.5, 0.6]: acc 1, conf 0.55 -> 0.45 / 4
    assert expected_calibration_error(probs, labels, 10) == pytest.approx(0.225 + 0.0875 + 0.1125)
    # one bin: |accuracy - mean confidence| = |0.75 - 0.775|
    assert expected_calibration_error(probs, labels, 1) == pytest.approx(0.025)


def test_ece_bins_are_right_closed():
    # A confidence of exactly 0.5 belongs to (0, 0.5], not (0.5, 1]: bins 0.5 * 1/2 + 0.9 * 1/2;
    # had it joined the upper bin the two errors would cancel to |1/2 - 0.7| = 0.2.
    probs = np.array([[0.5, 0.5], [0.9, 0.1]])
    labels = np.array([0, 1])
    assert expected_calibration_error(probs, labels, 2) == pytest.approx(0.7)


def test_ece_zero_when_confident_and_correct():
    probs = np.eye(3)[[0, 1, 2, 1]]
    assert expected_calibration_error(probs, np.array([0, 1, 2, 1])) == 0.0
    assert expected_calibration_error(probs, np.array([1, 2, 0, 0])) == pytest.approx(1.0)


def test_bootstrap_ci_is_seeded_and_brackets_the_estimate():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, 200)
    probs = np.eye(3)[np.where(rng.random(200) < 0.7, labels, (labels + 1) % 3)] * 0.8 + 0.2 / 3
    first = bootstrap_accuracy_ci(probs, labels, n_boot=500, seed=4)
    assert first == bootstrap_accuracy_ci(probs, labels, n_boot=500, seed=4)
    assert first != bootstrap_accuracy_ci(probs, labels, n_boot=500, seed=5)
    low, high = first
    assert low < accuracy(probs, labels) < high
    assert 0.05 < high - low < 0.2  # about 2 * 1.96 * sqrt(0.7 * 0.3 / 200) = 0.13
    assert bootstrap_accuracy_ci(np.eye(2), np.array([0, 1]), n_boot=50) == (1.0, 1.0)
    assert bootstrap_accuracy_ci(probs, labels, n_boot=0) == (None, None)


def test_summary_names_skipped_classes_and_is_json_ready():
    import json

    probs = np.array([[0.6, 0.3, 0.1], [0.3, 0.2, 0.5], [0.5, 0.4, 0.1], [0.2, 0.7, 0.1]])
    summary = classification_summary(probs, np.array([0, 0, 1, 1]), ["a", "b", "c"], n_bins=5, n_boot=20)
    assert summary["auc_skipped_classes"] == ["c"]
    assert summary["n"] == 4 and summary["ece_bins"] == 5
    assert summary["accuracy"] == pytest.approx(0.5)
    assert not math.isnan(summary["ece"])
    json.dumps(summary)


@pytest.mark.parametrize("probs, labels", [
    (np.array([0.5, 0.5]), np.array([0])),                 # not 2-D
    (PROBS, np.array([0, 1, 1])),                          # length mismatch
    (PROBS, np.array([0, 1, 2, 1])),                       # label out of range
    (PROBS, np.array([0.0, 1.0, 1.0, 1.0])),               # float labels
    (np.array([[0.5, np.nan]]), np.array([0])),            # NaN probability
    (np.zeros((0, 2)), np.zeros(0, dtype=int)),            # empty
])
def test_bad_inputs_raise(probs, labels):
    with pytest.raises(ValueError):
        accuracy(probs, labels)
