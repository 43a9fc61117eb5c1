"""The cross-validated comparison, computed from committed out-of-fold records (engine/cv_study.py).

Pooled over the folds that **every** row has finished (so a partial study still compares like
with like): QWK, accuracy, macro AUC, referable-DR AUC, sensitivity and specificity, and ECE, each
with a 95% bootstrap interval over images that resamples whole duplicate groups
(``splits/<dataset>_groups.csv``); the reference row minus each other row, paired on the same
resamples, with interval and p-value; and the spread of the per-fold QWK beside it.

The referable operating point of fold k is fixed without fold k's labels: the threshold on
p(grade >= 2) that gives specificity 0.90 on the row's out-of-fold predictions of the *other*
finished folds (themselves held-out predictions), so no image's own label sets its threshold.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from evaluation.formatting import format_interval
from evaluation.prediction_csv import read_graded
from evaluation.statistics import (
    bootstrap_intervals,
    fold_spread,
    paired_difference,
    referable_labels,
    referable_probability,
    summary_metrics,
    threshold_at_specificity,
)

TARGET_SPECIFICITY = 0.90
SHOWN = ("qwk", "accuracy", "macro_auc", "referable_auc", "sensitivity", "specificity", "ece")
LABELS = {
    "qwk": "QWK",
    "accuracy": "accuracy",
    "macro_auc": "macro AUC",
    "referable_auc": "referable AUC",
    "sensitivity": "sensitivity",
    "specificity": "specificity",
    "ece": "ECE",
}


@dataclass(frozen=True)
class FoldRecord:
    ids: list[str]
    grades: np.ndarray
    predicted: np.ndarray
    probs: np.ndarray
    meta: dict


def read_fold(csv_path: Path) -> FoldRecord:
    """One (row, fold) record: its predictions CSV and the provenance JSON beside it. Held-out
    images without a grade (segmentation-only photographs, grade -1) are left out: no metric
    here can score them."""
    rows = read_graded(csv_path).with_reference()
    meta = json.loads(csv_path.with_suffix(".json").read_text())
    return FoldRecord(rows.keys, rows.reference, rows.predicted, rows.probs, meta)


def read_records(records: Path, rows: list[str]) -> dict[str, dict[int, FoldRecord]]:
    """``{row: {fold: record}}`` of every complete record (CSV and JSON) of ``rows``."""
    found: dict[str, dict[int, FoldRecord]] = {}
    for row in rows:
        found[row] = {}
        for path in sorted((records / row).glob("fold*.csv")):
            if path.with_suffix(".json").is_file():
                found[row][int(path.stem.removeprefix("fold"))] = read_fold(path)
    return found


def common_folds(found: dict[str, dict[int, FoldRecord]]) -> list[int]:
    sets = [set(folds) for folds in found.values()]
    return sorted(set.intersection(*sets)) if sets else []


@dataclass(frozen=True)
class Pooled:
    """A row's out-of-fold predictions over the common folds, in one image order."""

    ids: list[str]
    grades: np.ndarray
    predicted: np.ndarray
    probs: np.ndarray
    thresholds: np.ndarray  # per image: its fold's referable threshold
    folds: np.ndarray


def fold_threshold(records: dict[int, FoldRecord], fold: int, folds: list[int]) -> float:
    """Specificity-0.90 threshold from the other folds' out-of-fold predictions (0.5 with none)."""
    others = [records[f] for f in folds if f != fold]
    if not others:
        return 0.5
    p = np.concatenate([referable_probability(r.probs) for r in others])
    truth = np.concatenate([referable_labels(r.grades) for r in others])
    return threshold_at_specificity(p, truth, TARGET_SPECIFICITY)


def pool(records: dict[int, FoldRecord], folds: list[int]) -> Pooled:
    """Concatenate a row's folds, sorted by image id (every row then has the same order)."""
    ids, grades, predicted, probs, thresholds, fold_of = [], [], [], [], [], []
    for fold in folds:
        record = records[fold]
        threshold = fold_threshold(records, fold, folds)
        ids += record.ids
        grades.append(record.grades)
        predicted.append(record.predicted)
        probs.append(record.probs)
        thresholds.append(np.full(len(record.ids), threshold))
        fold_of.append(np.full(len(record.ids), fold))
    order = np.argsort(np.array(ids))
    cat = lambda parts: np.concatenate(parts)[order]  # noqa: E731
    return Pooled(
        [ids[i] for i in order],
        cat(grades),
        cat(predicted),
        cat(probs),
        cat(thresholds),
        cat(fold_of),
    )


def _difference(entry: dict) -> str:
    return f"{entry['difference']:+.3f} [{entry['low']:+.3f}, {entry['high']:+.3f}], p = {entry['p_value']:.3f}"


