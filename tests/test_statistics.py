"""evaluation.statistics: hand-computed calibration and threshold cases, scikit-learn as the oracle
of the point metrics, and properties of the bootstrap (coverage of the point estimate, width
against sample size, determinism, cluster resampling of duplicates, paired differences)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, cohen_kappa_score, roc_auc_score

from evaluation.metrics import REFERABLE_GRADE
from evaluation.statistics import (
    METRICS,
    _Scorer,
    binary_ece,
    bootstrap_intervals,
    expected_calibration_error,
    fold_spread,
    paired_difference,
    referable_labels,
    referable_probability,
    reliability_bins,
    sensitivity_specificity,
    summary_metrics,
    threshold_at_specificity,
)

# Four images, four classes; confidence = max probability, correct = argmax == label.
HAND_PROBS = np.array(
    [
        [0.40, 0.30, 0.20, 0.10],  # confidence 0.4, argmax 0 == label 0: correct   -> bin [0, .5)
        [0.10, 0.20, 0.30, 0.40],  # confidence 0.4, argmax 3 != label 0: wrong     -> bin [0, .5)
        [0.90, 0.05, 0.03, 0.02],  # confidence 0.9, argmax 0 == label 0: correct   -> bin [.5, 1]
        [0.10, 0.70, 0.10, 0.10],  # confidence 0.7, argmax 1 != label 0: wrong     -> bin [.5, 1]
    ]
)
HAND_LABELS = np.array([0, 0, 0, 0])


def synthetic(n: int, seed: int, signal: float = 2.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(grades, predicted, probs)``: 5 grades, softmax of noise plus ``signal`` on the truth."""
    rng = np.random.default_rng(seed)
    grades = rng.integers(0, 5, n)
    logits = rng.normal(0.0, 1.0, (n, 5))
    logits[np.arange(n), grades] += signal
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return grades, probs.argmax(1), probs


def width(interval: dict) -> float:
    return interval["high"] - interval["low"]


# --------------------------------------------------------------------------------------------------
# Calibration
# --------------------------------------------------------------------------------------------------


def test_ece_hand_case():
    # bin [0, .5): 2 images, mean confidence 0.4, accuracy 1/2 -> gap 0.1, weight 2/4 -> 0.05
    # bin [.5, 1]: 2 images, mean confidence 0.8, accuracy 1/2 -> gap 0.3, weight 2/4 -> 0.15
    assert expected_calibration_error(HAND_PROBS, HAND_LABELS, n_bins=2) == pytest.approx(0.20)
    # One bin: mean confidence 0.6, accuracy 0.5.
    assert expected_calibration_error(HAND_PROBS, HAND_LABELS, n_bins=1) == pytest.approx(0.10)


def test_ece_is_zero_when_confidence_matches_accuracy():
    probs = np.array([[0.5, 0.5, 0.0], [0.5, 0.5, 0.0]])  # argmax 0 on the tie
    assert expected_calibration_error(probs, [0, 1], n_bins=4) == pytest.approx(0.0)


def test_reliability_bins_hand_case():
    bins = reliability_bins(HAND_PROBS, HAND_LABELS, n_bins=4)
    np.testing.assert_allclose(bins["lower"], [0.0, 0.25, 0.5, 0.75])
    np.testing.assert_allclose(bins["upper"], [0.25, 0.5, 0.75, 1.0])
    np.testing.assert_array_equal(bins["count"], [0, 2, 1, 1])
    # Empty bin: NaN; [.25, .5): confidences 0.4, 0.4, one correct; [.5, .75): 0.7 wrong;
    # [.75, 1]: 0.9 correct.
    np.testing.assert_allclose(bins["confidence"], [np.nan, 0.4, 0.7, 0.9])
    np.testing.assert_allclose(bins["accuracy"], [np.nan, 0.5, 0.0, 1.0])
    # The ECE is the count-weighted gap of these bins: (2 * 0.1 + 0.7 + 0.1) / 4.
    assert expected_calibration_error(HAND_PROBS, HAND_LABELS, n_bins=4) == pytest.approx(0.25)


