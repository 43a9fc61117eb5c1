"""Grading metrics: accuracy, quadratic weighted kappa, macro F1, one-vs-rest AUC, referable DR
(grade >= 2, the one rule of evaluation/referable.py), the confusion matrix and ROC curves. Small
``N``: computed with scikit-learn on the host.

Results are plain Python floats/ints/lists so they ``json.dump`` directly; an undefined value is
``float("nan")`` (``json.dump`` writes it as ``NaN``).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from sklearn.metrics import (
    cohen_kappa_score,
    f1_score,
    roc_auc_score,
    roc_curve,
)

from data.records import UNKNOWN_GRADE, DataError
from evaluation.referable import (
    REFERABLE_GRADE,
    is_referable,
    referable_probability,
    referable_truth,
)
from models.ordinal import decode_grades

NAN = float("nan")


def _as_numpy(x: np.ndarray | torch.Tensor) -> np.ndarray:
    """Host copy of a tensor or array: grading runs once per evaluation on small ``N``."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _known_grades(
    y_true: np.ndarray | torch.Tensor, probs: np.ndarray | torch.Tensor
) -> tuple[np.ndarray, np.ndarray]:
    """Check shapes, drop rows with unknown grade (-1) and reject grades outside ``0..C-1``.

    Returns ``y [M]`` int64 and ``probs [M,C]`` float64.
    """
    y = _as_numpy(y_true).astype(np.int64).reshape(-1)
    p = _as_numpy(probs).astype(np.float64)
    if p.ndim != 2 or p.shape[0] != y.shape[0]:
        raise ValueError(f"expected y_true [N] and probs [N,C]; got {y.shape} and {p.shape}")
    keep = y != UNKNOWN_GRADE
    y, p = y[keep], p[keep]
    num_classes = p.shape[1]
    bad = y[(y < 0) | (y >= num_classes)]
    if bad.size:
        raise DataError(
            f"grade {int(bad[0])} outside 0..{num_classes - 1} (use {UNKNOWN_GRADE} for unknown)"
        )
    return y, p


