"""Flip test-time augmentation, one definition for evaluation (``test.tta``, test.py --tta) and
predict.py --tta: the input is flipped, the whole pipeline runs on each view, and the grade
probabilities are the mean over the views.

The views are the four flips a fundus photograph can take without changing its grade: identity,
left-right (a left eye seen as a right one), top-bottom, and both; ``data.flip`` trains on the same
flips. The input is flipped before anything runs (the LR image before the ISR net in LR mode).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

FLIPS: tuple[tuple[int, ...], ...] = (
    (),
    (-1,),
    (-2,),
    (-2, -1),
)  # identity, left-right, top-bottom, both


def flip(images: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """``images`` ``[N,C,H,W]`` flipped along ``dims`` (unchanged for the identity view)."""
    return images.flip(dims) if dims else images


def mean_over_views(probs: torch.Tensor) -> torch.Tensor:
    """Per-view probabilities ``[V,N,C]`` -> their mean ``[N,C]``: TTA's grade probabilities."""
    return probs.mean(dim=0)


def flip_averaged_probabilities(
    grade_logits: Callable[[torch.Tensor], torch.Tensor],
    source: torch.Tensor,
    identity_probs: torch.Tensor | None = None,
    views: Sequence[tuple[int, ...]] = FLIPS,
) -> torch.Tensor:
    """Mean over ``views`` of ``softmax(grade_logits(flip(source)))``: ``[N,C]`` float32.

    ``grade_logits`` runs the pipeline from its input (LR or HR) to grade logits; one view at a
    time, so memory stays that of one pass. ``identity_probs``: the unflipped view's probabilities,
    already computed by the caller (not run again).
    """
    per_view = []
    for dims in views:
        if not dims and identity_probs is not None:
            per_view.append(identity_probs.float())
        else:
            per_view.append(torch.softmax(grade_logits(flip(source, dims)).float(), dim=1))
    return mean_over_views(torch.stack(per_view))
