"""Lesion-segmentation metrics: per-lesion AUPR and ROC AUC over pooled pixels (IDRiD convention)
from per-bin histograms accumulated on the device, and Dice at 0.5 per image
(:class:`SegmentationMetrics`; its docstring states every convention).
"""

from __future__ import annotations

import numpy as np
import torch

from data.records import LESIONS
from evaluation.metrics_grading import NAN, _nanmean

DICE_THRESHOLD = 0.5
"""A pixel is predicted positive when its probability is >= this (MONAI ``AsDiscrete`` style)."""


def _binned_curve(pos: np.ndarray, neg: np.ndarray) -> dict:
    """PR and ROC curves from per-bin pixel counts ``[B]`` (bin b covers ``[b/B, (b+1)/B)``).

    Thresholds run from the highest occupied bin down; pixels sharing a bin are tied scores, as
    sklearn treats equal scores. ``precision/recall`` start at ``(1, 0)``, ``fpr/tpr`` at
    ``(0, 0)``.
    """
    occupied = (pos + neg) > 0
    tp = np.cumsum(pos[::-1][occupied[::-1]]).astype(np.float64)
    fp = np.cumsum(neg[::-1][occupied[::-1]]).astype(np.float64)
    n_pos, n_neg = pos.sum(), neg.sum()
    recall = tp / n_pos if n_pos else np.full_like(tp, np.nan)
    fpr = fp / n_neg if n_neg else np.full_like(fp, np.nan)
    return {
        "precision": np.concatenate([[1.0], tp / (tp + fp)]),
        "recall": np.concatenate([[0.0], recall]),
        "fpr": np.concatenate([[0.0], fpr]),
        "tpr": np.concatenate([[0.0], recall]),
    }


def _average_precision(curve: dict) -> float:
    """AP = sum_n (R_n - R_{n-1}) P_n, sklearn's step definition (no interpolation)."""
    return float(np.sum(np.diff(curve["recall"]) * curve["precision"][1:]))


def _trapezoid_auc(curve: dict) -> float:
    """ROC AUC by the trapezoidal rule over the binned ROC points."""
    fpr, tpr = curve["fpr"], curve["tpr"]
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))


