"""Temperature scaling (Guo et al., ICML 2017) and the release's referral threshold, fitted on a
validation split's predictions when a release is exported (``python -m engine.export``).

One scalar ``T`` divides the grade logits; it is the ``T`` that minimises the negative
log-likelihood of the validation grades. It leaves the ranking of the classes (and so every AUC)
as it was and makes the probabilities mean what they say. Fitted from probabilities (a
predictions CSV): ``log p`` are logits up to a per-row constant, which the softmax ignores.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax

from data.records import DataError
from evaluation.prediction_csv import read_graded
from evaluation.referable import referable_probability, referable_truth
from evaluation.statistics import (
    binary_ece,
    expected_calibration_error,
    sensitivity_specificity,
    threshold_at_specificity,
)

LOG_FLOOR = 1e-7  # probabilities written with 5 decimals can be 0
TEMPERATURE_RANGE = (0.05, 20.0)


def scaled_probabilities(logits: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(logits / temperature)`` ``[N,C]``."""
    return np.exp(log_softmax(np.asarray(logits, dtype=np.float64) / temperature, axis=1))


def fit_temperature(logits: np.ndarray, grades: np.ndarray) -> float:
    """The temperature minimising the mean NLL of ``grades`` ``[N]`` under ``logits`` ``[N,C]``."""
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(grades, dtype=np.int64)
    if z.ndim != 2 or z.shape[0] != y.shape[0] or y.size == 0:
        raise ValueError(f"expected logits [N,C] and grades [N], N > 0; got {z.shape}, {y.shape}")

    def nll(log_t: float) -> float:
        return float(-log_softmax(z / math.exp(log_t), axis=1)[np.arange(y.size), y].mean())

    low, high = (math.log(t) for t in TEMPERATURE_RANGE)
    return float(math.exp(minimize_scalar(nll, bounds=(low, high), method="bounded").x))


def read_predictions(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(grades [N], probabilities [N,C])`` of the images with a known reference grade in a
    predictions CSV (test.py's or predict.py's; evaluation/prediction_csv.py)."""
    rows = read_graded(path).with_reference()
    if not rows.keys:
        raise DataError(f"{path}: no graded image with a known reference grade")
    return rows.reference, rows.probs


def release_calibration(
    grades: np.ndarray, probs: np.ndarray, specificity: float = 0.90, source: str = ""
) -> dict:
    """What a release stores: the temperature with ECE before and after, and the referral
    threshold reaching ``specificity`` on the calibrated validation probabilities."""
    logits = np.log(np.clip(probs, LOG_FLOOR, None))
    temperature = fit_temperature(logits, grades)
    calibrated = scaled_probabilities(logits, temperature)
    truth = referable_truth(grades)
    before, after = referable_probability(probs), referable_probability(calibrated)
    threshold = threshold_at_specificity(after, truth, specificity)
    sensitivity, reached = sensitivity_specificity(after, truth, threshold)
    return {
        "calibration": {
            "temperature": temperature,
            "fitted_on": source,
            "n": int(grades.size),
            "ece_before": expected_calibration_error(probs, grades),
            "ece_after": expected_calibration_error(calibrated, grades),
            "referable_ece_before": binary_ece(before, truth),
            "referable_ece_after": binary_ece(after, truth),
        },
        "referable_threshold": float(threshold),
        "referable_operating_point": {
            "target_specificity": specificity,
            "sensitivity": sensitivity,
            "specificity": reached,
            "fitted_on": source,
        },
    }
