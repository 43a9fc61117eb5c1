"""Results tables rendered from committed records, and the docs they live in kept in step.

A generated table sits in a Markdown file between ``<!-- table:NAME -->`` and
``<!-- /table:NAME -->``; :func:`regenerate` rewrites every such block from its renderer (a
function of the repository root), so no number in a table is typed by hand. ``scripts/
results_tables.py`` is the command; a test fails when a committed table differs from its
regeneration.
"""

from __future__ import annotations

import csv
import json
import math
import re
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path

import yaml

from data.duplicates import read_groups
from data.splits import read_folds_file
from evaluation.cv_results import markdown, study_summary

Renderer = Callable[[Path], str]

BLOCK = re.compile(
    r"(<!-- table:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /table:(?P=name) -->)", re.DOTALL
)


def duplicates_table(root: Path, dataset: str = "idrid") -> str:
    """Score distribution of planted copies, copies found, and distinct pairs (data/duplicates.py)."""
    record = json.loads((root / f"docs/records/duplicates/{dataset}.json").read_text())
    bins = record["bins"]
    rows = ["| similarity | planted copies | copies found | distinct pairs |", "|---|---|---|---|"]
    kinds = ("planted_copies", "grouped_copies", "distinct")
    for i in range(len(bins) - 1):
        counts = [record[kind]["counts"][i] for kind in kinds]
        if any(counts):
            rows.append(
                f"| [{bins[i]:.2f}, {bins[i + 1]:.2f}) | "
                + " | ".join(str(c) for c in counts)
                + " |"
            )
    rows.append(
        "| min / max | "
        + " | ".join(f"{record[k]['min']:.3f} / {record[k]['max']:.3f}" for k in kinds)
        + " |"
    )
    rows.append("| pairs | " + " | ".join(str(record[k]["n"]) for k in kinds) + " |")
    note = (
        f"\n{record['images']} images; threshold {record['threshold']:.2f}. "
        f"`{record['command']}` ({record['seconds']:.0f} s on {record['cpu']}); "
        f"record: `docs/records/duplicates/{dataset}.json`.\n"
    )
    return "\n".join(rows) + "\n" + note


# ------------------------------------------------------------------------------------------------
# The cross-validated study (scripts/idrid_cv.yaml, records under docs/records/idrid_cv/)
# ------------------------------------------------------------------------------------------------

CV_STUDY = "scripts/idrid_cv.yaml"
CV_RECORDS = "docs/records/idrid_cv"
_CV_CACHE: dict[tuple, tuple[dict, dict]] = {}


def recorded_folds(records: Path, rows: Sequence[str]) -> dict[str, list[int]]:
    """``{row: [fold, ...]}``: the folds of each row with a complete record (CSV and JSON)."""
    return {
        row: sorted(
            int(path.stem.removeprefix("fold"))
            for path in (records / row).glob("fold*.csv")
            if path.stem.removeprefix("fold").isdigit() and path.with_suffix(".json").is_file()
        )
        for row in rows
    }


def _cv_study(root: Path, study: str = CV_STUDY, records: str = CV_RECORDS) -> tuple[dict, dict]:
    """``(spec, summary)`` of the study; the bootstrap runs once per state of the records folder."""
    folder = root / records
    files = sorted(folder.rglob("fold*")) if folder.is_dir() else []
    key = (
        str(root),
        study,
        records,
        tuple((str(f), f.stat().st_mtime_ns, f.stat().st_size) for f in files),
    )
    if key not in _CV_CACHE:
        spec = yaml.safe_load((root / study).read_text(encoding="utf-8"))
        folds_file = root / spec["folds_file"]
        groups_file = folds_file.with_name(folds_file.name.replace("_folds", "_groups"))
        groups = read_groups(groups_file) if groups_file.is_file() else {}
        spec["k_folds"] = sorted(
            {fold for fold in read_folds_file(folds_file).values() if fold >= 0}
        )
        summary = study_summary(folder, list(spec["rows"]), spec["reference"], groups)
        summary["total_folds"] = len(spec["k_folds"])
        spec["recorded"] = recorded_folds(folder, list(spec["rows"]))
        _CV_CACHE.clear()
        _CV_CACHE[key] = (spec, summary)
    return _CV_CACHE[key]


