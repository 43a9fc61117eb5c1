"""Figures of an evaluation (``test.py``) and of ``predict.py``'s reference summary: confusion
matrix, ROC, reliability diagram, lesion precision-recall, and the per-sample panel.

Figures are built on ``matplotlib.figure.Figure`` with an explicit Agg canvas, never through
``pyplot``: no GUI backend, no global figure registry to leak into, safe in headless jobs and
worker processes. Each plot function creates the parent folders, writes a PNG at ``DPI`` and
returns its ``Path``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from data.records import LESIONS
from evaluation.metrics_segmentation import DICE_THRESHOLD
from evaluation.metrics_sr import psnr_per_image

DPI = 100
PANEL_INCHES = 2.6
"""Side of one image panel in the per-sample figure."""

Array = np.ndarray | torch.Tensor


def _new_figure(width: float, height: float) -> Figure:
    """A figure on an Agg canvas (no pyplot), laid out with constrained layout."""
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Figure, path: str | Path) -> Path:
    """Write the PNG (creating parent folders) and return its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=DPI)
    return path


def plot_confusion(
    confusion: Sequence[Sequence[int]], path: str | Path, class_names: Sequence[str] | None = None
) -> Path:
    """Confusion matrix, rows = truth, columns = prediction; colour = fraction of the true class
    (so rare grades stay visible), text = counts."""
    counts = np.asarray(confusion, dtype=np.int64)
    names = list(class_names) if class_names is not None else [str(c) for c in range(len(counts))]
    fractions = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    figure = _new_figure(2.0 + 0.8 * len(names), 1.4 + 0.8 * len(names))
    ax = figure.add_subplot()
    image = ax.imshow(fractions, cmap="Blues", vmin=0, vmax=1)
    for (row, col), count in np.ndenumerate(counts):
        ax.text(
            col,
            row,
            str(count),
            ha="center",
            va="center",
            color="white" if fractions[row, col] > 0.5 else "black",
        )
    ax.set(xticks=range(len(names)), yticks=range(len(names)), xticklabels=names, yticklabels=names)
    ax.set(xlabel="predicted grade", ylabel="true grade", title="Confusion matrix")
    ax.tick_params(axis="x", labelrotation=30)
    figure.colorbar(image, ax=ax, shrink=0.8, label="fraction of true grade")
    return _save(figure, path)


def plot_roc(curves: dict, path: str | Path, class_names: Sequence[str] | None = None) -> Path:
    """One-vs-rest ROC per grade and the referable-DR ROC, from ``metrics.roc_curves``."""
    figure = _new_figure(5.5, 5.0)
    ax = figure.add_subplot()
    for c, curve in curves["per_class"].items():
        name = class_names[c] if class_names is not None else f"grade {c}"
        ax.plot(curve["fpr"], curve["tpr"], lw=1.2, label=f"{name} (AUC {curve['auc']:.3f})")
    if curves.get("referable") is not None:
        referable = curves["referable"]
        ax.plot(
            referable["fpr"],
            referable["tpr"],
            "k",
            lw=2.2,
            label=f"referable >= 2 (AUC {referable['auc']:.3f})",
        )
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8)
    ax.set(
        xlim=(0, 1),
        ylim=(0, 1.01),
        xlabel="false positive rate",
        ylabel="true positive rate",
        title="ROC",
    )
    ax.legend(loc="lower right", fontsize="small")
    return _save(figure, path)


def _pr_axes(ax: Axes, name: str, curve: dict) -> None:
    """One lesion's PR curve (steps, as AP integrates it) with its prevalence as the chance line."""
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="recall", ylabel="precision", title=name)
    if math.isnan(curve["aupr"]):
        ax.text(0.5, 0.5, "no positive pixels\nor no valid masks", ha="center", va="center")
        return
    ax.step(
        curve["recall"], curve["precision"], where="pre", lw=1.4, label=f"AUPR {curve['aupr']:.3f}"
    )
    ax.axhline(
        curve["prevalence"],
        ls="--",
        color="grey",
        lw=0.8,
        label=f"chance {curve['prevalence']:.2e}",
    )
    ax.legend(loc="lower left", fontsize="small")


def plot_reliability(bins: dict, path: str | Path) -> Path:
    """Reliability diagram: accuracy against mean confidence per confidence bin (top label), with
    the bin counts; the diagonal is perfect calibration."""
    figure = _new_figure(5.5, 5.0)
    ax = figure.add_subplot()
    lower, upper = np.asarray(bins["lower"]), np.asarray(bins["upper"])
    accuracy, count = np.asarray(bins["accuracy"], dtype=float), np.asarray(bins["count"])
    filled = count > 0
    ax.bar(
        lower[filled],
        accuracy[filled],
        width=(upper - lower)[filled],
        align="edge",
        edgecolor="k",
        alpha=0.7,
        label="accuracy",
    )
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8, label="perfect calibration")
    for left, width, height, n in zip(
        lower[filled], (upper - lower)[filled], accuracy[filled], count[filled]
    ):
        ax.text(
            left + width / 2, min(height + 0.02, 0.97), str(int(n)), ha="center", fontsize="x-small"
        )
    ax.set(
        xlim=(0, 1),
        ylim=(0, 1.01),
        xlabel="confidence (top grade probability)",
        ylabel="accuracy",
        title="Reliability (numbers: images per bin)",
    )
    ax.legend(loc="upper left", fontsize="small")
    return _save(figure, path)


def plot_lesion_pr(curves: dict, path: str | Path) -> Path:
    """Precision-recall per lesion, one subplot each, from ``SegmentationMetrics.curves()``."""
    names = list(curves)
    cols = 2
    rows = math.ceil(len(names) / cols)
    figure = _new_figure(4.0 * cols, 3.6 * rows)
    for index, name in enumerate(names):
        _pr_axes(figure.add_subplot(rows, cols, index + 1), name, curves[name])
    return _save(figure, path)