def test_confidence_one_falls_in_last_bin():
    bins = reliability_bins(np.array([[1.0, 0.0], [0.5, 0.5]]), [0, 1], n_bins=2)
    np.testing.assert_array_equal(bins["count"], [0, 2])  # 0.5 opens the upper bin [.5, 1]


def test_binary_ece_hand_case():
    p = [0.1, 0.3, 0.8, 0.6]
    positive = [0, 1, 1, 1]
    # bin [0, .5): mean p 0.2, fraction positive 1/2 -> gap 0.3, weight 1/2 -> 0.15
    # bin [.5, 1]: mean p 0.7, fraction positive 1   -> gap 0.3, weight 1/2 -> 0.15
    assert binary_ece(p, positive, n_bins=2) == pytest.approx(0.30)
    # p = 0 and p = 1 are binned (first and last bin) and perfectly calibrated here.
    assert binary_ece([0.0, 1.0, 0.5, 0.5], [False, True, True, False], n_bins=3) == 0.0


# --------------------------------------------------------------------------------------------------
# Referable operating point
# --------------------------------------------------------------------------------------------------


def test_referable_probability_and_labels():
    probs = np.array([[0.5, 0.2, 0.1, 0.1, 0.1], [0.0, 0.0, 0.0, 0.0, 1.0]])
    np.testing.assert_allclose(referable_probability(probs), [0.3, 1.0])
    np.testing.assert_array_equal(referable_labels([0, 1, 2, 3, 4]), [0, 0, 1, 1, 1])
    assert REFERABLE_GRADE == 2
    with pytest.raises(ValueError, match="unknown grade"):
        referable_labels([0, -1])


TIE_SCORES = np.array([0.1, 0.2, 0.2, 0.4, 0.2, 0.6])
TIE_POSITIVE = np.array([0, 0, 0, 0, 1, 1], dtype=bool)  # negatives 0.1 0.2 0.2 0.4


@pytest.mark.parametrize(
    ("target", "threshold", "sensitivity", "specificity"),
    [
        (0.0, 0.1, 1.0, 0.0),  # lowest score: everything positive
        (0.25, 0.2, 1.0, 0.25),  # only 0.1 < 0.2; the tied 0.2s are all called positive
        (0.5, 0.4, 0.5, 0.75),  # 0.2 would give 1/4: the tie jumps to 3/4 at 0.4
        (0.75, 0.4, 0.5, 0.75),
        (0.8, 0.6, 0.5, 1.0),
        (1.0, 0.6, 0.5, 1.0),
    ],
)
def test_threshold_at_specificity_with_ties(target, threshold, sensitivity, specificity):
    t = threshold_at_specificity(TIE_SCORES, TIE_POSITIVE, target)
    assert t == threshold
    assert sensitivity_specificity(TIE_SCORES, TIE_POSITIVE, t) == (sensitivity, specificity)


def test_threshold_above_every_score_when_a_negative_scores_highest():
    t = threshold_at_specificity([0.3, 0.5, 0.9], [0, 1, 0], specificity=1.0)
    assert 0.9 < t < 0.9 + 1e-12
    assert sensitivity_specificity([0.3, 0.5, 0.9], [0, 1, 0], t) == (0.0, 1.0)


def test_threshold_is_the_smallest_that_reaches_the_target():
    rng = np.random.default_rng(3)
    scores = rng.random(200).round(2)  # many ties
    positive = rng.random(200) < 0.3
    for target in (0.5, 0.8, 0.9, 0.95):
        t = threshold_at_specificity(scores, positive, target)
        assert sensitivity_specificity(scores, positive, t)[1] >= target
        below = np.unique(scores)[np.unique(scores) < t]
        if below.size:
            assert sensitivity_specificity(scores, positive, below[-1])[1] < target