def cv_table(root: Path, study: str = CV_STUDY, records: str = CV_RECORDS) -> str:
    """The cross-validated comparison (evaluation/cv_results.py) from its committed records."""
    spec, summary = _cv_study(root, study, records)
    rows = {name: values.get("summary", "") for name, values in spec["rows"].items()}
    return markdown(summary, rows, spec["reference"])


def _folds_text(folds: Sequence[int]) -> str:
    """``0, 1, 2`` or ``none``."""
    return ", ".join(map(str, folds)) if folds else "none"


def _signed(value: float) -> str:
    return "undefined" if math.isnan(value) else f"{value:+.3f}"


def verdict(difference: dict) -> str:
    """``better``, ``worse`` or ``unclear``: where the 95% interval of a paired difference lies."""
    low, high = difference["low"], difference["high"]
    if math.isnan(low) or math.isnan(high):
        return "unclear"
    if low > 0:
        return "better"
    if high < 0:
        return "worse"
    return "unclear"


def _difference_text(name: str, other: str, difference: dict) -> str:
    return (
        f"{name} minus {other}, QWK {_signed(difference['difference'])} "
        f"[{_signed(difference['low'])}, {_signed(difference['high'])}] (p = {difference['p_value']:.3f})"
    )


def cv_answer(
    summary: dict,
    recorded: dict[str, list[int]],
    all_folds: Sequence[int],
    reference: str = "deepmt_dr",
    baseline: str = "lr_cls",
    ablation: str = "no_task_aware",
) -> str:
    """The study's answer in 2-4 plain sentences, worded by where the 95% intervals lie.

    ``summary``: :func:`evaluation.cv_results.study_summary`; ``recorded``: each row's recorded
    folds; ``all_folds``: the folds of the folds file. An interval above 0 beats, below 0 is worse,
    containing 0 cannot be told apart; without a fold that every row finished there is no answer.
    """
    k = len(all_folds)
    missing = {row: [f for f in all_folds if f not in folds] for row, folds in recorded.items()}
    unfinished = {row: folds for row, folds in missing.items() if folds}
    if not summary["folds"]:
        started = [
            f"`{row}` folds {_folds_text(folds)}" for row, folds in recorded.items() if folds
        ]
        return (
            f"**The cross-validated study has not finished, so there is no answer yet:** no fold of {k} has a record "
            f"for every row (recorded so far: {'; '.join(started) if started else 'nothing'}). "
            "`python scripts/idrid_cv.py` continues it where it stopped; this paragraph and the table below are "
            "rewritten from the records by `python scripts/results_tables.py`.\n"
        )
    sentences = []
    if unfinished:
        left = "; ".join(f"`{row}` folds {_folds_text(folds)}" for row, folds in unfinished.items())
        sentences.append(
            f"**The cross-validated study has not finished:** folds {_folds_text(summary['folds'])} of {k} "
            f"have a record for every row (still to run: {left}), so what follows is the answer so far."
        )
        where = f"On the {summary['images']} held-out photographs of folds {_folds_text(summary['folds'])}"
    else:
        where = f"On all {summary['images']} held-out photographs of the {k} folds"
    rows = summary["rows"]
    qwk = {row: rows[row]["intervals"]["qwk"] for row in (reference, baseline) if row in rows}
    pooled = ", ".join(
        f"`{row}` {entry['value']:.3f} [{entry['low']:.3f}, {entry['high']:.3f}]"
        for row, entry in qwk.items()
    )
    main = summary["differences"][baseline]["qwk"]
    reading = {
        "better": "DeepMT-DR **beats** grading the LR photograph directly",
        "worse": "DeepMT-DR grades **worse** than grading the LR photograph directly",
        "unclear": "DeepMT-DR **cannot be told apart** from grading the LR photograph directly",
    }[verdict(main)]
    sentences.append(
        f"{where} (pooled QWK with 95% intervals: {pooled}), "
        f"{_difference_text('`' + reference + '`', '`' + baseline + '`', main)}: {reading}."
    )
    if ablation in summary["differences"]:
        task = summary["differences"][ablation]["qwk"]
        effect = {
            "better": "it **helps**",
            "worse": "it **hurts**",
            "unclear": "it has **no measurable effect** (the interval contains 0)",
        }[verdict(task)]
        sentences.append(
            f"The task-aware loss: {_difference_text('`' + reference + '`', '`' + ablation + '`', task)}: {effect}."
        )
    sentences.append(
        "Intervals: bootstrap over photographs (whole duplicate groups resampled), paired on the same "
        "resamples; the table below has every row and metric."
    )
    return " ".join(sentences) + "\n"


