"""What a screening reader looks for first in an evaluation: calibration, intervals, an operating point.

One call turns an evaluation's reference grades, decoded grades and grade probabilities into the
``metrics.json`` blocks ``calibration`` (top-label and referable ECE, reliability bins),
``intervals`` (95% bootstrap intervals, resampling duplicate groups when given) and
``operating_points`` (referable sensitivity and specificity at a named threshold). The referable
probability is p(grade >= 2) and the decision its threshold (evaluation/referable.py).
"""

from __future__ import annotations

import numpy as np

from evaluation.referable import model_threshold
from evaluation.statistics import (
    binary_ece,
    bootstrap_intervals,
    expected_calibration_error,
    referable_labels,
    referable_probability,
    reliability_bins,
    sensitivity_specificity,
    threshold_at_specificity,
)

TARGET_SPECIFICITY = 0.90


def _plain(values: dict) -> dict:
    return {
        key: (value.tolist() if isinstance(value, np.ndarray) else value)
        for key, value in values.items()
    }


def operating_point(
    p_referable: np.ndarray, truth: np.ndarray, threshold: float, name: str
) -> dict:
    sensitivity, specificity = sensitivity_specificity(p_referable, truth, threshold)
    return {
        "name": name,
        "threshold": float(threshold),
        "sensitivity": sensitivity,
        "specificity": specificity,
    }


def uncertainty_report(
    grades: np.ndarray,
    predicted: np.ndarray,
    probs: np.ndarray,
    groups=None,
    release_threshold: float | None = None,
    n_resamples: int = 2000,
) -> dict:
    """The three blocks (module docstring) for the images with a known grade.

    Operating points: ``specificity 0.90`` (the threshold that reaches it on these images: a
    readout of the ROC curve, not a threshold fixed in advance) and the model's own decision
    threshold (``release_threshold``, fixed at release time; None: the default 0.5 of
    evaluation/referable.py). The intervals' sensitivity and specificity are the model's
    threshold's: fixed before these images were seen, so the interval is an honest one.
    """
    known = np.asarray(grades) >= 0
    y, pred, p = np.asarray(grades)[known], np.asarray(predicted)[known], np.asarray(probs)[known]
    if y.size == 0:
        return {}
    p_referable, truth = referable_probability(p), referable_labels(y)
    points = []
    if (~truth).any():
        points.append(
            operating_point(
                p_referable,
                truth,
                threshold_at_specificity(p_referable, truth, TARGET_SPECIFICITY),
                f"specificity {TARGET_SPECIFICITY:.2f} on these images",
            )
        )
    threshold = model_threshold({"referable_threshold": release_threshold})
    name = "fixed at release" if release_threshold is not None else "default (no threshold stored)"
    points.append(operating_point(p_referable, truth, threshold, name))
    group_ids = None if groups is None else list(np.asarray(groups, dtype=object)[known])
    return {
        "calibration": {
            "ece": expected_calibration_error(p, y),
            "referable_ece": binary_ece(p_referable, truth),
            "reliability": _plain(reliability_bins(p, y)),
        },
        "intervals": {
            "confidence": 0.95,
            "resamples": n_resamples,
            "grouped": groups is not None,
            **bootstrap_intervals(y, pred, p, threshold, group_ids, n_resamples),
        },
        "operating_points": points,
    }
