"""Every metric of the project, implemented once, with its conventions stated where it is computed.

Three groups, one module each (this module re-exports them, the names callers import):

- grading (``evaluation/metrics_grading.py``): accuracy, quadratic weighted kappa, macro F1,
  one-vs-rest AUC, referable DR (grade >= 2), confusion matrix, ROC curves. Small ``N``:
  computed with scikit-learn on the host.
- super-resolution (``evaluation/metrics_sr.py``): PSNR and SSIM (Wang et al. 2004) inside the
  field of view, and PSNR inside lesion regions. Batched torch on the tensors' own device;
  per-image values (a split's number is their mean, taken in engine/evaluator.py).
- segmentation (``evaluation/metrics_segmentation.py``): per-lesion AUPR and ROC AUC over pooled
  pixels (IDRiD convention) from per-bin histograms accumulated on the device, and Dice at 0.5
  per image.

Results are plain Python floats/ints/lists so they ``json.dump`` directly; an undefined value is
``float("nan")`` (``json.dump`` writes it as ``NaN``). The intervals, calibration and operating
points reported beside these point metrics are in ``evaluation/statistics.py``.
"""

from __future__ import annotations

from evaluation.metrics_grading import (
    NAN,
    REFERABLE_GRADE,
    _as_numpy,
    _binary_auc,
    _nanmean,
    _quadratic_kappa,
    grading_metrics,
    roc_curves,
)
from evaluation.metrics_segmentation import DICE_THRESHOLD, SegmentationMetrics
from evaluation.metrics_sr import (
    LESION_DILATION_AT_1024,
    MSE_FLOOR,
    SSIM_C1,
    SSIM_C2,
    SSIM_SIGMA,
    SSIM_WINDOW,
    lesion_region,
    psnr_per_image,
    ssim_map,
    ssim_per_image,
)

__all__ = [
    "DICE_THRESHOLD",
    "LESION_DILATION_AT_1024",
    "MSE_FLOOR",
    "NAN",
    "REFERABLE_GRADE",
    "SSIM_C1",
    "SSIM_C2",
    "SSIM_SIGMA",
    "SSIM_WINDOW",
    "SegmentationMetrics",
    "_as_numpy",
    "_binary_auc",
    "_nanmean",
    "_quadratic_kappa",
    "grading_metrics",
    "lesion_region",
    "psnr_per_image",
    "roc_curves",
    "ssim_map",
    "ssim_per_image",
]
