"""Uncertainty and calibration of grading results: what a cross-validation study and ``test.py``
report beside the point metrics of ``evaluation/metrics.py``. Two modules of one job each, both
re-exported here (the names callers import):

- ``evaluation/calibration_metrics.py``: calibration (top-label ECE and its reliability bins, and
  the ECE of a binary probability, the referable probability) and the referable operating point
  (referable probability and labels, the threshold that reaches a target specificity,
  sensitivity / specificity at a threshold), with the input checks of both modules;
- ``evaluation/intervals.py``: ``summary_metrics`` (the point estimates that get intervals),
  bootstrap percentile intervals, resampling images or groups of images (cluster bootstrap: the
  duplicate photographs of one eye or patient share a group), paired bootstrap differences of two
  models scored on the same images, and the spread of per-fold values.

Conventions. Grades are ICDR ``0..C-1`` (unknown grades must be dropped first); ``probs`` are
``[N,C]`` class probabilities whose rows sum to 1 within ``PROBABILITY_TOLERANCE``. Referable DR is
grade >= ``REFERABLE_GRADE``; its probability is the summed probability of those grades. A
binary decision is positive when ``p >= threshold``. Calibration bins are equal-width,
``[b/B, (b+1)/B)`` with 1.0 in the last bin (as the segmentation histograms of
``evaluation/metrics_segmentation.py``). An undefined value is ``float("nan")``. Bad input raises
``ValueError``.

Point estimates use scikit-learn and the helpers of ``evaluation/metrics_grading.py``; the
bootstrap scores all resamples at once with numpy (``evaluation/intervals.py`` says how).
"""

from __future__ import annotations

from evaluation.calibration_metrics import (
    DEFAULT_BINS,
    PROBABILITY_TOLERANCE,
    binary_ece,
    expected_calibration_error,
    referable_labels,
    referable_probability,
    reliability_bins,
    sensitivity_specificity,
    threshold_at_specificity,
)
from evaluation.intervals import (
    METRICS,
    _Scorer,
    bootstrap_intervals,
    fold_spread,
    paired_difference,
    summary_metrics,
)
from evaluation.metrics_grading import REFERABLE_GRADE

__all__ = [
    "DEFAULT_BINS",
    "METRICS",
    "PROBABILITY_TOLERANCE",
    "REFERABLE_GRADE",
    "_Scorer",
    "binary_ece",
    "bootstrap_intervals",
    "expected_calibration_error",
    "fold_spread",
    "paired_difference",
    "referable_labels",
    "referable_probability",
    "reliability_bins",
    "sensitivity_specificity",
    "summary_metrics",
    "threshold_at_specificity",
]