def test_sensitivity_specificity_undefined_and_bad_input():
    sens, spec = sensitivity_specificity([0.2, 0.7], [0, 0], 0.5)
    assert math.isnan(sens) and spec == 0.5
    with pytest.raises(ValueError, match="at least one negative"):
        threshold_at_specificity([0.2, 0.7], [1, 1])
    with pytest.raises(ValueError, match="entries"):
        sensitivity_specificity([0.2, 0.7], [1], 0.5)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        sensitivity_specificity([0.2, 1.7], [1, 0], 0.5)


# --------------------------------------------------------------------------------------------------
# Point estimates
# --------------------------------------------------------------------------------------------------


def test_summary_metrics_match_sklearn():
    grades, _, probs = synthetic(300, seed=1, signal=1.0)
    predicted = np.random.default_rng(2).integers(0, 5, 300)  # a decoding other than the argmax
    metrics = summary_metrics(grades, predicted, probs, referable_threshold=0.6)
    assert set(metrics) == set(METRICS)
    assert metrics["qwk"] == pytest.approx(
        cohen_kappa_score(grades, predicted, weights="quadratic"), abs=1e-12
    )
    assert metrics["accuracy"] == pytest.approx(accuracy_score(grades, predicted), abs=1e-12)
    assert metrics["macro_auc"] == pytest.approx(
        roc_auc_score(grades, probs, multi_class="ovr", average="macro"), abs=1e-12
    )
    referable = grades >= 2
    p_referable = probs[:, 2:].sum(1)
    assert metrics["referable_auc"] == pytest.approx(
        roc_auc_score(referable, p_referable), abs=1e-12
    )
    assert metrics["sensitivity"] == pytest.approx(np.mean(p_referable[referable] >= 0.6))
    assert metrics["specificity"] == pytest.approx(np.mean(p_referable[~referable] < 0.6))
    assert metrics["ece"] == expected_calibration_error(probs, grades)


def test_macro_auc_skips_classes_absent_from_the_reference():
    grades, predicted, probs = synthetic(200, seed=4)
    grades = np.where(grades == 3, 4, grades)  # no grade 3
    metrics = summary_metrics(grades, predicted, probs, 0.5)
    expected = np.mean([roc_auc_score(grades == c, probs[:, c]) for c in (0, 1, 2, 4)])
    assert metrics["macro_auc"] == pytest.approx(expected, abs=1e-12)
    only_zero = summary_metrics(np.zeros(3, int), [0, 0, 1], probs[:3], 0.5)
    assert math.isnan(only_zero["macro_auc"]) and math.isnan(only_zero["referable_auc"])
    assert math.isnan(only_zero["sensitivity"])


@pytest.mark.parametrize("tied", [False, True])
def test_resample_scorer_equals_summary_metrics_of_the_resampled_images(tied):
    # The bootstrap scores resamples as image weights; that must equal recomputing the metrics
    # on the resampled images (duplicates included), also when a resample lacks a grade, with
    # scores tied across images (AUC ties count 1/2), and on the referable threshold itself.
    grades, _, probs = synthetic(40, seed=5, signal=1.0)
    if tied:  # four distinct probability rows only
        probs = probs[np.random.default_rng(8).integers(0, 4, 40)]
    predicted = np.random.default_rng(6).integers(0, 5, 40)
    threshold = probs[0, 2:].sum()  # image 0 sits on the threshold: called referable
    scorer = _Scorer(grades, predicted, probs, threshold)
    rng = np.random.default_rng(7)
    agreeing = int(np.flatnonzero(predicted == grades)[0])
    for index in (rng.integers(0, 40, 40), rng.integers(0, 40, 12), [0, 0, 3], [agreeing] * 2):
        weights = np.bincount(index, minlength=40)[None].astype(float)
        fast = {name: float(values[0]) for name, values in scorer(weights).items()}
        slow = summary_metrics(grades[index], predicted[index], probs[index], threshold)
        for name in METRICS:
            assert fast[name] == pytest.approx(slow[name], abs=1e-9, nan_ok=True), name