def read_pairs(values, rows: list[str], where: Path | str) -> tuple[tuple[str, str], ...]:
    """A study's ``pairs`` (``[[a, b], ...]``: a minus b, paired), checked against its rows."""
    pairs = []
    for pair in values or []:
        if not (isinstance(pair, list) and len(pair) == 2 and all(name in rows for name in pair)):
            raise ValueError(f"{where}: pairs entry {pair!r} must be [row, other row], both rows")
        pairs.append((str(pair[0]), str(pair[1])))
    return tuple(pairs)


def _train_ce(records: dict[int, FoldRecord], folds: list[int]) -> dict | None:
    """The grader's last-epoch training CE, mean over the folds whose record has it (records
    before 2026-12-07 do not), or None."""
    have = [f for f in folds if records[f].meta.get("grader_train_ce") is not None]
    if not have:
        return None
    mean = float(np.mean([records[f].meta["grader_train_ce"] for f in have]))
    return {"mean": mean, "folds": have}


def _train_ce_text(entry: dict | None, folds: list[int]) -> str:
    if entry is None:
        return "-"
    text = f"{entry['mean']:.2f}"
    if entry["folds"] != folds:
        text += (
            f" (fold{'s' if len(entry['folds']) > 1 else ''} {', '.join(map(str, entry['folds']))})"
        )
    return text


def study_summary(
    records: Path,
    rows: list[str],
    reference: str,
    groups: dict[str, str],
    n_resamples: int = 2000,
    pairs: tuple[tuple[str, str], ...] = (),
) -> dict:
    """Everything the tables show, as plain numbers (see module docstring); ``pairs`` adds
    ``a`` minus ``b`` for other pairs of rows, paired the same way."""
    found = read_records(records, rows)
    folds = common_folds(found)
    if not folds:
        recorded = {row: sorted(found[row]) for row in rows if found.get(row)}
        return {"folds": [], "rows": {}, "differences": {}, "recorded": recorded}
    pooled = {row: pool(found[row], folds) for row in rows}
    ids = pooled[reference].ids
    for row, data in pooled.items():
        if data.ids != ids:
            raise ValueError(f"{records / row}: its folds hold other images than {reference}'s")
    group_of = [groups.get(i, i) for i in ids]
    summary: dict = {
        "folds": folds,
        "images": len(ids),
        "rows": {},
        "differences": {},
        "pairs": {},
    }
    ref = pooled[reference]
    for row, data in pooled.items():
        per_fold = [
            summary_metrics(
                data.grades[data.folds == f],
                data.predicted[data.folds == f],
                data.probs[data.folds == f],
                data.thresholds[data.folds == f],
            )["qwk"]
            for f in folds
        ]
        summary["rows"][row] = {
            "intervals": bootstrap_intervals(
                data.grades, data.predicted, data.probs, data.thresholds, group_of, n_resamples
            ),
            "fold_qwk": fold_spread(per_fold),
            "wall_seconds": sum(
                found[row][f].meta.get("wall_seconds", 0.0)
                + found[row][f].meta.get("shared_wall_seconds", 0.0)
                for f in folds
            ),
            "cpus": sorted({found[row][f].meta.get("cpu", "?") for f in folds}),
            "train_ce": _train_ce(found[row], folds),
        }
        if row != reference:
            summary["differences"][row] = _paired(ref, data, group_of, n_resamples)
    for a, b in pairs:
        summary["pairs"][(a, b)] = _paired(pooled[a], pooled[b], group_of, n_resamples)
    return summary


def _paired(a: Pooled, b: Pooled, group_of: list[str], n_resamples: int) -> dict:
    """Row ``a`` minus row ``b`` on the same images, bootstrap-paired (statistics.paired_difference)."""
    return paired_difference(
        a.grades,
        a.predicted,
        a.probs,
        b.predicted,
        b.probs,
        a.thresholds,
        b.thresholds,
        group_of,
        n_resamples,
    )


def supplementary_summary(
    records: Path,
    rows: list[str],
    reference: str,
    groups: dict[str, str],
    folds: list[int],
    n_resamples: int = 2000,
) -> dict[str, dict]:
    """Rows outside the main comparison (``supplementary: true`` in the study), each pooled on the
    folds of ``folds`` it has finished and paired with ``reference`` on those photographs only, so
    such a row can be added to a study under way without holding back the main table."""
    found = read_records(records, [reference, *rows])
    out: dict[str, dict] = {}
    for row in rows:
        have = [f for f in folds if f in found[row] and f in found[reference]]
        if not have:
            out[row] = {"folds": []}
            continue
        ref, data = pool(found[reference], have), pool(found[row], have)
        if data.ids != ref.ids:
            raise ValueError(f"{records / row}: its folds hold other images than {reference}'s")
        group_of = [groups.get(i, i) for i in ref.ids]
        intervals = {
            name: bootstrap_intervals(
                pooled.grades,
                pooled.predicted,
                pooled.probs,
                pooled.thresholds,
                group_of,
                n_resamples,
            )
            for name, pooled in ((row, data), (reference, ref))
        }
        out[row] = {
            "folds": have,
            "images": len(ref.ids),
            "intervals": intervals[row],
            "reference_intervals": intervals[reference],
            "difference": _paired(ref, data, group_of, n_resamples),
            "train_ce": _train_ce(found[row], have),
        }
    return out


