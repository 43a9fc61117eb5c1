"""Result tables of the compared methods and the ablation study: ``results.csv`` -> markdown + bar chart.

``results.csv`` holds one row per (table row, seed) with every metric (:data:`RESULT_COLUMNS`);
:func:`write_markdown` turns it into mean +- sample standard deviation over seeds per table row
(:data:`TABLE_COLUMNS`), :func:`plot_bars` into a grouped bar chart. Cells a method has no value
for (PSNR without an ISR net, lesion AUPR without segmentation) are empty in the CSV and ``-``
in the table. The bar chart follows ``evaluation/report.py``: a ``Figure`` on an Agg canvas,
never pyplot.
"""

from __future__ import annotations

import csv
import math
import os
import statistics
import tempfile
from collections.abc import Sequence
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from evaluation.report import DPI
from evaluation.results_tables import SEED_METRICS

LESIONS = ("MA", "HE", "EX", "SE")
RESULT_COLUMNS = (
    "row", "method", "seed",
    "accuracy", "qwk", "macro_f1", "macro_auc", "referable_auc",
    "psnr", "ssim", "psnr_lesion", "psnr_bicubic", "ssim_bicubic",
    "lesion_aupr", *[f"aupr_{name}" for name in LESIONS],
    "test_input", "scale", "n_test", "epoch_seconds", "wall_seconds", "run_dir",
)  # fmt: skip
# (results.csv key, markdown header, digits) of the summary table, in order: one list for the
# runner's tables and their regeneration from results.csv (evaluation/results_tables.py).
METRICS = SEED_METRICS
BAR_METRICS = ("accuracy", "qwk", "macro_f1", "macro_auc")


def table_columns(reference: str | None) -> list[str]:
    """The markdown table's header cells (with a paired QWK difference column when there is a reference row)."""
    columns = ["row", "seeds", *[header for _, header, _ in METRICS]]
    if reference:
        columns.append(f"ΔQWK vs {reference}")
    return [*columns, "train min"]


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
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", newline="") as file:
            writer = csv.DictWriter(file, RESULT_COLUMNS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows({key: _cell(row.get(key)) for key in RESULT_COLUMNS} for row in rows)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return path


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _number(text: str | None) -> float | None:
    if text in (None, ""):
        return None
    value = float(text)
    return None if math.isnan(value) else value


def result_row(
    row: str,
    method: str,
    seed: int,
    metrics: dict,
    config,
    epoch_seconds: float | None,
    wall_seconds: float | None,
    run_dir: Path,
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
    )
    return {
        key: (None if isinstance(value, float) and math.isnan(value) else value)
        for key, value in out.items()
    }


# ---------------------------------------------------------------------------------------- summary
def summarise(
    results: Sequence[dict[str, str]], order: Sequence[str] | None = None
) -> dict[str, dict]:
    """``{row: {"seeds": [..], key: [values...]}}`` per table row, rows in ``order`` (else first seen)."""
    summary: dict[str, dict] = {}
    for result in results:
        entry = summary.setdefault(result["row"], {"seeds": [], "qwk_by_seed": {}})
        entry["seeds"].append(int(result["seed"]))
        for key in (
            *[key for key, _, _ in METRICS],
            "epoch_seconds",
            "wall_seconds",
            "psnr_bicubic",
            "ssim_bicubic",
        ):
            value = _number(result.get(key))
            if value is not None:
                entry.setdefault(key, []).append(value)
        qwk = _number(result.get("qwk"))
        if qwk is not None:
            entry["qwk_by_seed"][int(result["seed"])] = qwk
        entry["scale"] = result.get("scale", "")
    names = [name for name in (order or []) if name in summary] + [
        name for name in summary if name not in (order or [])
    ]
    return {name: summary[name] for name in names}


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None from a single value)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def _format(values: Sequence[float] | None, digits: int, sign: str = "") -> str:
    if not values:
        return "-"
    mean, std = mean_std(values)
    text = f"{mean:{sign}.{digits}f}"
    return text if std is None else f"{text} ± {std:.{digits}f}"


def paired_difference(entry: dict, reference: dict) -> list[float]:
    """Per-seed QWK differences to the reference row over the seeds both have."""
    seeds = sorted(set(entry["qwk_by_seed"]) & set(reference["qwk_by_seed"]))
    return [entry["qwk_by_seed"][seed] - reference["qwk_by_seed"][seed] for seed in seeds]


def markdown_table(summary: dict[str, dict], reference: str | None = None) -> list[str]:
    """The summary as markdown table lines with :func:`table_columns` as header."""
    columns = table_columns(reference)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for name, entry in summary.items():
        cells = [name, str(len(entry["seeds"]))]
        cells += [_format(entry.get(key), digits) for key, _, digits in METRICS]
        if reference:
            differences = (
                paired_difference(entry, summary[reference])
                if reference in summary and name != reference
                else []
            )
            cells.append(_format(differences, 3, sign="+"))
        minutes = [seconds / 60 for seconds in entry.get("epoch_seconds", [])]
        cells.append(f"{statistics.fmean(minutes):.1f}" if minutes else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


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
    summary = summarise(results, list(descriptions))
    lines = [f"# {title}", "", *header_notes, "", *markdown_table(summary, reference), ""]
    seeds = sorted({seed for entry in summary.values() for seed in entry["seeds"]})
    lines.append(
        f"Mean ± sample standard deviation over seeds (run.seed {', '.join(map(str, seeds))}); "
        f"every row sees the same training, validation and test images. {split.capitalize()} split, graded from the LR "
        "image (from the HR image for rows tested on HR, e.g. hr_cls). PSNR/SSIM inside the field of view, for methods with a "
        "learned ISR net; PSNR lesions: inside the lesion masks dilated by 4 px at 1024 (images with masks); "
        "referable AUC: grade >= 2 against the rest; lesion AUPR: mean over the four lesions, on the image the grader sees. "
        "`train min`: training epochs incl. validation, mean per run."
    )
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
    summary = summarise(results, order)
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
            mean, std = mean_std(values) if values else (math.nan, None)
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
