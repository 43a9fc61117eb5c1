"""The reports of an evaluation (``test.py``) and of ``predict.py``, drawn from the outputs of
``evaluation.metrics`` and the predictor's rows. This module holds the stdout table
(:func:`format_metrics_table`) and re-exports the two others, the names callers import:

- ``evaluation/figures.py``: the figures (confusion matrix, ROC, reliability, lesion PR, sample
  panels) on an explicit Agg canvas, never ``pyplot``;
- ``evaluation/html_report.py``: test.py's ``report.html`` and predict.py's streamed one.
"""

from __future__ import annotations

from collections.abc import Sequence

from evaluation.figures import (
    DPI,
    PANEL_INCHES,
    plot_confusion,
    plot_lesion_pr,
    plot_reliability,
    plot_roc,
    plot_sample_panel,
)
from evaluation.formatting import format_number
from evaluation.html_report import (
    DISCLAIMER,
    GRADE_LABELS,
    REPORT_STYLE,
    SORT_SCRIPT,
    PredictionReport,
    write_test_report,
)

__all__ = [
    "DISCLAIMER",
    "DPI",
    "GRADE_LABELS",
    "PANEL_INCHES",
    "REPORT_STYLE",
    "SORT_SCRIPT",
    "PredictionReport",
    "format_metrics_table",
    "plot_confusion",
    "plot_lesion_pr",
    "plot_reliability",
    "plot_roc",
    "plot_sample_panel",
    "write_test_report",
]

NA = "n/a"  # an undefined number in the table


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
    lines += [
        f"{label:<16}{format_number(grading.get(key), '.4f', NA):>10}" for label, key in scalars
    ]
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
            format_number(m.get("psnr"), ".2f", NA),
            format_number(m.get("ssim"), ".4f", NA),
            format_number(m.get("psnr_lesion"), ".2f", NA),
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
        row = [
            name,
            format_number(m.get("aupr"), ".4f", NA),
            format_number(m.get("auc"), ".4f", NA),
            format_number(m.get("dice"), ".4f", NA),
        ]
        row += [format_number(m.get("prevalence"), ".2e", NA), str(m.get("n_images", ""))]
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
