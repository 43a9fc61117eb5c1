"""Every metric of the project, implemented once, with its conventions stated where it is computed.

Three groups (DESIGN.md section 6):

- grading: accuracy, quadratic weighted kappa, macro F1, one-vs-rest AUC, referable DR (grade >= 2),
  confusion matrix. Small ``N``: computed with scikit-learn on the host.
- super-resolution: PSNR and SSIM (Wang et al. 2004) inside the field of view, and PSNR inside
  lesion regions. Batched torch on the tensors' own device; per-image values (a split's number
  is their mean, taken in engine/evaluator.py).
- segmentation: per-lesion AUPR and ROC AUC over pooled pixels (IDRiD convention) from per-bin
  histograms accumulated on the device, and Dice at 0.5 per image.

Results are plain Python floats/ints/lists so they ``json.dump`` directly; an undefined value is
``float("nan")`` (``json.dump`` writes it as ``NaN``).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import (
    cohen_kappa_score,
    f1_score,
    roc_auc_score,
    roc_curve,
)

from data.records import LESIONS, UNKNOWN_GRADE, DataError
from evaluation.referable import (
    REFERABLE_GRADE,
    is_referable,
    referable_probability,
    referable_truth,
)
from models.ordinal import decode_grades

MSE_FLOOR = 1e-10
"""Lower bound on the MSE so identical images give a finite PSNR (100 dB) instead of inf."""

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_C1 = 0.01**2
SSIM_C2 = 0.03**2

LESION_DILATION_AT_1024 = 4
"""Lesion masks are dilated by this many pixels at an HR height of 1024 (scaled with H)."""

DICE_THRESHOLD = 0.5
"""A pixel is predicted positive when its probability is >= this (MONAI ``AsDiscrete`` style)."""

NAN = float("nan")


# --------------------------------------------------------------------------------------------------
# Grading
# --------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------
# Super-resolution
# --------------------------------------------------------------------------------------------------


def _check_pair(sr: torch.Tensor, hr: torch.Tensor, region: torch.Tensor | None) -> None:
    """Shapes: ``sr`` and ``hr`` ``[N,C,H,W]`` alike, region ``[N,1,H,W]``."""
    if sr.ndim != 4 or sr.shape != hr.shape:
        raise ValueError(
            "expected sr and hr of the same shape [N,3,H,W]; "
            f"got {tuple(sr.shape)} and {tuple(hr.shape)}"
        )
    if region is not None and region.shape != (sr.shape[0], 1, *sr.shape[-2:]):
        raise ValueError(
            f"expected a mask [N,1,H,W] = {(sr.shape[0], 1, *sr.shape[-2:])}; "
            f"got {tuple(region.shape)}"
        )


def _masked_image_mean(values: torch.Tensor, region: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``values [N,C,H,W]`` per image over all channels and the pixels where
    ``region [N,1,H,W]`` is set (all pixels when None) -> ``[N]``; NaN for an empty region."""
    if region is None:
        return values.flatten(1).mean(1)
    weight = region.to(values.dtype).expand_as(values)
    return (values * weight).flatten(1).sum(1) / weight.flatten(1).sum(1)


def psnr_per_image(
    sr: torch.Tensor, hr: torch.Tensor, region: torch.Tensor | None = None
) -> torch.Tensor:
    """PSNR in dB of each image, data range 1: ``10 log10(1 / MSE)``.

    Args:
        sr, hr: ``[N,3,H,W]`` in [0,1] (no clamping, no border crop, RGB).
        region: ``[N,1,H,W]`` in {0,1} (field of view, lesion area) or None for the whole image; the
            MSE is over the pixels inside it and all channels.

    Returns ``[N]`` float on the input device. MSE is floored at ``MSE_FLOOR`` (PSNR <= 100 dB);
    an image with an empty region gives NaN.
    """
    _check_pair(sr, hr, region)
    mse = _masked_image_mean((sr.float() - hr.float()).square(), region)
    return 10.0 * torch.log10(1.0 / mse.clamp_min(MSE_FLOOR))