def cv_answer_block(root: Path, study: str = CV_STUDY, records: str = CV_RECORDS) -> str:
    """:func:`cv_answer` of the committed records."""
    spec, summary = _cv_study(root, study, records)
    return cv_answer(summary, spec["recorded"], spec["k_folds"], spec["reference"])


# ------------------------------------------------------------------------------------------------
# Per-seed tables of the table runner's results.csv (the format of engine/tables.py, re-read here:
# evaluation/ does not import engine/)
# ------------------------------------------------------------------------------------------------

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


def _number(text: str | None) -> float | None:
    if text in (None, ""):
        return None
    value = float(text)
    return None if math.isnan(value) else value


def _mean_sd(values: Sequence[float] | None, digits: int, sign: str = "") -> str:
    """``mean ± sample sd`` (the mean alone for one value, ``-`` for none), as engine/tables.py writes it."""
    if not values:
        return "-"
    mean = statistics.fmean(values)
    text = f"{mean:{sign}.{digits}f}"
    return text if len(values) == 1 else f"{text} ± {statistics.stdev(values):.{digits}f}"


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
            "epoch_seconds",
            "wall_seconds",
            "psnr_bicubic",
            "ssim_bicubic",
        ):
            value = _number(result.get(key))
            if value is not None:
                entry.setdefault(key, []).append(value)
        if _number(result.get("qwk")) is not None:
            entry["qwk_by_seed"][seed] = float(result["qwk"])
    names = [name for name in order if name in summary] + [
        name for name in summary if name not in order
    ]
    return {name: summary[name] for name in names}


def seed_table_lines(summary: dict[str, dict], reference: str | None) -> list[str]:
    """Markdown lines: one row per table row, mean ± sd over seeds, the paired ΔQWK to ``reference``."""
    columns = ["row", "seeds", *[header for _, header, _ in SEED_METRICS]]
    columns += [f"ΔQWK vs {reference}"] if reference else []
    columns.append("train min")
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for name, entry in summary.items():
        cells = [name, str(len(entry["seeds"]))] + [
            _mean_sd(entry.get(key), digits) for key, _, digits in SEED_METRICS
        ]
        if reference:
            ref = summary.get(reference)
            seeds = (
                sorted(set(entry["qwk_by_seed"]) & set(ref["qwk_by_seed"]))
                if ref and name != reference
                else []
            )
            cells.append(
                _mean_sd([entry["qwk_by_seed"][s] - ref["qwk_by_seed"][s] for s in seeds], 3, "+")
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
    notes = [legend]
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


def _seed_renderer(results: str, rows_file: str, split: str) -> Renderer:
    return lambda root: seed_table(root, results, rows_file, split)


RENDERERS: dict[str, Renderer] = {
    "idrid-duplicates": duplicates_table,
    "idrid-cv": cv_table,
    "idrid-cv-answer": cv_answer_block,
    **{name: _seed_renderer(*source) for name, source in SEED_TABLES.items()},
}


def regenerate(text: str, root: Path, renderers: dict[str, Renderer] = RENDERERS) -> str:
    """``text`` with every marked table block rewritten by its renderer; an unknown name is a KeyError."""

    def render(match: re.Match) -> str:
        name = match.group("name")
        if name not in renderers:
            raise KeyError(f"no renderer for table block {name!r}")
        return f"{match.group(1)}{renderers[name](root)}{match.group(4)}"

    return BLOCK.sub(render, text)


def table_names(text: str) -> list[str]:
    return [match.group("name") for match in BLOCK.finditer(text)]