def _to_numpy(x: Array) -> np.ndarray:
    """Host float array of a tensor or array."""
    if isinstance(x, torch.Tensor):
        return x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float32)


def _rgb(image: Array) -> np.ndarray:
    """``[3,H,W]`` in [0,1] -> ``[H,W,3]`` clipped to [0,1] for ``imshow``."""
    return np.clip(np.moveaxis(_to_numpy(image), 0, -1), 0, 1)


def _nearest_resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize of ``[h,w,...]``: shows the LR pixels at HR size, unsmoothed."""
    rows = np.arange(height) * image.shape[0] // height
    cols = np.arange(width) * image.shape[1] // width
    return image[rows][:, cols]


def _psnr(image: Array, reference: Array) -> float:
    """Whole-image PSNR (dB) of one ``[3,H,W]`` image, for panel titles."""
    as_batch = [torch.as_tensor(_to_numpy(x)).unsqueeze(0) for x in (image, reference)]
    return float(psnr_per_image(*as_batch)[0])


def _show(ax: Axes, image: np.ndarray, title: str, **style) -> None:
    """An image panel without ticks."""
    ax.imshow(image, interpolation="nearest", **style)
    ax.set_title(title, fontsize="small")
    ax.set_axis_off()


def _image_row(
    axes: Sequence[Axes], lr: Array, bicubic: Array, sr: Array, hr: Array, cam: Array | None
) -> None:
    """LR (nearest, at HR size), bicubic and SR with their PSNR, HR, and Grad-CAM over SR."""
    hr_rgb, sr_rgb = _rgb(hr), _rgb(sr)
    height, width = hr_rgb.shape[:2]
    lr_rgb = _rgb(lr)
    _show(
        axes[0], _nearest_resize(lr_rgb, height, width), f"LR {lr_rgb.shape[0]}x{lr_rgb.shape[1]}"
    )
    _show(axes[1], _rgb(bicubic), f"bicubic {_psnr(bicubic, hr):.2f} dB")
    _show(axes[2], sr_rgb, f"SR {_psnr(sr, hr):.2f} dB")
    _show(axes[3], hr_rgb, f"HR {height}x{width}")
    if cam is not None:
        _show(axes[4], sr_rgb, "Grad-CAM on SR")
        axes[4].imshow(_to_numpy(cam).reshape(height, width), cmap="jet", alpha=0.5, vmin=0, vmax=1)


def _agreement_image(probability: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Prediction at 0.5 against GT as RGB ``[H,W,3]``: true positive green, false positive red,
    false negative blue, background black."""
    predicted, truth = probability >= DICE_THRESHOLD, mask > 0.5
    return np.stack([predicted & ~truth, predicted & truth, ~predicted & truth], axis=-1).astype(
        np.float32
    )


def _lesion_row(
    axes: Sequence[Axes], name: str, probability: np.ndarray, mask: np.ndarray, valid: bool
) -> None:
    """Predicted probability (GT contour in cyan), GT mask, and their agreement at 0.5."""
    _show(axes[0], probability, f"{name} probability", cmap="magma", vmin=0, vmax=1)
    if not valid:
        _show(
            axes[1],
            np.zeros_like(probability),
            f"{name} GT: not annotated",
            cmap="gray",
            vmin=0,
            vmax=1,
        )
        return
    if 0 < mask.max() and mask.min() < 1:
        axes[0].contour(mask, levels=[0.5], colors="cyan", linewidths=0.6)
    _show(axes[1], mask, f"{name} ground truth", cmap="gray", vmin=0, vmax=1)
    _show(axes[2], _agreement_image(probability, mask), f"{name} TP green FP red FN blue")


def plot_sample_panel(
    path: str | Path,
    lr: Array,
    bicubic: Array,
    sr: Array,
    hr: Array,
    lesion_probs: Array,
    lesion_masks: Array,
    cam: Array | None = None,
    title: str = "",
    lesion_valid: Sequence[bool] | None = None,
) -> Path:
    """One sample at a glance: images in the first row, then one row per lesion.

    Args:
        lr: ``[3,h,w]``; bicubic, sr, hr: ``[3,H,W]``; all in [0,1] (torch or numpy).
        lesion_probs, lesion_masks: ``[4,H,W]`` probabilities in [0,1] and GT in {0,1}; with
            ``[0,H,W]`` probabilities (segmentation ablated) only the image row is drawn.
        cam: ``[1,H,W]`` or ``[H,W]`` in [0,1], drawn over SR (jet, alpha 0.5), or None.
        title: figure title (e.g. image id, true and predicted grade).
        lesion_valid: ``[4]`` bools, False where the GT mask does not exist (drawn as such).
    """
    probabilities, masks = _to_numpy(lesion_probs), _to_numpy(lesion_masks)
    valid = [True] * len(masks) if lesion_valid is None else [bool(v) for v in lesion_valid]
    cols = 5 if cam is not None else 4
    rows = 1 + len(probabilities)
    figure = _new_figure(PANEL_INCHES * cols, PANEL_INCHES * rows + 0.4)
    axes = figure.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    _image_row(axes[0], lr, bicubic, sr, hr, cam)
    count = len(probabilities)
    names = LESIONS if count == len(LESIONS) else [f"L{i}" for i in range(count)]
    for index, name in enumerate(names):
        _lesion_row(axes[index + 1], name, probabilities[index], masks[index], valid[index])
    figure.suptitle(title)
    return _save(figure, path)
