"""Per-seed tables of the table runner's ``results.csv``: one row per table row, mean ± sample
standard deviation over seeds, the paired QWK difference to the reference row. The one
implementation behind both the runner's ``table.md`` (engine/tables.py) and the docs' generated
blocks (evaluation/results_tables.py's ``SEED_TABLES``).
"""

from __future__ import annotations

import csv
import statistics
from collections.abc import Sequence
from pathlib import Path

import yaml

from evaluation.formatting import parse_number

SEED_METRICS = (
    ("accuracy", "accuracy", 3),
    ("qwk", "QWK", 3),
    ("macro_f1", "macro F1", 3),
    ("macro_auc", "macro AUC", 3),
    ("referable_auc", "referable AUC", 3),
    ("psnr", "PSNR (dB)", 2),
    ("ssim", "SSIM", 3),
    ("psnr_lesion", "PSNR lesions (dB)", 2),
    ("lesion_aupr", "lesion AUPR", 3),
)


def mean_sd(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None from a single value)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def mean_sd_text(values: Sequence[float] | None, digits: int, sign: str = "") -> str:
    """``mean ± sample sd`` (the mean alone for one value, ``-`` for none)."""
    if not values:
        return "-"
    mean, sd = mean_sd(values)
    text = f"{mean:{sign}.{digits}f}"
    return text if sd is None else f"{text} ± {sd:.{digits}f}"


# The grader's training cross-entropy in its last epoch: shown when the runs recorded it (table
# runs since 2026-12-07), so that a row at chance shows whether its grader fitted its own images.
TRAIN_CE = ("grader_train_ce", "grader train CE", 2)
TRAIN_CE_LEGEND = (
    "grader train CE: the grader's mean training cross-entropy in the last epoch it trained "
    "(ln 5 = 1.61 is the class prior of five balanced grades: a grader that never fitted its own "
    "training images)."
)


def shows_train_ce(summary: dict[str, dict]) -> bool:
    return any(TRAIN_CE[0] in entry for entry in summary.values())


def seed_table_columns(reference: str | None, train_ce: bool = False) -> list[str]:
    """The table's header cells (with a paired QWK difference column when there is a reference
    row, and the grader's training CE when the runs recorded it)."""
    columns = ["row", "seeds", *[header for _, header, _ in SEED_METRICS]]
    if train_ce:
        columns.append(TRAIN_CE[1])
    if reference:
        columns.append(f"ΔQWK vs {reference}")
    return [*columns, "train min"]


def summarise_seeds(results: Sequence[dict[str, str]], order: Sequence[str]) -> dict[str, dict]:
    """``{row: {"seeds": [...], "qwk_by_seed": {...}, metric: [values]}}``, rows in ``order`` then first seen."""
    summary: dict[str, dict] = {}
    for result in results:
        entry = summary.setdefault(
            result["row"], {"seeds": [], "qwk_by_seed": {}, "scale": result.get("scale", "")}
        )
        seed = int(result["seed"])
        entry["seeds"].append(seed)
        for key in (
            *[key for key, _, _ in SEED_METRICS],
            TRAIN_CE[0],
            "epoch_seconds",
            "wall_seconds",
            "psnr_bicubic",
            "ssim_bicubic",
        ):
            value = parse_number(result.get(key))
            if value is not None:
                entry.setdefault(key, []).append(value)
        if parse_number(result.get("qwk")) is not None:
            entry["qwk_by_seed"][seed] = float(result["qwk"])
    names = [name for name in order if name in summary] + [
        name for name in summary if name not in order
    ]
    return {name: summary[name] for name in names}


