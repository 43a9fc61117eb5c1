"""Result tables of the compared methods and the ablation study: ``results.csv`` -> markdown + bar chart.

``results.csv`` holds one row per (table row, seed) with every metric (:data:`RESULT_COLUMNS`);
:func:`write_markdown` turns it into mean +- sample standard deviation over seeds per table row
(columns: :func:`table_columns`; the summary and its table lines are those of
``evaluation/seed_tables.py``, which also regenerates the docs' copies), :func:`plot_bars` into a
grouped bar chart. Cells a method has no value for (PSNR without an ISR net, lesion AUPR without
segmentation) are empty in the CSV and ``-`` in the table. The bar chart follows
``evaluation/figures.py``: a ``Figure`` on an Agg canvas, never pyplot.
"""

from __future__ import annotations

import csv
import math
import statistics
from collections.abc import Sequence
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from data.atomic import atomic_open
from evaluation.figures import DPI
from evaluation.formatting import format_number
from evaluation.seed_tables import (
    SEED_METRICS,
    TRAIN_CE_LEGEND,
    mean_sd,
    seed_table_columns,
    seed_table_lines,
    shows_train_ce,
    summarise_seeds,
)

LESIONS = ("MA", "HE", "EX", "SE")
RESULT_COLUMNS = (
    "row", "method", "seed",
    "accuracy", "qwk", "macro_f1", "macro_auc", "referable_auc",
    "psnr", "ssim", "psnr_lesion", "psnr_bicubic", "ssim_bicubic",
    "lesion_aupr", *[f"aupr_{name}" for name in LESIONS],
    "test_input", "scale", "n_test", "epoch_seconds", "wall_seconds", "run_dir",
    "grader_train_ce",
)  # fmt: skip
# (results.csv key, markdown header, digits) of the summary table, in order: one list, and one
# summary and table of it, for the runner's tables and their regeneration from results.csv
# (evaluation/seed_tables.py).
METRICS = SEED_METRICS
BAR_METRICS = ("accuracy", "qwk", "macro_f1", "macro_auc")


table_columns = seed_table_columns  # the markdown table's header cells


# ------------------------------------------------------------------------------------- results.csv
def read_results(path: str | Path) -> list[dict[str, str]]:
    path = Path(path)
    if not path.is_file():
        return []
    with path.open(newline="") as file:
        return list(csv.DictReader(file))