def _gaussian_window(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Normalised 1-D Gaussian, ``SSIM_WINDOW`` taps, sigma ``SSIM_SIGMA`` -> ``[SSIM_WINDOW]``."""
    x = torch.arange(SSIM_WINDOW, device=device, dtype=dtype) - (SSIM_WINDOW - 1) / 2
    w = torch.exp(-(x**2) / (2 * SSIM_SIGMA**2))
    return w / w.sum()


def _gaussian_filter_valid(x: torch.Tensor) -> torch.Tensor:
    """Separable depthwise Gaussian with no padding: ``[N,K,H,W]`` -> ``[N,K,H-10,W-10]``."""
    channels = x.shape[1]
    w = _gaussian_window(x.device, x.dtype)
    x = F.conv2d(x, w.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)
    return F.conv2d(x, w.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)


def ssim_map(sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
    """Local SSIM of Wang et al. 2004 per channel over the 'valid' region -> ``[N,C,H-10,W-10]``.

    Gaussian window 11 taps, sigma 1.5; ``C1 = 0.01^2``, ``C2 = 0.03^2`` (data range 1); population
    (co)variances; no padding, so each value sees only real pixels. Averaging the map over pixels
    and channels equals skimage ``structural_similarity(gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=1, channel_axis=-1)``, which crops the same 5-px border.

    Computed in float32 (float64 inputs stay float64) on values shifted by 0.5, the middle of the
    data range: (co)variances do not change with the shift, and ``E[x^2] - E[x]^2`` of values in
    [-0.5, 0.5] keeps float32 within ~1e-6 of float64, at a fifth of float64's CPU time.
    """
    height, width = sr.shape[-2:]
    if height < SSIM_WINDOW or width < SSIM_WINDOW:
        raise ValueError(
            f"SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW}; got {height}x{width}"
        )
    dtype = torch.float64 if torch.float64 in (sr.dtype, hr.dtype) else torch.float32
    x, y = sr.to(dtype), hr.to(dtype)
    shift = 0.5
    x, y = x - shift, y - shift
    stats = _gaussian_filter_valid(torch.cat([x, y, x * x, y * y, x * y], dim=1))
    mx, my, mxx, myy, mxy = stats.chunk(5, dim=1)
    vx, vy, cxy = mxx - mx * mx, myy - my * my, mxy - mx * my
    mx, my = mx + shift, my + shift
    luminance = (2 * mx * my + SSIM_C1) / (mx * mx + my * my + SSIM_C1)
    structure = (2 * cxy + SSIM_C2) / (vx + vy + SSIM_C2)
    return luminance * structure


def ssim_per_image(
    sr: torch.Tensor, hr: torch.Tensor, region: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean SSIM of each image (see ``ssim_map``) -> ``[N]`` float32 on the input device.

    Args:
        sr, hr: ``[N,3,H,W]`` in [0,1], ``H, W >= 11`` (ValueError otherwise).
        region: ``[N,1,H,W]`` in {0,1} or None. When given, the map is averaged over the window
            centres inside it: the region is cropped by 5 px per side to the map's valid area.
    """
    _check_pair(sr, hr, region)
    local = ssim_map(sr, hr)
    border = (SSIM_WINDOW - 1) // 2
    if region is not None:
        region = region[..., border:-border, border:-border]
    return _masked_image_mean(local, region).float()


def lesion_region(lesion_masks: torch.Tensor, fov: torch.Tensor | None = None) -> torch.Tensor:
    """Where lesion PSNR is measured: union of the lesion masks, dilated, inside the FOV.

    ``lesion_masks [N,L,H,W]`` {0,1} -> ``[N,1,H,W]`` {0,1}. The dilation radius is
    ``round(4 * H / 1024)`` px (at least 1): 4 px at 1024, scaled with resolution. It is a max-pool
    (square structuring element) on the device. Pass masks zeroed where a lesion is not annotated.
    """
    radius = max(1, round(LESION_DILATION_AT_1024 * lesion_masks.shape[-2] / 1024))
    union = (lesion_masks > 0.5).amax(dim=1, keepdim=True).float()
    region = F.max_pool2d(union, kernel_size=2 * radius + 1, stride=1, padding=radius)
    return region if fov is None else region * (fov > 0.5)


# --------------------------------------------------------------------------------------------------
# Segmentation
# --------------------------------------------------------------------------------------------------


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