def seed_table_lines(summary: dict[str, dict], reference: str | None) -> list[str]:
    """Markdown lines: one row per table row, mean ± sd over seeds, the paired ΔQWK to ``reference``."""
    train_ce = shows_train_ce(summary)
    columns = seed_table_columns(reference, train_ce)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for name, entry in summary.items():
        cells = [name, str(len(entry["seeds"]))] + [
            mean_sd_text(entry.get(key), digits) for key, _, digits in SEED_METRICS
        ]
        if train_ce:
            cells.append(mean_sd_text(entry.get(TRAIN_CE[0]), TRAIN_CE[2]))
        if reference:
            ref = summary.get(reference)
            seeds = (
                sorted(set(entry["qwk_by_seed"]) & set(ref["qwk_by_seed"]))
                if ref and name != reference
                else []
            )
            cells.append(
                mean_sd_text(
                    [entry["qwk_by_seed"][s] - ref["qwk_by_seed"][s] for s in seeds], 3, "+"
                )
            )
        minutes = [seconds / 60 for seconds in entry.get("epoch_seconds", [])]
        cells.append(f"{statistics.fmean(minutes):.1f}" if minutes else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def seed_table(root: Path, results: str, rows_file: str, split: str = "test") -> str:
    """A table runner's ``results.csv`` as its table: rows, reference and descriptions from ``rows_file``."""
    with open(root / results, newline="", encoding="utf-8") as handle:
        records = list(csv.DictReader(handle))
    spec = yaml.safe_load((root / rows_file).read_text(encoding="utf-8"))
    reference = spec.get("reference")
    summary = summarise_seeds(records, list(spec["rows"]))
    lines = seed_table_lines(summary, reference)
    seeds = sorted({seed for entry in summary.values() for seed in entry["seeds"]})
    legend = (
        f"Mean ± sample standard deviation over seeds (run.seed {', '.join(map(str, seeds))}), {split} split, graded "
        "from the LR image (from the HR image for rows tested on HR). PSNR / SSIM inside the field of view, for rows "
        "with a learned ISR net; PSNR lesions: inside the dilated lesion masks; referable AUC: grade >= 2 against the "
        "rest; lesion AUPR: mean over the four lesions, on the image the grader sees; `train min`: training epochs "
        "with their validation, mean per run."
    )
    notes = [legend, *([TRAIN_CE_LEGEND] if shows_train_ce(summary) else [])]
    if reference:
        notes.append(f"ΔQWK: QWK minus `{reference}`'s of the same seed, mean ± sd over seeds.")
    bicubic = {}
    for entry in summary.values():
        if entry.get("psnr_bicubic") and entry.get("ssim_bicubic"):
            bicubic.setdefault(
                entry["scale"],
                (statistics.fmean(entry["psnr_bicubic"]), statistics.fmean(entry["ssim_bicubic"])),
            )
    if bicubic:
        parts = [
            f"x{scale}: {psnr:.2f} dB / {ssim:.3f}"
            for scale, (psnr, ssim) in sorted(bicubic.items(), key=lambda i: int(i[0] or 0))
        ]
        notes.append(f"Bicubic upsampling of the same LR images, PSNR / SSIM: {'; '.join(parts)}.")
    total = sum(seconds for entry in summary.values() for seconds in entry.get("wall_seconds", []))
    if total:
        notes.append(
            f"Run time summed over the runs that recorded it (training, rendering, testing): {total / 60:.0f} min."
        )
    notes.append(f"Source: `{results}` (rows: `{rows_file}`).")
    lines += ["", " ".join(notes)]
    specs = {name: spec["rows"].get(name) or {} for name in summary}
    if any(
        row.get("summary") or row.get("overrides") for row in specs.values()
    ):  # else: plain methods, named by the row
        lines += ["", "| row | what it is |", "|---|---|"]
        for name, row in specs.items():
            text = row.get("summary") or " ".join(
                [
                    f"`train.py --method {row.get('method', 'deepmt_dr')}`",
                    *[f"`{o}`" for o in row.get("overrides", [])],
                ]
            )
            lines.append(f"| {name} | {text} |")
    return "\n".join(lines) + "\n"


SEED_TABLES: dict[str, tuple[str, str, str]] = {
    # block name: (results.csv, rows file, split)
    "compared-methods": ("Compared Methods/results.csv", "Compared Methods/rows.yaml", "test"),
    "ablation": ("Ablation study/results.csv", "Ablation study/rows.yaml", "test"),
    "idrid-small-val": ("docs/idrid_small/results.csv", "scripts/idrid_rows.yaml", "val"),
    "idrid-recipe-val": ("docs/idrid_recipe/results.csv", "scripts/idrid_recipe.yaml", "val"),
    "idrid-levers-val": ("docs/idrid_levers/results.csv", "scripts/idrid_levers.yaml", "val"),
}