def supplementary_markdown(supplementary: dict[str, dict], reference: str) -> str:
    """The supplementary rows' table (empty text when the study has none)."""
    if not supplementary:
        return ""
    lines = [
        f"| supplementary row | folds | images | QWK | referable AUC | grader train CE "
        f"| {reference} QWK, same folds | {reference} minus row: ΔQWK |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row, entry in supplementary.items():
        if not entry["folds"]:
            lines.append(f"| {row} | none yet | | | | | | |")
            continue
        lines.append(
            f"| {row} | {', '.join(map(str, entry['folds']))} | {entry['images']} "
            f"| {format_interval(entry['intervals']['qwk'])} "
            f"| {format_interval(entry['intervals']['referable_auc'])} "
            f"| {_train_ce_text(entry['train_ce'], entry['folds'])} "
            f"| {format_interval(entry['reference_intervals']['qwk'])} "
            f"| {_difference(entry['difference']['qwk'])} |"
        )
    return "\n".join(lines) + "\n"


def _operating_point_text(folds: list[int]) -> str:
    if len(folds) < 2:  # fold_threshold's fallback: no other fold to fit on yet
        return "p_referable >= 0.5 (one fold recorded: no other fold to fit the specificity threshold on yet)"
    return f"specificity {TARGET_SPECIFICITY:.2f} on the other folds' out-of-fold predictions"


def markdown(summary: dict, rows: dict[str, str], reference: str) -> str:
    """The results table (rows x metrics with intervals) and the paired-difference table."""
    if not summary["folds"]:
        recorded = summary.get("recorded") or {}
        if not recorded:
            return "No (row, fold) record yet: run `python scripts/idrid_cv.py`.\n"
        done = "; ".join(
            f"{row} fold{'s' if len(folds) > 1 else ''} {', '.join(map(str, folds))}"
            for row, folds in recorded.items()
        )
        return (
            f"No fold has a record of every row yet, so nothing is pooled (recorded so far: {done}); "
            "`python scripts/idrid_cv.py` continues the study.\n"
        )
    with_ce = any(entry.get("train_ce") for entry in summary["rows"].values())
    head = "| row | " + " | ".join(LABELS[m] for m in SHOWN) + " | per-fold QWK (mean ± sd) |"
    head += " grader train CE |" if with_ce else ""
    lines = [head, "|---" * (len(SHOWN) + 2 + with_ce) + "|"]
    for row in rows:
        entry = summary["rows"][row]
        spread = entry["fold_qwk"]
        sd = "" if np.isnan(spread["sd"]) else f" ± {spread['sd']:.3f}"
        lines.append(
            f"| {row} | "
            + " | ".join(format_interval(entry["intervals"][m]) for m in SHOWN)
            + f" | {spread['mean']:.3f}{sd} |"
            + (f" {_train_ce_text(entry.get('train_ce'), summary['folds'])} |" if with_ce else "")
        )
    lines += [
        "",
        f"| {reference} minus | ΔQWK | Δ referable AUC | Δ accuracy |",
        "|---|---|---|---|",
    ]
    for row, diff in summary["differences"].items():
        lines.append(
            f"| {row} | {_difference(diff['qwk'])} | {_difference(diff['referable_auc'])} "
            f"| {_difference(diff['accuracy'])} |"
        )
    if summary.get("pairs"):
        lines += ["", "| other pairs | ΔQWK | Δ referable AUC | Δ accuracy |", "|---|---|---|---|"]
        for (a, b), diff in summary["pairs"].items():
            lines.append(
                f"| {a} minus {b} | {_difference(diff['qwk'])} "
                f"| {_difference(diff['referable_auc'])} | {_difference(diff['accuracy'])} |"
            )
    hours = sum(entry["wall_seconds"] for entry in summary["rows"].values()) / 3600
    cpus = sorted({cpu for entry in summary["rows"].values() for cpu in entry["cpus"]})
    lines += [
        "",
        f"Folds {', '.join(map(str, summary['folds']))} of {summary.get('total_folds', '?')} ({summary['images']} held-out images per row); "
        f"95% intervals: bootstrap over images, whole duplicate groups resampled, 2,000 resamples; "
        f"referable operating point: {_operating_point_text(summary['folds'])}. "
        f"Training and grading: {hours:.1f} h of wall time on {', '.join(cpus)}.",
    ]
    if with_ce:
        lines.append(
            "grader train CE: the grader's mean training cross-entropy in the last epoch it "
            "trained (class-weighted; ln 5 = 1.61 is a grader that never fitted its images), mean "
            "over the folds whose record has it (recorded since 2026-12-07)."
        )
    for row, summary_line in rows.items():
        lines.append(f"- `{row}`: {summary_line}")
    return "\n".join(lines) + "\n"
