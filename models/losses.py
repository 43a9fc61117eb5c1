"""Losses of DeepMT-DR, used by the stage steps of engine/steps.py. Weights live in the config
(``LossConfig`` of engine/config_schema.py), not here.

Departures from the published code (docs/DIFFERENCES.md lists them, B8 for the Dice): Dice is
the standard soft Dice with the factor 2 (upstream's per-pixel form had its optimum at p=0.73),
computed per lesion over the batch on the device; invalid lesion channels (no ground truth) are
ignored; the segmentation-aware loss compares probabilities, not logits.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


def pixel_loss(sr: torch.Tensor, hr: torch.Tensor, kind: str = "mse") -> torch.Tensor:
    """SR reconstruction loss, ``mse`` (the published code) or ``l1`` (the paper's figure)."""
    if kind == "mse":
        return F.mse_loss(sr, hr)
    if kind == "l1":
        return F.l1_loss(sr, hr)
    raise ValueError(f"pixel loss must be 'mse' or 'l1', got {kind!r}")


def tv_loss(image: torch.Tensor) -> torch.Tensor:
    """Total variation (SRGAN form): mean squared vertical plus horizontal differences, x2."""
    dy = (image[..., 1:, :] - image[..., :-1, :]).pow(2).mean()
    dx = (image[..., :, 1:] - image[..., :, :-1]).pow(2).mean()
    return 2 * (dy + dx)


def _valid_weights(masks: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``[N,L]`` float weights from ``valid [N,L]`` bool, broadcastable to ``[N,L,1,1]``."""
    if valid.shape != masks.shape[:2]:
        raise ValueError(
            f"mask_valid shape {tuple(valid.shape)} does not match masks {tuple(masks.shape[:2])}"
        )
    return valid.to(masks.dtype)


def dice_loss(
    logits: torch.Tensor, masks: torch.Tensor, valid: torch.Tensor, smooth: float = 1.0
) -> torch.Tensor:
    """Soft Dice ``1 - (2|P.G| + s) / (|P| + |G| + s)`` per lesion over the batch's valid images, mean over lesions.

    Pooling the batch (rather than scoring each image) keeps images without a lesion from pulling
    that lesion's map to zero everywhere, which made rare lesions collapse to a constant output.
    """
    weights = _valid_weights(masks, valid)[:, :, None, None]
    probs = torch.sigmoid(logits) * weights
    masks = masks * weights
    intersection = (probs * masks).sum(dim=(0, 2, 3))
    total = probs.sum(dim=(0, 2, 3)) + masks.sum(dim=(0, 2, 3))
    loss = 1 - (2 * intersection + smooth) / (total + smooth)
    present = valid.any(dim=0).to(loss.dtype)
    return (loss * present).sum() / present.sum().clamp_min(1)


def focal_loss(
    logits: torch.Tensor,
    masks: torch.Tensor,
    valid: torch.Tensor,
    alpha: float = 0.25,
    gamma: float = 2.0,
) -> torch.Tensor:
    """Sigmoid focal loss (Lin et al. 2017), mean over pixels of valid lesion channels."""
    bce = F.binary_cross_entropy_with_logits(logits, masks, reduction="none")
    p_true = torch.exp(-bce)
    alpha_t = alpha * masks + (1 - alpha) * (1 - masks)
    loss = (alpha_t * (1 - p_true).pow(gamma) * bce).mean(dim=(2, 3))
    weights = _valid_weights(masks, valid)
    return (loss * weights).sum() / weights.sum().clamp_min(1)


def weighted_bce_loss(
    logits: torch.Tensor, masks: torch.Tensor, valid: torch.Tensor, pos_weight: float
) -> torch.Tensor:
    """Binary cross entropy with lesion pixels weighted ``pos_weight`` (the background 1), mean over
    pixels of valid lesion channels: the segmentation literature's other answer to lesions that
    cover 0.1% of a photograph."""
    weight = torch.as_tensor(pos_weight, dtype=logits.dtype, device=logits.device)
    bce = F.binary_cross_entropy_with_logits(logits, masks, reduction="none", pos_weight=weight)
    weights = _valid_weights(masks, valid)
    return (bce.mean(dim=(2, 3)) * weights).sum() / weights.sum().clamp_min(1)


SEG_LOSSES = ("dice_focal", "dice_bce")


def segmentation_loss(
    logits: torch.Tensor,
    masks: torch.Tensor,
    valid: torch.Tensor,
    kind: str = "dice_focal",
    pos_weight: float = 10.0,
) -> torch.Tensor:
    """Dice plus focal (``kind="dice_focal"``) or plus positive-weighted BCE (``"dice_bce"``) on
    the lesion channels that have ground truth (``loss.seg_loss``, ``loss.seg_pos_weight``)."""
    if kind == "dice_focal":
        return dice_loss(logits, masks, valid) + focal_loss(logits, masks, valid)
    if kind == "dice_bce":
        return dice_loss(logits, masks, valid) + weighted_bce_loss(logits, masks, valid, pos_weight)
    raise ValueError(f"segmentation loss {kind!r} is not one of {SEG_LOSSES}")


def seg_aware_loss(sr_lesion_logits: torch.Tensor, hr_lesion_logits: torch.Tensor) -> torch.Tensor:
    """MSE between lesion probabilities on SR and (constant) on HR: SR should keep what seg sees."""
    return F.mse_loss(torch.sigmoid(sr_lesion_logits), torch.sigmoid(hr_lesion_logits).detach())


def task_aware_loss(sr_attention: torch.Tensor, hr_attention: torch.Tensor) -> torch.Tensor:
    """MSE between the grader's fused Grad-CAM on SR and (constant) on HR."""
    return F.mse_loss(sr_attention, hr_attention.detach())


def grading_loss(
    logits: torch.Tensor,
    grades: torch.Tensor,
    class_weights: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Class-weighted cross entropy, with ``label_smoothing`` (torch's convention: the target is
    ``1 - s`` on the grade plus ``s / C`` everywhere); grade -1 (unknown) is ignored. Zero if no
    sample is graded."""
    known = grades >= 0
    # Multiplying by 0 rather than branching on known.any() avoids a host synchronisation.
    loss = F.cross_entropy(
        logits,
        grades.clamp_min(0),
        weight=class_weights,
        reduction="none",
        label_smoothing=label_smoothing,
    )
    weights = known.to(logits.dtype) * (
        class_weights[grades.clamp_min(0)] if class_weights is not None else 1
    )
    return (loss * known).sum() / weights.sum().clamp_min(1e-12)


def ordinal_loss(logits: torch.Tensor, grades: torch.Tensor) -> torch.Tensor:
    """SmoothL1 (beta 1) between the expected grade ``sum_k softmax_k * k`` and the true grade, mean
    over graded samples (grade -1 ignored; zero if none). A grade off by two costs more than one off
    by one, as in quadratic weighted kappa; SmoothL1 rather than MSE keeps far misses from dominating."""
    known = grades >= 0
    scale = torch.arange(logits.shape[1], device=logits.device, dtype=torch.float32)
    expected = torch.softmax(logits.float(), dim=1) @ scale
    loss = F.smooth_l1_loss(expected, grades.clamp_min(0).float(), reduction="none")
    return (loss * known).sum() / known.sum().clamp_min(1)


def class_weights_from_counts(counts: torch.Tensor) -> torch.Tensor:
    """Inverse-frequency weights normalised to mean 1 over present classes; absent classes get 0."""
    counts = counts.float()
    weights = torch.where(counts > 0, counts.sum() / counts.clamp_min(1), torch.zeros_like(counts))
    present = (counts > 0).sum().clamp_min(1)
    return weights * present / weights.sum().clamp_min(1e-12)