def _binary_auc(positive: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC of a binary problem; NaN when only one class is present (AUC undefined)."""
    if positive.all() or not positive.any():
        return NAN
    return float(roc_auc_score(positive, score))


def _quadratic_kappa(y: np.ndarray, pred: np.ndarray, num_classes: int) -> float:
    """Cohen's kappa with quadratic weights on the fixed ICDR scale ``0..C-1``.

    Equals ``cohen_kappa_score(y, pred, weights="quadratic", labels=range(C))``, which is the
    same as the call without ``labels`` whenever every grade occurs in ``y`` or ``pred``. Passing
    ``labels`` keeps the distance between grades 0 and 4 at 4 even when grades in between are
    absent (sklearn's default re-indexes the grades present). Kappa is undefined (0/0) only when
    all targets and all predictions are one and the same grade, i.e. perfect agreement: 1.0 then.
    NaN for an empty set.
    """
    if y.size == 0:
        return NAN
    if np.unique(np.concatenate([y, pred])).size == 1:
        return 1.0
    return float(cohen_kappa_score(y, pred, weights="quadratic", labels=list(range(num_classes))))


def _recall(hit: np.ndarray) -> float:
    """Fraction of True in ``hit``; NaN when there is nothing to recall."""
    return float(hit.mean()) if hit.size else NAN


def _nanmean(values: list[float]) -> float:
    """Mean over the defined values; NaN when none is defined (without numpy's warning)."""
    defined = [v for v in values if not math.isnan(v)]
    return float(np.mean(defined)) if defined else NAN


def _confusion(y: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts ``[C,C]``: rows = true grade, columns = predicted grade."""
    return np.bincount(y * num_classes + pred, minlength=num_classes**2).reshape(num_classes, -1)


def _macro_f1(y: np.ndarray, pred: np.ndarray, num_classes: int) -> float:
    """Unweighted mean F1 over all ``C`` grades; a grade never true nor predicted scores 0
    (sklearn ``zero_division=0``), so missing grades pull the mean down. NaN for an empty set."""
    if y.size == 0:
        return NAN
    labels = list(range(num_classes))
    return float(f1_score(y, pred, labels=labels, average="macro", zero_division=0))


def _referable_metrics(y: np.ndarray, p: np.ndarray, threshold: float | None) -> dict:
    """Referable DR by the one rule (evaluation/referable.py): AUC of ``p_referable``, and
    sensitivity / specificity of the decision ``p_referable >= threshold``. NaN where undefined
    (fewer than 3 classes, or no positives / negatives)."""
    if p.shape[1] <= REFERABLE_GRADE:
        return {"referable_auc": NAN, "referable_sensitivity": NAN, "referable_specificity": NAN}
    truth = referable_truth(y)
    score = referable_probability(p)
    decision = is_referable(score, threshold)
    return {
        "referable_auc": _binary_auc(truth, score),
        "referable_sensitivity": _recall(decision[truth]),
        "referable_specificity": _recall(~decision[~truth]),
    }


def grading_metrics(
    y_true: np.ndarray | torch.Tensor,
    probs: np.ndarray | torch.Tensor,
    thresholds: torch.Tensor | None = None,
    referable_threshold: float | None = None,
    predicted: np.ndarray | torch.Tensor | None = None,
) -> dict:
    """Grading metrics of class probabilities against ICDR grades.

    Args:
        y_true: int ``[N]``, grades ``0..C-1``; ``-1`` (unknown) rows are dropped first.
        probs: float ``[N,C]``, class probabilities (softmax); the prediction is the argmax, or
            with ``thresholds`` ``[C-1]`` the expected grade cut at them (``models/ordinal.py``).
        referable_threshold: the referral decision's threshold on ``p_referable`` (None: 0.5).
        predicted: ``[N]`` grades already decoded (a release with a temperature decodes its
            unscaled probabilities, engine/inference.py); None decodes ``probs``.

    Returns a JSON-serialisable dict: ``accuracy`` (micro), ``qwk`` (see ``_quadratic_kappa``),
    ``macro_f1`` (sklearn ``average="macro"`` over all ``C`` labels, ``zero_division=0``),
    ``per_class_auc`` (one-vs-rest, NaN where the class is absent from ``y`` or is the only one),
    ``macro_auc`` (mean of the defined per-class AUCs, NaN if none), ``referable_auc``,
    ``referable_sensitivity``, ``referable_specificity``, ``per_class_sensitivity`` (recall, NaN
    where the class is absent), ``confusion`` (``C x C`` ints, rows = truth, columns =
    prediction) and ``n`` (rows scored), plus ``thresholds`` when given. Raises ``DataError`` for a
    grade outside ``-1..C-1``. The AUCs use the probabilities, whatever the decoding.
    """
    y, p = _known_grades(y_true, probs)
    num_classes = p.shape[1]
    if predicted is None:
        pred = decode_grades(torch.from_numpy(p), thresholds).numpy()
    else:
        pred = _as_numpy(predicted).astype(np.int64)[_as_numpy(y_true) != UNKNOWN_GRADE]
    per_class_auc = [_binary_auc(y == c, p[:, c]) for c in range(num_classes)]
    return {
        "accuracy": _recall(pred == y),
        "qwk": _quadratic_kappa(y, pred, num_classes),
        "macro_f1": _macro_f1(y, pred, num_classes),
        "per_class_auc": per_class_auc,
        "macro_auc": _nanmean(per_class_auc),
        **_referable_metrics(y, p, referable_threshold),
        "per_class_sensitivity": [_recall(pred[y == c] == c) for c in range(num_classes)],
        "confusion": _confusion(y, pred, num_classes).tolist(),
        "n": int(y.size),
        **({"thresholds": [float(t) for t in thresholds]} if thresholds is not None else {}),
    }


def _roc(positive: np.ndarray, score: np.ndarray) -> dict | None:
    """One ROC curve with its AUC, or None where only one class is present."""
    if positive.all() or not positive.any():
        return None
    fpr, tpr, _ = roc_curve(positive, score)
    return {"fpr": fpr, "tpr": tpr, "auc": float(roc_auc_score(positive, score))}


def roc_curves(y_true: np.ndarray | torch.Tensor, probs: np.ndarray | torch.Tensor) -> dict:
    """ROC curves for the report figures, same conventions as ``grading_metrics``.

    Returns ``{"per_class": {c: {"fpr", "tpr", "auc"}}, "referable": {"fpr", "tpr", "auc"} | None}``
    with numpy ``fpr``/``tpr``; classes whose curve is undefined (absent or alone) are left out.
    """
    y, p = _known_grades(y_true, probs)
    per_class = {c: _roc(y == c, p[:, c]) for c in range(p.shape[1])}
    referable = None
    if p.shape[1] > REFERABLE_GRADE:
        referable = _roc(y >= REFERABLE_GRADE, p[:, REFERABLE_GRADE:].sum(1))
    return {
        "per_class": {c: r for c, r in per_class.items() if r is not None},
        "referable": referable,
    }