@pytest.mark.parametrize(
    ("probs", "message"),
    [
        (np.full((2, 5), 0.3), "sum to 1"),
        (np.full((3, 5), 0.2), "3 rows"),
        (np.full((2, 2), 0.5), "at least 3"),
        (np.zeros((0, 5)), "N >= 1"),
    ],
)
def test_summary_metrics_rejects_bad_input(probs, message):
    with pytest.raises(ValueError, match=message):
        summary_metrics([0, 1], [0, 1], probs, 0.5)


def test_grades_outside_the_scale_are_rejected():
    with pytest.raises(ValueError, match="outside 0..4"):
        summary_metrics([0, 5], [0, 1], np.full((2, 5), 0.2), 0.5)
    with pytest.raises(ValueError, match="n_bins"):
        expected_calibration_error(HAND_PROBS, HAND_LABELS, n_bins=0)


# --------------------------------------------------------------------------------------------------
# Bootstrap intervals
# --------------------------------------------------------------------------------------------------


def test_bootstrap_intervals_contain_the_point_estimate():
    grades, predicted, probs = synthetic(300, seed=8)
    intervals = bootstrap_intervals(grades, predicted, probs, 0.5, n_resamples=500)
    point = summary_metrics(grades, predicted, probs, 0.5)
    assert set(intervals) == set(METRICS)
    for name, interval in intervals.items():
        assert interval["value"] == point[name]
        assert interval["low"] < interval["value"] < interval["high"], name
        assert interval["n_valid"] == 500


def test_bootstrap_is_narrower_with_more_images():
    small = bootstrap_intervals(*synthetic(100, seed=9), 0.5, n_resamples=500)
    large = bootstrap_intervals(*synthetic(1600, seed=9), 0.5, n_resamples=500)
    for name in ("qwk", "accuracy", "referable_auc", "sensitivity"):
        # 16 x the images: about 1/4 of the width.
        assert width(large[name]) < 0.5 * width(small[name]), name


def test_bootstrap_is_deterministic_for_a_seed():
    data = synthetic(80, seed=10)
    first = bootstrap_intervals(*data, 0.5, n_resamples=200, seed=3)
    assert bootstrap_intervals(*data, 0.5, n_resamples=200, seed=3) == first
    assert bootstrap_intervals(*data, 0.5, n_resamples=200, seed=4) != first


def test_undefined_resamples_are_dropped_and_counted():
    # One referable image among 10: about a third of the resamples miss it (no referable AUC).
    grades = np.array([0, 1, 0, 1, 0, 1, 0, 1, 0, 3])
    probs = np.tile([0.4, 0.3, 0.1, 0.1, 0.1], (10, 1))
    probs[-1] = [0.1, 0.1, 0.2, 0.3, 0.3]
    intervals = bootstrap_intervals(grades, grades, probs, 0.5, n_resamples=400)
    n_valid = intervals["referable_auc"]["n_valid"]
    assert 0.5 * 400 < n_valid < 0.8 * 400  # expected 400 * (1 - 0.9**10) = 261
    assert intervals["referable_auc"]["low"] == intervals["referable_auc"]["high"] == 1.0
    assert intervals["accuracy"]["n_valid"] == 400


