"""Figures, the stdout table and the HTML reports of an evaluation (``test.py``) and of
``predict.py``, drawn from the outputs of ``evaluation.metrics`` and the predictor's rows.

Figures are built on ``matplotlib.figure.Figure`` with an explicit Agg canvas, never through
``pyplot``: no GUI backend, no global figure registry to leak into, safe in headless jobs and
worker processes. Each plot function creates the parent folders, writes a PNG at ``DPI`` and
returns its ``Path``.
"""

from __future__ import annotations

import base64
import html
import math
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from data.records import GRADE_NAMES, LESIONS
from evaluation.metrics import DICE_THRESHOLD, psnr_per_image
from evaluation.referable import REFERABLE_GRADE, is_referable, model_threshold

DPI = 100
PANEL_INCHES = 2.6
"""Side of one image panel in the per-sample figure."""

Array = np.ndarray | torch.Tensor


# --------------------------------------------------------------------------------------------------
# Text table
# --------------------------------------------------------------------------------------------------


def _fmt(value: float | None, spec: str = ".4f") -> str:
    """A number for the table; ``n/a`` where it is undefined (None or NaN)."""
    if value is None or math.isnan(value):
        return "n/a"
    return format(value, spec)


def _rows(header: Sequence[str], rows: Sequence[Sequence[str]], width: int = 11) -> list[str]:
    """Fixed-width lines: a left-aligned label column, then right-aligned value columns."""

    def line(cells: Sequence[str]) -> str:
        return f"{cells[0]:<10}" + "".join(f"{cell:>{width}}" for cell in cells[1:])

    return [line(header)] + [line(row) for row in rows]


def _grading_block(grading: dict) -> list[str]:
    """Scalar grading metrics, then the confusion matrix (rows = truth, columns = prediction)."""
    scalars = [
        ("accuracy", "accuracy"),
        ("QWK", "qwk"),
        ("macro F1", "macro_f1"),
        ("macro AUC", "macro_auc"),
        ("referable AUC", "referable_auc"),
        ("referable sens", "referable_sensitivity"),
        ("referable spec", "referable_specificity"),
    ]
    lines = [f"== Grading (n={grading.get('n', 'n/a')}) =="]
    lines += [f"{label:<16}{_fmt(grading.get(key)):>10}" for label, key in scalars]
    confusion = grading.get("confusion")
    if confusion:
        lines.append("confusion (rows = true grade, columns = predicted grade)")
        header = ["true\\pred"] + [str(c) for c in range(len(confusion))]
        lines += _rows(
            header, [[str(r)] + [str(v) for v in row] for r, row in enumerate(confusion)], width=7
        )
    return lines


def _sr_block(sr: dict) -> list[str]:
    """One row per method (e.g. SR, bicubic): PSNR (dB) and SSIM inside the FOV, lesion PSNR."""
    rows = [
        [
            name if name != "sr" else "SR",
            _fmt(m.get("psnr"), ".2f"),
            _fmt(m.get("ssim")),
            _fmt(m.get("psnr_lesion"), ".2f"),
        ]
        for name, m in sr.items()
    ]
    return ["== Super-resolution (mean over images) =="] + _rows(
        ["method", "PSNR FOV", "SSIM FOV", "PSNR lesion"], rows, width=13
    )


def _segmentation_block(segmentation: dict) -> list[str]:
    """One row per lesion and the mean: pooled-pixel AUPR and AUC, Dice at 0.5, prevalence."""
    rows = []
    for name, m in segmentation.items():
        row = [name, _fmt(m.get("aupr")), _fmt(m.get("auc")), _fmt(m.get("dice"))]
        row += [_fmt(m.get("prevalence"), ".2e"), str(m.get("n_images", ""))]
        rows.append(row)
    header = ["lesion", "AUPR", "AUC", "Dice", "prevalence", "images"]
    return ["== Lesion segmentation (pixels pooled over images) =="] + _rows(header, rows)


