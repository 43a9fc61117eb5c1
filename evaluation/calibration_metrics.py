"""Calibration and the referable operating point of grading results, with the input checks of
every function of ``evaluation/statistics.py`` (which re-exports this module and
``evaluation/intervals.py``; its docstring states the conventions):

- calibration: top-label ECE and its reliability bins, and the ECE of a binary probability (the
  referable probability);
- the referable operating point: referable probability and labels, the threshold that reaches a
  target specificity, sensitivity / specificity at a threshold.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from evaluation import referable
from evaluation.metrics_grading import REFERABLE_GRADE, _as_numpy

DEFAULT_BINS = 15
"""Equal-width confidence bins of the ECE (the usual choice since Guo et al. 2017)."""

PROBABILITY_TOLERANCE = 1e-3
"""Largest accepted ``|sum of a probability row - 1|`` (float32 softmax sums are within ~1e-6)."""

Array = np.ndarray | torch.Tensor | Sequence


# --------------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------------


def _probabilities(probs: Array, name: str = "probs") -> np.ndarray:
    """``[N,C]`` float64 class probabilities, ``N >= 1``, ``C >= 2``, rows summing to 1."""
    p = _as_numpy(probs).astype(np.float64)
    if p.ndim != 2 or p.shape[0] == 0 or p.shape[1] < 2:
        raise ValueError(f"expected {name} [N,C] with N >= 1 and C >= 2; got shape {p.shape}")
    if not np.isfinite(p).all() or (p < 0).any():
        raise ValueError(f"{name} must be finite and non-negative")
    error = np.abs(p.sum(1) - 1.0)
    worst = int(error.argmax())
    if error[worst] > PROBABILITY_TOLERANCE:
        raise ValueError(
            f"{name} rows must sum to 1 within {PROBABILITY_TOLERANCE}; "
            f"row {worst} sums to {p[worst].sum():.6f}"
        )
    return p


def _integers(values: Array, name: str) -> np.ndarray:
    """1-D int64 copy of integer-valued ``values`` (ValueError for other values or shapes)."""
    a = _as_numpy(values)
    if a.ndim != 1:
        raise ValueError(f"expected {name} [N]; got shape {a.shape}")
    try:
        ints = a.astype(np.int64)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name} must be integers") from error
    if not np.array_equal(ints, a):
        raise ValueError(f"{name} must be integers")
    return ints


def _grades(values: Array, n: int, num_classes: int, name: str) -> np.ndarray:
    """``[n]`` int64 grades in ``0..num_classes-1``; ``n`` is the number of probability rows."""
    g = _integers(values, name)
    if g.shape[0] != n:
        raise ValueError(f"{name} has {g.shape[0]} entries but probs has {n} rows")
    bad = g[(g < 0) | (g >= num_classes)]
    if bad.size:
        raise ValueError(
            f"{name}: grade {int(bad[0])} outside 0..{num_classes - 1} "
            "(drop images of unknown grade first)"
        )
    return g


def _grading_inputs(
    grades: Array, predicted: Array, probs: Array, row: str = ""
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Checked ``(y [N], pred [N], p [N,C])`` with ``C > REFERABLE_GRADE``."""
    p = _probabilities(probs, f"probs{row}")
    if p.shape[1] <= REFERABLE_GRADE:
        raise ValueError(
            f"probs{row} has {p.shape[1]} classes; referable DR (grade >= {REFERABLE_GRADE}) "
            f"needs at least {REFERABLE_GRADE + 1}"
        )
    y = _grades(grades, p.shape[0], p.shape[1], "grades")
    pred = _grades(predicted, p.shape[0], p.shape[1], f"predicted{row}")
    return y, pred, p


def _binary_inputs(p_positive: Array, positive: Array) -> tuple[np.ndarray, np.ndarray]:
    """Checked ``(p [N] float64 in [0, 1], positive [N] bool)``, ``N >= 1``."""
    p = _as_numpy(p_positive).astype(np.float64)
    if p.ndim != 1 or p.size == 0:
        raise ValueError(f"expected p_positive [N] with N >= 1; got shape {p.shape}")
    if not np.isfinite(p).all() or p.min() < 0 or p.max() > 1 + PROBABILITY_TOLERANCE:
        raise ValueError("p_positive must be probabilities in [0, 1]")
    truth = _integers(positive, "positive")
    if truth.shape[0] != p.shape[0]:
        raise ValueError(f"positive has {truth.shape[0]} entries but p_positive has {p.shape[0]}")
    if ((truth != 0) & (truth != 1)).any():
        raise ValueError("positive must be booleans or 0/1")
    return p, truth.astype(bool)


def _bins(n_bins: int) -> int:
    """A positive integer number of bins."""
    if isinstance(n_bins, bool) or int(n_bins) != n_bins or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer; got {n_bins!r}")
    return int(n_bins)


# --------------------------------------------------------------------------------------------------
# Calibration
# --------------------------------------------------------------------------------------------------