def test_group_bootstrap_of_duplicates_matches_the_deduplicated_data():
    grades, predicted, probs = synthetic(200, seed=11, signal=1.5)
    double = np.repeat(np.arange(200), 2)  # every image photographed twice, identically
    dedup = bootstrap_intervals(grades, predicted, probs, 0.5, n_resamples=1000, seed=1)
    grouped = bootstrap_intervals(
        grades[double],
        predicted[double],
        probs[double],
        0.5,
        groups=[f"eye{i}" for i in double],
        n_resamples=1000,
        seed=2,
    )
    naive = bootstrap_intervals(
        grades[double], predicted[double], probs[double], 0.5, n_resamples=1000, seed=3
    )
    names = ("qwk", "accuracy", "macro_auc", "referable_auc", "sensitivity", "specificity")
    grouped_ratio = np.mean([width(grouped[n]) / width(dedup[n]) for n in names])
    naive_ratio = np.mean([width(naive[n]) / width(dedup[n]) for n in names])
    assert grouped_ratio == pytest.approx(1.0, abs=0.12)
    assert naive_ratio == pytest.approx(1 / math.sqrt(2), abs=0.12)  # falsely confident
    for name in names:
        assert grouped[name]["value"] == pytest.approx(dedup[name]["value"], abs=1e-12)


# --------------------------------------------------------------------------------------------------
# Paired differences
# --------------------------------------------------------------------------------------------------


def test_identical_rows_give_zero_difference_and_p_one():
    grades, predicted, probs = synthetic(100, seed=13)
    result = paired_difference(
        grades, predicted, probs, predicted.copy(), probs.copy(), 0.5, 0.5, n_resamples=300
    )
    for name, entry in result.items():
        assert entry["difference"] == entry["low"] == entry["high"] == 0.0, name
        assert entry["p_value"] == 1.0


def test_a_clearly_better_row_has_a_small_p_value():
    grades, good_predicted, good_probs = synthetic(200, seed=14, signal=3.0)
    _, bad_predicted, bad_probs = synthetic(200, seed=15, signal=3.0)  # another image's output
    result = paired_difference(
        grades, good_predicted, good_probs, bad_predicted, bad_probs, 0.5, 0.5, n_resamples=500
    )
    for name in ("qwk", "accuracy", "macro_auc", "referable_auc"):
        entry = result[name]
        assert entry["difference"] > 0 and entry["low"] > 0, name
        assert entry["p_value"] < 0.01
        assert entry["p_value"] >= 1 / (entry["n_valid"] + 1)
    point_a = summary_metrics(grades, good_predicted, good_probs, 0.5)
    point_b = summary_metrics(grades, bad_predicted, bad_probs, 0.5)
    assert result["ece"]["difference"] == pytest.approx(point_a["ece"] - point_b["ece"])


def test_paired_difference_is_two_sided():
    grades, good_predicted, good_probs = synthetic(200, seed=14, signal=3.0)
    _, bad_predicted, bad_probs = synthetic(200, seed=15, signal=3.0)
    swapped = paired_difference(
        grades, bad_predicted, bad_probs, good_predicted, good_probs, 0.5, 0.5, n_resamples=500
    )
    assert swapped["qwk"]["high"] < 0 and swapped["qwk"]["p_value"] < 0.01


def test_paired_difference_rejects_mismatched_rows():
    grades, predicted, probs = synthetic(20, seed=16)
    with pytest.raises(ValueError, match="same images"):
        paired_difference(grades, predicted, probs, predicted[:19], probs[:19], 0.5, 0.5)
    with pytest.raises(ValueError, match="same images"):
        paired_difference(grades[:19], predicted, probs, predicted, probs, 0.5, 0.5)
    with pytest.raises(ValueError, match="groups"):
        paired_difference(grades, predicted, probs, predicted, probs, 0.5, 0.5, groups=[0, 1])


# --------------------------------------------------------------------------------------------------
# Per-fold spread
# --------------------------------------------------------------------------------------------------


def test_fold_spread():
    spread = fold_spread([1.0, 2.0, 3.0, 4.0])
    assert spread["mean"] == 2.5 and spread["min"] == 1.0 and spread["max"] == 4.0
    assert spread["sd"] == pytest.approx(math.sqrt(5 / 3))  # squared deviations 5 / (n - 1)
    assert spread["n"] == 4
    single = fold_spread([0.7, float("nan")])
    assert single["n"] == 1 and single["mean"] == 0.7 and math.isnan(single["sd"])
    with pytest.raises(ValueError, match="non-empty"):
        fold_spread([])