class SegmentationMetrics:
    """Streaming lesion-segmentation metrics, accumulated on the device batch by batch.

    Conventions, per lesion (MA, HE, EX, SE), over the images where that lesion's mask is valid:

    - ``aupr``: average precision ``sum_n (R_n - R_{n-1}) P_n`` (sklearn's step definition) and
      ``auc``: ROC AUC (trapezoidal), both over pixels POOLED across images (IDRiD challenge
      convention). Computed from histograms of positive / negative pixel counts in ``num_bins``
      equal-width probability bins (``[b/B, (b+1)/B)``, 1.0 in the last); pixels in one bin count
      as tied scores. With probabilities on bin centres this is exactly sklearn's
      ``average_precision_score`` / ``roc_auc_score``; otherwise within about ``1/num_bins``.
      ``aupr`` is NaN without positive pixels, ``auc`` without positive or negative pixels.
    - ``dice``: ``2|P n G| / (|P| + |G|)`` per image at ``probs >= 0.5``; images whose ground truth
      is empty are skipped (MONAI ``ignore_empty=True``); mean over the rest, NaN if none.
    - ``prevalence``: fraction of positive pixels (the AUPR of a random predictor).
    - ``n_images``: images with a valid mask. A lesion with none has NaN metrics.

    ``mean`` averages ``aupr``, ``auc`` and ``dice`` over the lesions where they are defined.
    The state lives on ``device`` (default: the device of the first batch).
    """

    def __init__(
        self,
        num_lesions: int = len(LESIONS),
        num_bins: int = 1000,
        device: torch.device | str | None = None,
    ):
        self.num_lesions = num_lesions
        self.num_bins = num_bins
        self.device = torch.device(device) if device is not None else None
        self.names = (
            LESIONS if num_lesions == len(LESIONS) else tuple(f"L{i}" for i in range(num_lesions))
        )
        self._hist: torch.Tensor | None = None

    def _init_state(self, device: torch.device) -> None:
        """Zeroed accumulators: ``hist [L,2,B]`` (negatives, positives), Dice sum/count ``[L]``."""
        self.device = device
        self._hist = torch.zeros(
            self.num_lesions, 2, self.num_bins, dtype=torch.int64, device=device
        )
        self._dice_sum = torch.zeros(self.num_lesions, dtype=torch.float64, device=device)
        self._dice_count = torch.zeros(self.num_lesions, dtype=torch.int64, device=device)
        self._n_images = torch.zeros(self.num_lesions, dtype=torch.int64, device=device)

    def _check(self, probs: torch.Tensor, masks: torch.Tensor, valid: torch.Tensor) -> None:
        """``probs`` and ``masks`` ``[N,L,H,W]``, ``valid`` ``[N,L]``."""
        if probs.ndim != 4 or probs.shape != masks.shape or probs.shape[1] != self.num_lesions:
            raise ValueError(
                f"expected probs and masks [N,{self.num_lesions},H,W]; "
                f"got {tuple(probs.shape)} and {tuple(masks.shape)}"
            )
        if valid.shape != probs.shape[:2]:
            raise ValueError(
                f"expected valid [N,{self.num_lesions}] = {tuple(probs.shape[:2])}; "
                f"got {tuple(valid.shape)}"
            )

    def _update_histogram(
        self, probs: torch.Tensor, truth: torch.Tensor, valid: torch.Tensor
    ) -> None:
        """One ``bincount`` over ``(lesion, truth, bin)``; invalid channels go to a dropped slot."""
        lesions, bins = self.num_lesions, self.num_bins
        bin_index = (probs.float() * bins).long().clamp_(0, bins - 1)
        lesion = torch.arange(lesions, device=probs.device).view(1, -1, 1, 1)
        flat = (lesion * 2 + truth.long()) * bins + bin_index
        flat = torch.where(valid[:, :, None, None], flat, lesions * 2 * bins)
        counts = torch.bincount(flat.flatten(), minlength=lesions * 2 * bins + 1)
        self._hist += counts[:-1].view(lesions, 2, bins)

    def _update_dice(self, probs: torch.Tensor, truth: torch.Tensor, valid: torch.Tensor) -> None:
        """Per-image Dice ``[N,L]`` at ``DICE_THRESHOLD``, summed where GT is valid, non-empty."""
        predicted = probs >= DICE_THRESHOLD
        intersection = (predicted & truth).flatten(2).sum(2)
        truth_size = truth.flatten(2).sum(2)
        total = predicted.flatten(2).sum(2) + truth_size
        counted = valid & (truth_size > 0)
        dice = 2.0 * intersection.double() / total.clamp_min(1).double()
        self._dice_sum += torch.where(counted, dice, 0.0).sum(0)
        self._dice_count += counted.sum(0)

    def update(self, probs: torch.Tensor, masks: torch.Tensor, valid: torch.Tensor) -> None:
        """Add a batch: ``probs [N,L,H,W]`` sigmoid probabilities in [0,1], ``masks [N,L,H,W]``
        {0,1}, ``valid`` bool ``[N,L]`` (a channel counts only where valid). No host sync."""
        self._check(probs, masks, valid)
        if self._hist is None:
            self._init_state(self.device if self.device is not None else probs.device)
        probs, masks, valid = (
            probs.to(self.device),
            masks.to(self.device),
            valid.to(self.device).bool(),
        )
        truth = masks > 0.5
        self._update_histogram(probs, truth, valid)
        self._update_dice(probs, truth, valid)
        self._n_images += valid.sum(0)

    def all_reduce(self, device: torch.device | str | None = None) -> None:
        """Sum the accumulators over the processes of a distributed evaluation (in place).

        A process that saw no batch contributes zeros; the state must live on a device the
        process group's backend supports (the evaluation device).
        """
        import torch.distributed as dist

        if self._hist is None:
            self._init_state(
                torch.device(device) if device is not None else self.device or torch.device("cpu")
            )
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            for state in (self._hist, self._dice_sum, self._dice_count, self._n_images):
                dist.all_reduce(state)

    def _host_state(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Accumulators on the host (once per evaluation); zeros if nothing was added."""
        if self._hist is None:
            self._init_state(self.device if self.device is not None else torch.device("cpu"))
        return (
            self._hist.cpu().numpy(),
            self._dice_sum.cpu().numpy(),
            self._dice_count.cpu().numpy(),
            self._n_images.cpu().numpy(),
        )

    def curves(self) -> dict:
        """Per lesion ``{"precision", "recall", "fpr", "tpr"}`` numpy arrays in order of decreasing
        threshold, with ``aupr``, ``auc``, ``prevalence`` (for PR/ROC figures)."""
        hist, _, _, _ = self._host_state()
        result = {}
        for index, name in enumerate(self.names):
            neg, pos = hist[index]
            curve = _binned_curve(pos, neg)
            total = pos.sum() + neg.sum()
            curve["aupr"] = _average_precision(curve) if pos.sum() else NAN
            curve["auc"] = _trapezoid_auc(curve) if pos.sum() and neg.sum() else NAN
            curve["prevalence"] = float(pos.sum() / total) if total else NAN
            result[name] = curve
        return result

    def compute(self) -> dict:
        """``{lesion: {"aupr", "auc", "dice", "prevalence", "n_images"}, "mean": {"aupr", "auc",
        "dice"}}`` as plain floats/ints (conventions in the class docstring)."""
        curves = self.curves()
        _, dice_sum, dice_count, n_images = self._host_state()
        result = {}
        for index, name in enumerate(self.names):
            result[name] = {
                "aupr": curves[name]["aupr"],
                "auc": curves[name]["auc"],
                "dice": float(dice_sum[index] / dice_count[index]) if dice_count[index] else NAN,
                "prevalence": curves[name]["prevalence"],
                "n_images": int(n_images[index]),
            }
        result["mean"] = {
            key: _nanmean([result[name][key] for name in self.names])
            for key in ("aupr", "auc", "dice")
        }
        return result
