"""Fitting the grade thresholds of ordinal decoding (``model.grade_decoding=thresholds``).

The expected grade ``sum_k p_k * k`` is cut at C-1 increasing thresholds (``models/ordinal.py``);
the thresholds that maximise quadratic weighted kappa on the training predictions are found by
coordinate search, one threshold at a time. The kappa is this project's one implementation
(``evaluation.metrics_grading._quadratic_kappa``, scikit-learn's ``cohen_kappa_score(weights="quadratic")``).
"""

from __future__ import annotations

import numpy as np
import torch

from data.records import UNKNOWN_GRADE
from evaluation.metrics_grading import _quadratic_kappa
from models.ordinal import default_thresholds, expected_grade, grades_from_expected

MAX_CANDIDATES = 64  # positions tried per threshold and sweep (a kappa costs ~1 ms)
MAX_SWEEPS = 20


def _as_float32(values: np.ndarray) -> np.ndarray:
    """The values a float32 threshold buffer can hold, as float64: what is scored is what is stored."""
    return values.astype(np.float32).astype(np.float64)


def _candidates(expected: np.ndarray, low: float, high: float) -> np.ndarray:
    """Midpoints between consecutive distinct expected grades (and half a grade beyond the extremes)
    strictly between ``low`` and ``high``: every distinct decision there, thinned to MAX_CANDIDATES."""
    values = np.unique(expected)
    edges = np.concatenate([[values[0] - 1.0], values, [values[-1] + 1.0]])
    middles = _as_float32((edges[:-1] + edges[1:]) / 2)
    middles = np.unique(middles[(middles > low) & (middles < high)])
    if middles.size > MAX_CANDIDATES:
        middles = middles[
            np.unique(np.linspace(0, middles.size - 1, MAX_CANDIDATES).round().astype(int))
        ]
    return middles


def fit_thresholds(
    probs: np.ndarray | torch.Tensor,
    labels: np.ndarray | torch.Tensor,
    initial: np.ndarray | torch.Tensor | None = None,
) -> torch.Tensor:
    """Thresholds ``[C-1]`` (float32, strictly increasing) that maximise the QWK of the cut expected grade.

    ``probs`` ``[N,C]`` class probabilities and ``labels`` ``[N]`` grades (``-1`` rows ignored) of
    the TRAINING images. Coordinate search from ``initial`` (default 0.5, 1.5, ...): each sweep
    moves each threshold, between its neighbours, to the candidate (:func:`_candidates`) of highest
    kappa if it beats the current one strictly, so ties keep the current value, the result never
    scores below the start, and the search is deterministic; it stops after a sweep that moved
    nothing. Fewer than two graded classes: the start is returned.
    """
    probs = torch.as_tensor(probs)
    num_classes = probs.shape[1]
    labels = torch.as_tensor(labels).long().reshape(-1)
    known = labels != UNKNOWN_GRADE
    expected = expected_grade(probs[known]).numpy()
    y = labels[known].numpy()
    start = (
        default_thresholds(num_classes)
        if initial is None
        else torch.as_tensor(initial, dtype=torch.float32)
    )
    thresholds = start.double().numpy().copy()
    if np.unique(y).size < 2:
        return start.clone()

    def score(cuts: np.ndarray) -> float:
        predicted = grades_from_expected(torch.from_numpy(expected), torch.from_numpy(cuts)).numpy()
        return _quadratic_kappa(y, predicted, num_classes)

    best = score(thresholds)
    for _ in range(MAX_SWEEPS):
        moved = False
        for k in range(num_classes - 1):
            low = thresholds[k - 1] if k > 0 else -np.inf
            high = thresholds[k + 1] if k < num_classes - 2 else np.inf
            for candidate in _candidates(expected, low, high):
                trial = thresholds.copy()
                trial[k] = candidate
                kappa = score(trial)
                if kappa > best:
                    best, thresholds, moved = kappa, trial, True
        if not moved:
            break
    return torch.from_numpy(thresholds).float()
