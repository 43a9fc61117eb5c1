"""evaluation/uncertainty.py: the calibration, interval and operating-point blocks of an evaluation."""

from __future__ import annotations

import numpy as np
import pytest

from evaluation.statistics import expected_calibration_error
from evaluation.uncertainty import uncertainty_report


def _data(n: int = 200, seed: int = 0):
    rng = np.random.default_rng(seed)
    grades = rng.integers(0, 5, n)
    logits = rng.normal(size=(n, 5)) + 2.5 * np.eye(5)[grades]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return grades, probs.argmax(1), probs


def test_blocks_hold_what_a_reader_needs():
    grades, predicted, probs = _data()
    report = uncertainty_report(grades, predicted, probs, n_resamples=300)
    assert report["calibration"]["ece"] == pytest.approx(expected_calibration_error(probs, grades))
    assert sum(report["calibration"]["reliability"]["count"]) == 200
    for name in ("qwk", "accuracy", "macro_auc", "referable_auc"):
        entry = report["intervals"][name]
        assert entry["low"] <= entry["value"] <= entry["high"]
    point, default = report["operating_points"]
    assert point["specificity"] >= 0.90 and 0 <= point["sensitivity"] <= 1
    # Without a stored threshold the model's decision is the default p_referable >= 0.5, and the
    # intervals' sensitivity is that decision's.
    assert default["threshold"] == 0.5 and default["name"].startswith("default")
    truth, score = grades >= 2, probs[:, 2:].sum(1)
    assert report["intervals"]["sensitivity"]["value"] == pytest.approx(
        (score[truth] >= 0.5).mean()
    )
    with_release = uncertainty_report(
        grades, predicted, probs, release_threshold=0.3, n_resamples=50
    )
    fixed = with_release["operating_points"][1]
    assert fixed["name"] == "fixed at release" and fixed["threshold"] == 0.3
    assert fixed["sensitivity"] == pytest.approx((score[truth] >= 0.3).mean())


def test_unknown_grades_are_left_out_and_groups_widen_intervals():
    grades, predicted, probs = _data(100, seed=3)
    doubled = uncertainty_report(
        np.r_[grades, grades], np.r_[predicted, predicted], np.r_[probs, probs], n_resamples=400
    )
    grouped = uncertainty_report(
        np.r_[grades, grades],
        np.r_[predicted, predicted],
        np.r_[probs, probs],
        groups=list(range(100)) * 2,
        n_resamples=400,
    )
    width = lambda r: r["intervals"]["accuracy"]["high"] - r["intervals"]["accuracy"]["low"]  # noqa: E731
    assert width(grouped) > 1.25 * width(
        doubled
    )  # copies are not independent evidence (sqrt 2 expected)
    masked = uncertainty_report(
        np.r_[grades, [-1, -1]], np.r_[predicted, [0, 0]], np.r_[probs, probs[:2]], n_resamples=50
    )
    assert sum(masked["calibration"]["reliability"]["count"]) == 100
    assert uncertainty_report(np.array([-1]), np.array([0]), probs[:1]) == {}