def write_results(rows: Sequence[dict], path: str | Path) -> Path:
    """Write ``results.csv`` atomically (temp file + rename): an interrupted run never truncates it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "w", encoding=None, newline="") as file:
        writer = csv.DictWriter(file, RESULT_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows({key: _cell(row.get(key)) for key in RESULT_COLUMNS} for row in rows)
    return path


def _cell(value) -> str:
    """A results.csv cell: a float to 6 significant digits (empty for NaN), anything else as text."""
    if isinstance(value, float):
        return format_number(value, ".6g")
    return "" if value is None else str(value)


def result_row(
    row: str,
    method: str,
    seed: int,
    metrics: dict,
    config,
    epoch_seconds: float | None,
    wall_seconds: float | None,
    run_dir: Path,
    grader_train_ce: float | None = None,
) -> dict:
    """One ``results.csv`` row from a run's ``metrics.json`` and resolved config.

    PSNR/SSIM only where the method has a learned ISR net and is tested on LR (the bicubic values
    are always kept, as the reference); lesion AUPR where it has a segmentation net.
    """
    grading = metrics.get("grading", {})
    out = {
        "row": row,
        "method": method,
        "seed": seed,
        **{
            key: grading.get(key)
            for key in ("accuracy", "qwk", "macro_f1", "macro_auc", "referable_auc")
        },
    }
    sr = metrics.get("sr")
    if sr:
        if config.model.isr == "net":
            out.update(
                psnr=sr["sr"]["psnr"], ssim=sr["sr"]["ssim"], psnr_lesion=sr["sr"]["psnr_lesion"]
            )
        out.update(psnr_bicubic=sr["bicubic"]["psnr"], ssim_bicubic=sr["bicubic"]["ssim"])
    segmentation = metrics.get("segmentation")
    if segmentation:
        out["lesion_aupr"] = segmentation["mean"]["aupr"]
        out.update(
            {f"aupr_{name}": segmentation[name]["aupr"] for name in LESIONS if name in segmentation}
        )
    out.update(
        test_input=metrics.get("input"),
        scale=config.data.scale,
        n_test=grading.get("n"),
        epoch_seconds=epoch_seconds,
        wall_seconds=wall_seconds,
        run_dir=str(run_dir),
        grader_train_ce=grader_train_ce,
    )
    return {
        key: (None if isinstance(value, float) and math.isnan(value) else value)
        for key, value in out.items()
    }


# ---------------------------------------------------------------------------------------- table.md
def write_markdown(
    results: Sequence[dict[str, str]],
    path: str | Path,
    title: str,
    descriptions: dict[str, str],
    reference: str | None = None,
    header_notes: Sequence[str] = (),
    split: str = "test",
) -> Path:
    """``table.md``: title, notes (command, machine), the table, the bicubic reference and a legend.

    ``split``: what the runs were tested on (``val`` for a dataset copy without its test set)."""
    summary = summarise_seeds(results, list(descriptions))
    lines = [f"# {title}", "", *header_notes, "", *seed_table_lines(summary, reference), ""]
    seeds = sorted({seed for entry in summary.values() for seed in entry["seeds"]})
    lines.append(
        f"Mean ± sample standard deviation over seeds (run.seed {', '.join(map(str, seeds))}); "
        f"every row sees the same training, validation and test images. {split.capitalize()} split, graded from the LR "
        "image (from the HR image for rows tested on HR, e.g. hr_cls). PSNR/SSIM inside the field of view, for methods with a "
        "learned ISR net; PSNR lesions: inside the lesion masks dilated by 4 px at 1024 (images with masks); "
        "referable AUC: grade >= 2 against the rest; lesion AUPR: mean over the four lesions, on the image the grader sees. "
        "`train min`: training epochs incl. validation, mean per run."
    )
    if shows_train_ce(summary):
        lines.append(TRAIN_CE_LEGEND)
    if reference:
        lines.append(
            f"ΔQWK: QWK minus {reference}'s QWK of the same seed, mean ± standard deviation over seeds."
        )
    bicubic = {}
    for entry in summary.values():
        if entry.get("psnr_bicubic"):
            bicubic.setdefault(
                entry["scale"],
                (statistics.fmean(entry["psnr_bicubic"]), statistics.fmean(entry["ssim_bicubic"])),
            )
    if bicubic:
        parts = [
            f"x{scale}: {psnr:.2f} dB / {ssim:.3f}"
            for scale, (psnr, ssim) in sorted(bicubic.items(), key=lambda item: int(item[0] or 0))
        ]
        lines.append(
            f"Bicubic upsampling of the same LR {split} images, PSNR / SSIM: {'; '.join(parts)}."
        )
    total = sum(seconds for entry in summary.values() for seconds in entry.get("wall_seconds", []))
    if total:
        lines.append(f"Wall time of all runs (training, rendering, testing): {total / 60:.0f} min.")
    lines += ["", "| row | what it is |", "|---|---|"]
    lines += [f"| {name} | {descriptions.get(name, '')} |" for name in summary]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def plot_bars(
    results: Sequence[dict[str, str]],
    path: str | Path,
    title: str,
    order: Sequence[str] | None = None,
    split: str = "test",
) -> Path:
    """Grouped bars: accuracy, QWK, macro F1 and macro AUC per row, mean with std error bars."""
    summary = summarise_seeds(results, order or [])
    names = list(summary)
    width = 0.8 / max(len(names), 1)
    figure = Figure(
        figsize=(2.0 + 1.6 * len(BAR_METRICS) + 0.25 * len(names), 4.2), layout="constrained"
    )
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    colours = [f"C{index % 10}" for index in range(len(names))]
    lowest = 0.0
    for index, name in enumerate(names):
        means, errors = [], []
        for key in BAR_METRICS:
            values = summary[name].get(key)
            mean, std = mean_sd(values) if values else (math.nan, None)
            means.append(mean)
            errors.append(std or 0.0)
            if not math.isnan(mean):
                lowest = min(lowest, mean - (std or 0.0))
        positions = [
            metric + (index - (len(names) - 1) / 2) * width for metric in range(len(BAR_METRICS))
        ]
        ax.bar(positions, means, width, yerr=errors, capsize=2, label=name, color=colours[index])
    ax.set_xticks(
        range(len(BAR_METRICS)), [header for key, header, _ in METRICS if key in BAR_METRICS]
    )
    # QWK below chance is negative: show it rather than clip it at 0.
    ax.set(
        ylim=(lowest - 0.05 if lowest < 0 else 0, 1),
        ylabel=f"{split} split (mean ± std over seeds)",
        title=title,
    )
    ax.axhline(0, color="black", linewidth=0.6)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(
        fontsize="small",
        ncols=2 if len(names) > 5 else 1,
        loc="upper left",
        bbox_to_anchor=(1.0, 1.0),
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=DPI)
    return path
