"""Grade decoding: the one place a predicted grade is read from class probabilities.

The grader keeps its C logits (probabilities, AUCs, Grad-CAM targets and per-grade outputs need
them). Its grade is either the argmax (``model.grade_decoding=argmax``, the published rule) or the
expected grade ``sum_k p_k * k`` cut at C-1 increasing thresholds (``thresholds``: the usual way to
optimise quadratic weighted kappa, which penalises a grade by its squared distance). The
thresholds live on the model (``DeepMTDR.grade_thresholds``); ``evaluation/thresholds.py`` fits them.
"""

from __future__ import annotations

import torch

GRADE_DECODINGS = ("argmax", "thresholds")


def default_thresholds(num_classes: int) -> torch.Tensor:
    """``[C-1]`` float32 cut points 0.5, 1.5, ...: the expected grade rounded to the nearest grade."""
    return torch.arange(num_classes - 1, dtype=torch.float32) + 0.5


def expected_grade(probs: torch.Tensor) -> torch.Tensor:
    """Class probabilities ``[N,C]`` -> expected grade ``[N]`` in [0, C-1], float64 (so the cut is exact)."""
    grades = torch.arange(probs.shape[-1], dtype=torch.float64, device=probs.device)
    return probs.double() @ grades


def grades_from_expected(expected: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """Expected grades ``[N]`` -> int64 grades ``[N]``: how many of the increasing ``thresholds`` ``[C-1]``
    are <= each value (a value on a threshold goes up, as rounding half up does)."""
    return torch.bucketize(
        expected.double(), thresholds.to(expected.device, torch.float64), right=True
    )


def decode_grades(probs: torch.Tensor, thresholds: torch.Tensor | None = None) -> torch.Tensor:
    """Predicted grades ``[N]`` int64 of class probabilities ``[N,C]``: the argmax when ``thresholds``
    is None, else the expected grade cut at ``thresholds`` ``[C-1]``. On the probabilities' device,
    without host synchronisation."""
    if thresholds is None:
        return probs.argmax(dim=-1)
    return grades_from_expected(expected_grade(probs), thresholds)
