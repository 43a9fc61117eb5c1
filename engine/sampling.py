"""Class-balanced sampling of training images (``data.balanced_sampling``).

IDRiD's 332 graded training images hold grades 0-4 in very unequal numbers; drawing each image
with probability proportional to ``1 / count(its grade)`` shows the grader every grade about
equally often. Class weights in the loss (``loss.class_weights=auto``) correct the same
imbalance a second time: with both on, the rare grades count about ``max count / min count``
times more than the common ones instead of equally (the trainer logs a warning).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from engine.distributed import SINGLE_PROCESS, EpochShuffleSampler, World


def balanced_weights(grades: Sequence[int]) -> torch.Tensor:
    """Per-image draw weights: ``1 / count(grade)`` for graded images, scaled so the graded images
    keep their share of the draws; an ungraded image (grade -1, e.g. segmentation-only in the joint
    stage) keeps weight 1, as it would in a uniform draw."""
    grades = torch.as_tensor(list(grades), dtype=torch.long)
    weights = torch.ones(len(grades), dtype=torch.float64)
    graded = grades >= 0
    if graded.any():
        counts = torch.bincount(grades[graded])
        present = int((counts > 0).sum())
        weights[graded] = int(graded.sum()) / (present * counts[grades[graded]].double())
    return weights


class BalancedSampler(EpochShuffleSampler):
    """Epoch ``epoch`` draws ``ceil(length / ranks) * ranks`` images with replacement, probability
    proportional to ``weights``, from a generator seeded with ``seed + epoch`` (the same on every
    rank), dealt round robin by :class:`engine.distributed.EpochShuffleSampler`: same epoch length,
    same ``set_epoch(epoch, start)`` for a run resumed inside an epoch."""

    def __init__(
        self, weights: Sequence[float] | torch.Tensor, seed: int, world: World = SINGLE_PROCESS
    ) -> None:
        self.weights = torch.as_tensor(weights, dtype=torch.float64)
        if (
            self.weights.ndim != 1
            or len(self.weights) == 0
            or not bool((self.weights >= 0).all())
            or not bool(self.weights.sum() > 0)
        ):
            raise ValueError(
                "sampling weights must be a non-empty list of non-negative numbers, not all zero"
            )
        super().__init__(len(self.weights), seed, world)

    def _epoch_order(self, generator: torch.Generator, total: int) -> list[int]:
        return torch.multinomial(
            self.weights, total, replacement=True, generator=generator
        ).tolist()
