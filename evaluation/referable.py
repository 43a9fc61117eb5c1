"""The one referable-DR rule, used by test.py's metrics, predict.py's CSV and report, and the
model card.

- **Truth**: a photograph is referable when its grade is ``>= REFERABLE_GRADE`` (ICDR moderate
  NPDR or worse; the Messidor / EyePACS convention).
- **Score**: ``p_referable``, the summed probability of those grades (the score of the referable
  AUC and of every operating point).
- **Decision**: referable when ``p_referable >= threshold``. The threshold is the model's: the one
  stored in a release at export time (``referable_threshold`` in its metadata), else
  :data:`DEFAULT_REFERABLE_THRESHOLD` (0.5: referable DR more likely than not).

The decision is not "the decoded grade is >= 2": a grade comes from the model's ordinal decoding
(expected grade cut at fitted thresholds), which answers another question (which grade?) and can
put a photograph with ``p_referable`` 0.45 at grade 2. Reports show both, and mark a photograph
whose grade and referral disagree.
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import torch

REFERABLE_GRADE = 2
"""ICDR grade from which DR is referable (moderate or worse)."""

DEFAULT_REFERABLE_THRESHOLD = 0.5
"""The decision threshold of a model that stores none."""

Array = TypeVar("Array", np.ndarray, torch.Tensor)


def referable_probability(probs: Array) -> Array:
    """``p_referable`` ``[N]`` of class probabilities ``[N,C]``: the sum of ``p_k`` for ``k >= 2``."""
    if probs.ndim != 2 or probs.shape[1] <= REFERABLE_GRADE:
        raise ValueError(
            f"probabilities of shape {tuple(probs.shape)}: referable DR (grade >= "
            f"{REFERABLE_GRADE}) needs [N,C] with C > {REFERABLE_GRADE}"
        )
    return probs[:, REFERABLE_GRADE:].sum(1)


def is_referable(p_referable: Array, threshold: float | None = None) -> Array:
    """The referral decision ``[N]`` bool: ``p_referable >= threshold`` (None: the default)."""
    return p_referable >= (DEFAULT_REFERABLE_THRESHOLD if threshold is None else threshold)


def referable_truth(grades: Array) -> Array:
    """Referable DR ``[N]`` bool of reference grades: ``grade >= REFERABLE_GRADE``."""
    return grades >= REFERABLE_GRADE


def model_threshold(metadata: dict | None) -> float:
    """The referral threshold a checkpoint or release stores (``referable_threshold``), else the default."""
    value = (metadata or {}).get("referable_threshold")
    return DEFAULT_REFERABLE_THRESHOLD if value is None else float(value)
