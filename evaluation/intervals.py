"""Bootstrap intervals of grading results: the point metrics that get intervals
(``summary_metrics``), percentile intervals resampling images or groups of images (cluster
bootstrap: the duplicate photographs of one eye or patient share a group), paired bootstrap
differences of two models scored on the same images, and the spread of per-fold values.
Conventions in ``evaluation/statistics.py``, which re-exports this module.

A bootstrap resample is a vector of image multiplicities, so every metric of every resample is a
weighted sum or a weighted rank statistic: all resamples are scored at once with numpy
(``_Scorer``), which equals the point metric recomputed on the resampled images
(tests/test_statistics.py checks it against ``summary_metrics``); calling scikit-learn per
resample would take ~15 ms each.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterator, Sequence

import numpy as np
import torch
from sklearn.metrics import accuracy_score

from evaluation.calibration_metrics import (
    DEFAULT_BINS,
    Array,
    _calibration_error,
    _grading_inputs,
    expected_calibration_error,
    sensitivity_specificity,
)
from evaluation.metrics_grading import (
    REFERABLE_GRADE,
    _as_numpy,
    _binary_auc,
    _nanmean,
    _quadratic_kappa,
)

METRICS = ("qwk", "accuracy", "macro_auc", "referable_auc", "sensitivity", "specificity", "ece")
"""Keys of ``summary_metrics``, in report order."""

_CHUNK_ELEMENTS = 2**21
"""Resample weights scored at once (resamples x images), bounding memory for large ``N``."""


# --------------------------------------------------------------------------------------------------
# Point estimates
# --------------------------------------------------------------------------------------------------


def summary_metrics(
    grades: Array, predicted: Array, probs: Array, referable_threshold: float
) -> dict[str, float]:
    """The point metrics that get intervals (keys ``METRICS``), as plain floats.

    Args:
        grades: ``[N]`` reference grades ``0..C-1``.
        predicted: ``[N]`` decoded grades (argmax or thresholds on the expected grade): ``qwk``
            and ``accuracy`` use them.
        probs: ``[N,C]`` class probabilities: the AUCs, the referable decision and the ECE.
        referable_threshold: referable when ``referable_probability >= referable_threshold``; a
            number, or ``[N]`` numbers (cross-validation: each image's fold has its own threshold).

    ``qwk`` quadratic kappa on the fixed scale ``0..C-1`` (``evaluation.metrics_grading._quadratic_kappa``);
    ``macro_auc`` mean one-vs-rest AUC over the classes with positives and negatives in
    ``grades`` (NaN if none); ``referable_auc``, ``sensitivity``, ``specificity`` of referable DR;
    ``ece`` top-label ECE with ``DEFAULT_BINS`` bins.
    """
    y, pred, p = _grading_inputs(grades, predicted, probs)
    p_referable = p[:, REFERABLE_GRADE:].sum(1)
    truth = y >= REFERABLE_GRADE
    sensitivity, specificity = sensitivity_specificity(p_referable, truth, referable_threshold)
    return {
        "qwk": _quadratic_kappa(y, pred, p.shape[1]),
        "accuracy": float(accuracy_score(y, pred)),
        "macro_auc": _nanmean([_binary_auc(y == c, p[:, c]) for c in range(p.shape[1])]),
        "referable_auc": _binary_auc(truth, p_referable),
        "sensitivity": sensitivity,
        "specificity": specificity,
        "ece": expected_calibration_error(p, y),
    }


# --------------------------------------------------------------------------------------------------
# All resamples at once: metrics of weighted images
# --------------------------------------------------------------------------------------------------


class _RankedScore:
    """A binary score sorted once, for the ROC AUC of any image weighting."""

    def __init__(self, score: np.ndarray, positive: np.ndarray):
        self.order = np.argsort(score, kind="stable")
        ordered = score[self.order]
        self.tie_starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
        self.positive = positive[self.order].astype(np.float64)

    def auc(self, weights: np.ndarray) -> np.ndarray:
        """Weighted Mann-Whitney AUC ``[R]``: ``P(score_pos > score_neg) + P(tie) / 2`` over the
        weighted pairs (sklearn's ROC AUC with ties); NaN without positives or negatives."""
        w = weights[:, self.order]
        pos = np.add.reduceat(w * self.positive, self.tie_starts, axis=1)
        neg = np.add.reduceat(w * (1.0 - self.positive), self.tie_starts, axis=1)
        neg_below = np.cumsum(neg, axis=1) - neg
        pairs = pos.sum(1) * neg.sum(1)
        wins = (pos * (neg_below + 0.5 * neg)).sum(1)
        return np.divide(wins, pairs, out=np.full(pairs.shape, np.nan), where=pairs > 0)


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """Elementwise ratio, NaN where the denominator is 0."""
    return np.divide(
        numerator, denominator, out=np.full(numerator.shape, np.nan), where=denominator > 0
    )


class _Scorer:
    """``summary_metrics`` of one model for many image weightings at once.

    A row of ``weights [R,N]`` holds how often each image occurs in a resample; every metric is
    then a weighted count (confusion matrix, hits, calibration bins) or a weighted rank statistic
    (AUC), so scoring a resample costs a few vector operations instead of scikit-learn calls.
    """

    def __init__(self, y: np.ndarray, pred: np.ndarray, p: np.ndarray, threshold: float):
        self.num_classes = p.shape[1]
        classes = self.num_classes
        self.cell = np.zeros((y.size, classes * classes))
        self.cell[np.arange(y.size), y * classes + pred] = 1.0
        self.ranked_classes = [_RankedScore(p[:, c], y == c) for c in range(classes)]
        p_referable = p[:, REFERABLE_GRADE:].sum(1)
        truth = y >= REFERABLE_GRADE
        self.ranked_referable = _RankedScore(p_referable, truth)
        decision = p_referable >= threshold
        self.counts = np.stack(
            [truth, truth & decision, ~truth, ~truth & ~decision], axis=1
        ).astype(np.float64)
        self.correct = (pred == y).astype(np.float64)
        self.confidence = p.max(1)
        self.top_correct = (p.argmax(1) == y).astype(np.float64)

    def _qwk(self, weights: np.ndarray) -> np.ndarray:
        """Quadratic kappa ``[R]`` of the weighted confusion matrices (sklearn's formula; 1.0 when
        all grades and predictions are one grade, as ``evaluation.metrics_grading._quadratic_kappa``)."""
        classes = self.num_classes
        confusion = (weights @ self.cell).reshape(-1, classes, classes)
        grade = np.arange(classes)
        penalty = (grade[:, None] - grade[None, :]) ** 2.0
        rows, columns = confusion.sum(2), confusion.sum(1)
        observed = (confusion * penalty).sum((1, 2))
        expected = np.einsum("ri,rj,ij->r", rows, columns, penalty) / rows.sum(1)
        kappa = 1.0 - _ratio(observed, expected)
        return np.where(expected > 0, kappa, 1.0)

    def __call__(self, weights: np.ndarray) -> dict[str, np.ndarray]:
        """Metric name -> ``[R]`` values for ``weights [R,N]`` (NaN where undefined)."""
        per_class = np.stack([r.auc(weights) for r in self.ranked_classes], axis=1)
        defined = ~np.isnan(per_class)
        positive, true_positive, negative, true_negative = (weights @ self.counts).T
        return {
            "qwk": self._qwk(weights),
            "accuracy": (weights @ self.correct) / weights.sum(1),
            "macro_auc": _ratio(np.where(defined, per_class, 0.0).sum(1), defined.sum(1) * 1.0),
            "referable_auc": self.ranked_referable.auc(weights),
            "sensitivity": _ratio(true_positive, positive),
            "specificity": _ratio(true_negative, negative),
            "ece": _calibration_error(self.confidence, self.top_correct, DEFAULT_BINS, weights),
        }


def _group_codes(groups: Array, n: int) -> tuple[np.ndarray, int]:
    """Group index ``[n]`` in ``0..G-1`` of each image, and ``G``."""
    if isinstance(groups, (np.ndarray, torch.Tensor)):
        ids = _as_numpy(groups)
    else:  # a sequence of ids; fromiter keeps tuple ids whole
        ids = np.fromiter(groups, dtype=object)
    if ids.ndim != 1 or ids.shape[0] != n:
        raise ValueError(f"expected groups [N] with N = {n} (one id per image); got {ids.shape}")
    try:
        _, codes = np.unique(ids, return_inverse=True)
    except TypeError:  # ids that do not sort together (mixed types): number them in order seen
        index: dict[Hashable, int] = {}
        codes = np.array([index.setdefault(g, len(index)) for g in ids.tolist()])
    codes = codes.reshape(-1)
    return codes, int(codes.max()) + 1


def _resample_weights(
    n: int, groups: Array | None, n_resamples: int, seed: int
) -> Iterator[np.ndarray]:
    """Image multiplicities of ``n_resamples`` bootstrap resamples, in chunks ``[R_chunk, n]``.

    Without ``groups`` a resample draws ``n`` images with replacement; with ``groups`` it draws
    ``G`` groups with replacement and takes every image of each drawn group (cluster bootstrap).
    Deterministic for ``(n, groups, n_resamples, seed)``.
    """
    if isinstance(n_resamples, bool) or int(n_resamples) != n_resamples or n_resamples < 1:
        raise ValueError(f"n_resamples must be a positive integer; got {n_resamples!r}")
    codes, units = (None, n) if groups is None else _group_codes(groups, n)
    rng = np.random.default_rng(seed)
    chunk = max(1, _CHUNK_ELEMENTS // max(n, units))
    for start in range(0, int(n_resamples), chunk):
        rows = min(chunk, int(n_resamples) - start)
        draws = rng.integers(0, units, size=(rows, units)) + units * np.arange(rows)[:, None]
        unit_weights = np.bincount(draws.ravel(), minlength=rows * units).reshape(rows, units)
        unit_weights = unit_weights.astype(np.float64)
        yield unit_weights if codes is None else unit_weights[:, codes]


def _resampled(
    scorers: Sequence[_Scorer], n: int, groups: Array | None, n_resamples: int, seed: int
) -> list[dict[str, np.ndarray]]:
    """Per scorer, metric name -> ``[n_resamples]``; all scorers see the same resamples."""
    parts: list[list[dict[str, np.ndarray]]] = [[] for _ in scorers]
    for weights in _resample_weights(n, groups, n_resamples, seed):
        for part, scorer in zip(parts, scorers):
            part.append(scorer(weights))
    return [{name: np.concatenate([c[name] for c in part]) for name in METRICS} for part in parts]


def _percentiles(values: np.ndarray, confidence: float) -> dict[str, float | int]:
    """Percentile interval of the defined ``values``: ``{"low", "high", "n_valid"}``."""
    valid = values[~np.isnan(values)]
    if valid.size == 0:
        return {"low": math.nan, "high": math.nan, "n_valid": 0}
    tail = 50.0 * (1.0 - confidence)
    low, high = np.percentile(valid, [tail, 100.0 - tail])
    return {"low": float(low), "high": float(high), "n_valid": int(valid.size)}


def _check_confidence(confidence: float) -> None:
    """Confidence level strictly between 0 and 1."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1); got {confidence}")


# --------------------------------------------------------------------------------------------------
# Intervals and comparisons
# --------------------------------------------------------------------------------------------------


def bootstrap_intervals(
    grades: Array,
    predicted: Array,
    probs: Array,
    referable_threshold: float,
    groups: Array | None = None,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, dict[str, float | int]]:
    """Percentile bootstrap intervals of ``summary_metrics``.

    Returns metric -> ``{"value", "low", "high", "n_valid"}``: the point estimate on all images,
    the ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` percentiles of the resampled values,
    and how many resamples defined the metric (a resample without positives has no AUC; those are
    dropped, not counted as 0). ``groups [N]``: ids (ints or strings) of images that are not
    independent (duplicate photographs, two eyes of a patient); then whole groups are resampled,
    which keeps duplicates from narrowing the interval. ``referable_threshold`` stays fixed (it is
    not refitted per resample). Arguments otherwise as ``summary_metrics``.
    """
    _check_confidence(confidence)
    y, pred, p = _grading_inputs(grades, predicted, probs)
    point = summary_metrics(y, pred, p, referable_threshold)
    (resampled,) = _resampled(
        [_Scorer(y, pred, p, referable_threshold)], y.size, groups, n_resamples, seed
    )
    return {
        name: {"value": point[name], **_percentiles(resampled[name], confidence)}
        for name in METRICS
    }


def paired_difference(
    grades: Array,
    predicted_a: Array,
    probs_a: Array,
    predicted_b: Array,
    probs_b: Array,
    referable_threshold_a: float,
    referable_threshold_b: float,
    groups: Array | None = None,
    n_resamples: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, dict[str, float | int]]:
    """Paired bootstrap of the difference ``a - b`` of every ``summary_metrics`` value.

    Both models must be scored on the same images in the same order (one ``grades``); each
    resample is applied to both, so the variation the images share cancels. Returns metric ->
    ``{"difference", "low", "high", "p_value", "n_valid"}``: the point difference, the percentile
    interval of the resampled differences, and the two-sided bootstrap p-value of "no difference"

        p = min(1, max(2 * min(F(d <= 0), F(d >= 0)), 1 / (n_valid + 1)))

    where ``F`` is the fraction of the ``n_valid`` resamples (both metrics defined) whose
    difference ``d`` satisfies the condition: identical models give ``p = 1``, and ``p`` is
    never reported below the bootstrap's resolution ``1 / (n_valid + 1)``. Note the sign of
    ``ece``: lower is better. Groups and resampling as ``bootstrap_intervals``.
    """
    _check_confidence(confidence)
    lengths = {
        name: (np.shape(_as_numpy(values)) or (0,))[0]
        for name, values in (
            ("grades", grades),
            ("predicted_a", predicted_a),
            ("probs_a", probs_a),
            ("predicted_b", predicted_b),
            ("probs_b", probs_b),
        )
    }
    if len(set(lengths.values())) != 1:
        raise ValueError(
            "paired_difference needs the same images, in the same order, in both rows; got "
            + ", ".join(f"{name} {length}" for name, length in lengths.items())
        )
    y, pred_a, p_a = _grading_inputs(grades, predicted_a, probs_a, "_a")
    _, pred_b, p_b = _grading_inputs(y, predicted_b, probs_b, "_b")
    point_a = summary_metrics(y, pred_a, p_a, referable_threshold_a)
    point_b = summary_metrics(y, pred_b, p_b, referable_threshold_b)
    scorers = [
        _Scorer(y, pred_a, p_a, referable_threshold_a),
        _Scorer(y, pred_b, p_b, referable_threshold_b),
    ]
    resampled_a, resampled_b = _resampled(scorers, y.size, groups, n_resamples, seed)
    result = {}
    for name in METRICS:
        difference = resampled_a[name] - resampled_b[name]
        interval = _percentiles(difference, confidence)
        valid = difference[~np.isnan(difference)]
        p_value = math.nan
        if valid.size:
            tail = min(np.mean(valid <= 0), np.mean(valid >= 0))
            p_value = float(min(1.0, max(2.0 * tail, 1.0 / (valid.size + 1))))
        result[name] = {
            "difference": point_a[name] - point_b[name],
            "low": interval["low"],
            "high": interval["high"],
            "p_value": p_value,
            "n_valid": interval["n_valid"],
        }
    return result


def fold_spread(per_fold_values: Array) -> dict[str, float | int]:
    """``{"mean", "sd", "min", "max", "n"}`` of per-fold values, reported beside the pooled ones.

    ``sd`` is the sample standard deviation (``ddof=1``; NaN for fewer than two folds). NaN
    values (a metric undefined in a fold) are left out and ``n`` counts the rest; an empty input
    is a ValueError.
    """
    values = _as_numpy(per_fold_values).astype(np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"expected a non-empty list of per-fold values; got shape {values.shape}")
    values = values[~np.isnan(values)]
    if values.size == 0:
        return {"mean": math.nan, "sd": math.nan, "min": math.nan, "max": math.nan, "n": 0}
    return {
        "mean": float(values.mean()),
        "sd": float(values.std(ddof=1)) if values.size > 1 else math.nan,
        "min": float(values.min()),
        "max": float(values.max()),
        "n": int(values.size),
    }