def format_metrics_table(metrics: dict) -> str:
    """Readable fixed-width text of ``{"grading": ..., "sr": {"sr": ..., "bicubic": ...},
    "segmentation": ...}``; any section may be missing. Undefined values print as ``n/a``."""
    blocks = []
    if "grading" in metrics:
        blocks.append(_grading_block(metrics["grading"]))
    if "sr" in metrics:
        blocks.append(_sr_block(metrics["sr"]))
    if "segmentation" in metrics:
        blocks.append(_segmentation_block(metrics["segmentation"]))
    return "\n\n".join("\n".join(block) for block in blocks)


# --------------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------
# HTML reports: one file each, no network, readable without JavaScript (a small inline script only
# adds click-to-sort on the prediction table and marks images that fail to load).
# --------------------------------------------------------------------------------------------------

REPORT_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.6em 0; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: left; vertical-align: middle; }
th { background: #f2f2f2; } th[data-sortable] { cursor: pointer; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.note { background: #fff6d6; border: 1px solid #e6c200; padding: 0.5em 0.8em; max-width: 60em; }
.ok { color: #17692a; font-weight: 600; } .ungradable { color: #a85f00; font-weight: 600; } .skipped { color: #b00020; font-weight: 600; }
.bar { display: inline-block; width: 80px; height: 10px; background: #eee; margin-right: 6px; vertical-align: middle; }
.bar span { display: block; height: 100%; background: #c0392b; }
img.thumb { width: 128px; height: auto; display: block; }
td.file { max-width: 18em; word-break: break-all; font-size: 0.9em; }
img.missing { outline: 3px solid #b00020; }
img.figure { max-width: 100%; height: auto; }
dl.facts { display: grid; grid-template-columns: max-content auto; gap: 2px 14px; }
dl.facts dt { font-weight: 600; } dl.facts dd { margin: 0; font-family: ui-monospace, monospace; font-size: 0.9em; }
"""

SORT_SCRIPT = """
document.querySelectorAll("img").forEach(function (img) {
  function missing() { img.classList.add("missing"); img.alt = "image missing: " + img.getAttribute("src"); }
  if (img.complete && img.naturalWidth === 0) { missing(); } else { img.addEventListener("error", missing); }
});
document.querySelectorAll("table.sortable").forEach(function (table) {
  table.querySelectorAll("th[data-sortable]").forEach(function (th, column) {
    th.addEventListener("click", function () {
      var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
      var index = Array.prototype.indexOf.call(th.parentNode.children, th);
      var ascending = th.dataset.order !== "asc";
      th.dataset.order = ascending ? "asc" : "desc";
      rows.sort(function (a, b) {
        var x = a.cells[index].dataset.sort, y = b.cells[index].dataset.sort;
        var nx = parseFloat(x), ny = parseFloat(y);
        var order = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : String(x).localeCompare(String(y));
        return ascending ? order : -order;
      });
      rows.forEach(function (row) { body.appendChild(row); });
    });
  });
});
"""


def _page_head(title: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{REPORT_STYLE}</style>\n</head>\n<body>\n"
        f"<h1>{html.escape(title)}</h1>\n"
    )


def _page_tail() -> str:
    return f"<script>{SORT_SCRIPT}</script>\n</body>\n</html>\n"


def _facts(facts: Sequence[tuple[str, object]]) -> str:
    items = "".join(
        f"<dt>{html.escape(str(k))}</dt><dd>{html.escape(str(v))}</dd>"
        for k, v in facts
        if v is not None
    )
    return f'<dl class="facts">{items}</dl>\n'


def _html_table(
    header: Sequence[str], rows: Sequence[Sequence[object]], css_class: str = ""
) -> str:
    head = "".join(f"<th>{html.escape(str(cell))}</th>" for cell in header)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="num">{html.escape(str(c))}</td>'
            if i
            else f"<td>{html.escape(str(c))}</td>"
            for i, c in enumerate(row)
        )
        + "</tr>\n"
        for row in rows
    )
    return f'<table class="{css_class}"><thead><tr>{head}</tr></thead><tbody>\n{body}</tbody></table>\n'


def _data_uri(path: str | Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


GRADE_LABELS = dict(enumerate(GRADE_NAMES))
DISCLAIMER = (
    "Research software: these outputs are not a diagnosis and must not be used for clinical decisions. "
    "Grades follow the ICDR scale (0 none, 1 mild, 2 moderate, 3 severe, 4 proliferative); referable DR means grade 2 or worse."
)


def write_test_report(
    path: str | Path,
    metrics: dict,
    figures: Sequence[tuple[str, Path]],
    samples: Sequence[Path] = (),
) -> Path:
    """test.py's ``report.html``: metric tables, confusion matrix, figures and sample panels, every
    image embedded (one file to move or mail)."""
    path = Path(path)
    facts = [
        (key, metrics.get(key))
        for key in (
            "checkpoint",
            "method",
            "stage",
            "epoch",
            "dataset",
            "split",
            "input",
            "hr_size",
            "scale",
        )
    ]
    parts = [
        _page_head(
            f"DeepMT-DR evaluation: {metrics.get('dataset', '')} {metrics.get('split', '')} ({metrics.get('input', '')} input)"
        ),
        _facts(facts),
    ]
    grading = metrics.get("grading")
    if grading:
        labels = [
            ("n", "n"),
            ("accuracy", "accuracy"),
            ("QWK", "qwk"),
            ("macro F1", "macro_f1"),
            ("macro AUC", "macro_auc"),
            ("referable AUC", "referable_auc"),
            ("referable sensitivity", "referable_sensitivity"),
            ("referable specificity", "referable_specificity"),
        ]
        parts.append(
            "<h2>Grading</h2>\n"
            + _html_table(
                ["metric", "value"],
                [
                    (label, _fmt(grading.get(key), ".4f") if key != "n" else grading.get(key))
                    for label, key in labels
                ],
            )
        )
        confusion = grading.get("confusion")
        if confusion:
            rows = [[f"true {r}", *row] for r, row in enumerate(confusion)]
            parts.append(
                "<p>Confusion matrix (rows: true grade, columns: predicted grade)</p>\n"
                + _html_table(
                    ["", *[f"pred {c}" for c in range(len(confusion))]], rows, "confusion"
                )
            )
    if "intervals" in metrics:
        names = [
            ("QWK", "qwk"),
            ("accuracy", "accuracy"),
            ("macro AUC", "macro_auc"),
            ("referable AUC", "referable_auc"),
            ("ECE", "ece"),
        ]
        rows = [
            (
                label,
                _fmt(metrics["intervals"][key].get("value")),
                _fmt(metrics["intervals"][key].get("low")),
                _fmt(metrics["intervals"][key].get("high")),
            )
            for label, key in names
            if key in metrics["intervals"]
        ]
        rows.append(
            ("referable ECE", _fmt(metrics.get("calibration", {}).get("referable_ece")), "", "")
        )
        parts.append(
            "<h2>Intervals and calibration (95% bootstrap over images)</h2>\n"
            + _html_table(["metric", "value", "low", "high"], rows)
        )
        points = [
            (p["name"], _fmt(p["threshold"]), _fmt(p["sensitivity"]), _fmt(p["specificity"]))
            for p in metrics.get("operating_points", [])
        ]
        if points:
            parts.append(
                "<p>Referable DR (p(grade >= 2) at or above the threshold)</p>\n"
                + _html_table(
                    ["operating point", "threshold", "sensitivity", "specificity"], points
                )
            )
    if "sr" in metrics:
        rows = [
            (
                "SR" if name == "sr" else name,
                _fmt(m.get("psnr"), ".2f"),
                _fmt(m.get("ssim")),
                _fmt(m.get("psnr_lesion"), ".2f"),
            )
            for name, m in metrics["sr"].items()
        ]
        parts.append(
            "<h2>Super-resolution (inside the FOV, mean over images)</h2>\n"
            + _html_table(["method", "PSNR (dB)", "SSIM", "lesion PSNR (dB)"], rows)
        )
    if "mechanism" in metrics:
        m = metrics["mechanism"]
        rows = [
            ("SR vs HR Grad-CAM: mean squared difference", _fmt(m.get("cam_mse"))),
            ("SR vs HR Grad-CAM: Pearson correlation", _fmt(m.get("cam_pearson"))),
            ("SR vs HR Grad-CAM: IoU of the top 10% pixels", _fmt(m.get("cam_top_iou"))),
            ("QWK graded from SR", _fmt(m.get("qwk_sr"))),
            ("QWK graded from HR", _fmt(m.get("qwk_hr"))),
            ("task gap (QWK SR minus HR)", _fmt(m.get("task_gap"))),
        ]
        parts.append(
            "<h2>Task-aware mechanism (eval-mode grader, single pass)</h2>\n"
            + _html_table(["signal", "value"], rows)
        )
    if "segmentation" in metrics:
        rows = [
            (
                name,
                _fmt(m.get("aupr")),
                _fmt(m.get("auc")),
                _fmt(m.get("dice")),
                _fmt(m.get("prevalence"), ".2e"),
                m.get("n_images", ""),
            )
            for name, m in metrics["segmentation"].items()
        ]
        parts.append(
            "<h2>Lesion segmentation (pixels pooled over images)</h2>\n"
            + _html_table(
                ["lesion", "AUPR", "ROC AUC", "Dice at 0.5", "prevalence", "images"], rows
            )
        )
    if figures:
        parts.append("<h2>Figures</h2>\n")
        parts += [
            f'<figure><img class="figure" src="{_data_uri(p)}" alt="{html.escape(name)}"><figcaption>{html.escape(name)}</figcaption></figure>\n'
            for name, p in figures
        ]
    if samples:
        parts.append("<h2>Sample panels</h2>\n")
        parts += [
            f'<figure><img class="figure" src="{_data_uri(p)}" alt="{html.escape(p.stem)}"><figcaption>{html.escape(p.stem)}</figcaption></figure>\n'
            for p in samples
        ]
    parts.append(f'<p class="note">{html.escape(DISCLAIMER)}</p>\n' + _page_tail())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(parts), encoding="utf-8")
    return path


class PredictionReport:
    """predict.py's ``report.html``, written as rows arrive: the table body streams to a side file
    and is wrapped with the summary at :meth:`close`, so memory stays flat over a large folder.

    Images are linked relative to the report's folder (thumbnails and evidence panels next to it).
    """

    COLUMNS = (
        "#",
        "photograph",
        "file",
        "status",
        "grade",
        "referable DR p",
        "quality flags",
        *(f"{name} % of FOV" for name in LESIONS),
        "reference grade",
    )

    def __init__(
        self,
        path: str | Path,
        title: str,
        facts: Sequence[tuple[str, object]],
        referable_threshold: float | None = None,
    ) -> None:
        """``referable_threshold``: the model's referral threshold (evaluation/referable.py)."""
        self.path = Path(path)
        self.title, self.facts = title, list(facts)
        self.threshold = model_threshold({"referable_threshold": referable_threshold})
        self.body_path = self.path.with_name(f".{self.path.name}.rows")
        self.body = self.body_path.open("w", encoding="utf-8")
        self.counts: dict[str, int] = {}
        self.referable = 0

    def add(self, row: dict) -> None:
        """One input: ``index, path, status, reason, grade, probabilities, p_referable, flags,
        areas, reference_grade, thumbnail, panel`` (the last two relative paths or None)."""
        status = row["status"]
        self.counts[status] = self.counts.get(status, 0) + 1
        css = "ok" if status == "ok" else "ungradable" if status == "ungradable" else "skipped"
        name = html.escape(str(row["path"]))
        thumb = row.get("thumbnail")
        image = f'<img class="thumb" src="{html.escape(thumb)}" alt="{name}">' if thumb else ""
        if row.get("panel"):
            image = f'<a href="{html.escape(row["panel"])}">{image or "panel"}</a>'
        grade, referable = row.get("grade"), row.get("p_referable")
        if grade is not None:
            grade_cell = f'<td data-sort="{grade}">{grade} {GRADE_LABELS.get(grade, "")} <small>(p = {row["probabilities"][grade]:.2f})</small></td>'
        else:
            grade_cell = '<td data-sort="-1">not graded</td>'
        if referable is not None:
            decision = bool(is_referable(referable, self.threshold))
            self.referable += decision
            # The grade (ordinal decoding) and the referral (p_referable >= threshold) answer two
            # questions and can disagree near the boundary: say so where they do.
            disagree = grade is not None and (grade >= REFERABLE_GRADE) != decision
            note = " <small>(grade and referral disagree)</small>" if disagree else ""
            referable_cell = (
                f'<td class="num" data-sort="{referable:.4f}"><span class="bar"><span style="width:{100 * referable:.0f}%"></span></span>'
                f"{referable:.3f} {'<b>refer</b>' if decision else ''}{note}</td>"
            )
        else:
            referable_cell = '<td data-sort="-1"></td>'
        areas = row.get("areas")
        area_cells = (
            "".join(f'<td class="num" data-sort="{a:.6f}">{100 * a:.2f}</td>' for a in areas)
            if areas
            else '<td data-sort="-1"></td>' * len(LESIONS)
        )
        reason = f"<br><small>{html.escape(row['reason'])}</small>" if row.get("reason") else ""
        reference = row.get("reference_grade")
        self.body.write(
            f'<tr><td class="num" data-sort="{row["index"]}">{row["index"] + 1}</td><td>{image}</td>'
            f'<td class="file" data-sort="{name}">{name}</td><td class="{css}" data-sort="{status}">{status}{reason}</td>{grade_cell}{referable_cell}'
            f'<td data-sort="{html.escape(", ".join(row.get("flags", ())))}">{html.escape(", ".join(row.get("flags", ())))}</td>'
            f"{area_cells}"
            f'<td class="num" data-sort="{reference if reference is not None else -1}">{"" if reference is None else reference}</td></tr>\n'
        )

    def close(self) -> Path:
        """Write ``report.html`` (summary, then the table) and remove the side file."""
        self.body.close()
        total = sum(self.counts.values())
        graded = self.counts.get("ok", 0)
        skipped = total - graded - self.counts.get("ungradable", 0)
        summary = [
            ("inputs", total),
            ("graded", graded),
            (f"referable DR (p_referable >= {self.threshold:.3f})", self.referable),
            ("ungradable (quality flags)", self.counts.get("ungradable", 0)),
            ("not read (see status)", skipped),
        ]
        head = "".join(
            f"<th data-sortable>{html.escape(c)}</th>"
            if c != "photograph"
            else f"<th>{html.escape(c)}</th>"
            for c in self.COLUMNS
        )
        temp = self.path.with_name(f".{self.path.name}.tmp")
        with temp.open("w", encoding="utf-8") as out:
            out.write(_page_head(self.title))
            out.write(f'<p class="note">{html.escape(DISCLAIMER)}</p>\n')
            out.write(_facts(self.facts + summary))
            out.write(
                "<p>Click a thumbnail for its evidence panel (photograph, model input, SR, lesion maps, Grad-CAM); "
                "with JavaScript, click a column header to sort.</p>\n"
            )
            out.write(f'<table class="sortable"><thead><tr>{head}</tr></thead><tbody>\n')
            with self.body_path.open(encoding="utf-8") as rows:
                shutil.copyfileobj(rows, out)
            out.write("</tbody></table>\n" + _page_tail())
        os.replace(temp, self.path)
        self.body_path.unlink(missing_ok=True)
        return self.path