def _binned_sums(
    score: np.ndarray, outcome: np.ndarray, n_bins: int, weights: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per bin of ``score``: weighted count, score sum and outcome sum, each ``[R,B]``.

    ``weights [R,N]`` (one row per resample; a single row of ones for the data themselves).
    """
    index = np.minimum((score * n_bins).astype(np.int64), n_bins - 1)
    member = np.zeros((score.size, n_bins))
    member[np.arange(score.size), index] = 1.0
    features = np.concatenate([member, member * score[:, None], member * outcome[:, None]], axis=1)
    sums = weights @ features
    return sums[:, :n_bins], sums[:, n_bins : 2 * n_bins], sums[:, 2 * n_bins :]


def _calibration_error(
    score: np.ndarray, outcome: np.ndarray, n_bins: int, weights: np.ndarray
) -> np.ndarray:
    """``sum_b (n_b / n) |mean score_b - mean outcome_b|`` per weight row ``[R]``.

    ``n_b * |mean gap|`` is ``|score sum - outcome sum|``, so empty bins add nothing.
    """
    count, score_sum, outcome_sum = _binned_sums(score, outcome, n_bins, weights)
    return np.abs(score_sum - outcome_sum).sum(1) / count.sum(1)


def _top_label(probs: Array, labels: Array) -> tuple[np.ndarray, np.ndarray]:
    """Confidence (max probability) and correctness (argmax == label, first index on ties)."""
    p = _probabilities(probs)
    y = _grades(labels, p.shape[0], p.shape[1], "labels")
    return p.max(1), (p.argmax(1) == y).astype(np.float64)


def expected_calibration_error(probs: Array, labels: Array, n_bins: int = DEFAULT_BINS) -> float:
    """Top-label ECE: ``sum_b (n_b / N) |mean confidence_b - accuracy_b|`` over equal-width bins
    of the confidence ``max_k p_k``; an image is correct when its argmax equals its label.

    How far the model's confidence is from its accuracy (Guo et al. 2017). ``probs [N,C]``,
    ``labels [N]`` grades ``0..C-1``.
    """
    confidence, correct = _top_label(probs, labels)
    unit = np.ones((1, confidence.size))
    return float(_calibration_error(confidence, correct, _bins(n_bins), unit)[0])


def reliability_bins(
    probs: Array, labels: Array, n_bins: int = DEFAULT_BINS
) -> dict[str, np.ndarray]:
    """The bins of ``expected_calibration_error``, for a reliability diagram.

    Returns ``[B]`` arrays: ``lower``, ``upper`` (bin edges; ``[lower, upper)``, 1.0 in the last),
    ``count`` (int), ``confidence`` (mean max probability) and ``accuracy`` (fraction correct);
    the last two are NaN in an empty bin.
    """
    n_bins = _bins(n_bins)
    confidence, correct = _top_label(probs, labels)
    count, confidence_sum, correct_sum = (
        s[0] for s in _binned_sums(confidence, correct, n_bins, np.ones((1, confidence.size)))
    )
    occupied = count > 0
    denominator = np.where(occupied, count, 1.0)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return {
        "lower": edges[:-1],
        "upper": edges[1:],
        "count": count.round().astype(np.int64),
        "confidence": np.where(occupied, confidence_sum / denominator, np.nan),
        "accuracy": np.where(occupied, correct_sum / denominator, np.nan),
    }


def binary_ece(p_positive: Array, positive: Array, n_bins: int = DEFAULT_BINS) -> float:
    """ECE of a binary probability: ``sum_b (n_b / N) |mean p_b - fraction positive_b|`` over
    equal-width bins of ``p``.

    Calibration of the referable probability itself (how often "30 % referable" is referable),
    which the top-label ECE of the 5-grade output does not measure.
    """
    p, truth = _binary_inputs(p_positive, positive)
    unit = np.ones((1, p.size))
    return float(_calibration_error(p, truth.astype(np.float64), _bins(n_bins), unit)[0])


# --------------------------------------------------------------------------------------------------
# Referable DR operating point
# --------------------------------------------------------------------------------------------------


def referable_probability(probs: Array) -> np.ndarray:
    """Probability of referable DR ``[N]``: ``sum_{k >= REFERABLE_GRADE} p_k`` of ``probs [N,C]``.

    The same score as ``evaluation.metrics_grading.grading_metrics``'s ``referable_auc``.
    """
    return referable.referable_probability(_probabilities(probs))


def referable_labels(grades: Array) -> np.ndarray:
    """Referable DR ``[N]`` bool: ``grade >= REFERABLE_GRADE`` (moderate NPDR or worse)."""
    g = _integers(grades, "grades")
    if (g < 0).any():
        raise ValueError("grades must be >= 0 (drop images of unknown grade first)")
    return g >= REFERABLE_GRADE


def threshold_at_specificity(
    p_positive: Array, positive: Array, specificity: float = 0.90
) -> float:
    """Smallest observed score ``t`` whose specificity reaches ``specificity``.

    Convention: an image is called positive when ``p >= t``, so the specificity at ``t`` is the
    fraction of negatives with ``p < t``. It only changes at observed scores, and among the
    thresholds giving the same decisions the observed score is the smallest (as in
    ``sklearn.metrics.roc_curve``); the smallest threshold keeps the most sensitivity. Tied scores
    fall on the same side. When only a threshold above every score reaches the target (the highest
    score is a negative's), the next float above it is returned: nothing is called positive.
    Needs at least one negative.
    """
    p, truth = _binary_inputs(p_positive, positive)
    if not 0.0 <= specificity <= 1.0:
        raise ValueError(f"specificity must be in [0, 1]; got {specificity}")
    negatives = np.sort(p[~truth])
    if negatives.size == 0:
        raise ValueError("threshold_at_specificity needs at least one negative")
    candidates = np.append(np.unique(p), np.nextafter(p.max(), np.inf))
    reached = np.searchsorted(negatives, candidates, side="left") / negatives.size >= specificity
    return float(candidates[np.argmax(reached)])


def sensitivity_specificity(
    p_positive: Array, positive: Array, threshold: float
) -> tuple[float, float]:
    """``(sensitivity, specificity)`` of the decision ``p >= threshold``; NaN where there are no
    positives (sensitivity) or no negatives (specificity)."""
    p, truth = _binary_inputs(p_positive, positive)
    decision = p >= threshold
    sensitivity = float(decision[truth].mean()) if truth.any() else math.nan
    specificity = float((~decision[~truth]).mean()) if (~truth).any() else math.nan
    return sensitivity, specificity
