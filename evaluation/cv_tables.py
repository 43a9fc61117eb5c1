"""The cross-validated study's table and its answer in words (``<!-- table:idrid-cv -->`` and
``<!-- table:idrid-cv-answer -->``), from its committed records: ``scripts/idrid_cv.yaml`` and
``docs/records/idrid_cv/`` (the comparison itself: evaluation/cv_results.py).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import yaml

from data.duplicates import read_groups
from data.splits import read_folds_file
from evaluation.cv_results import (
    markdown,
    read_pairs,
    study_summary,
    supplementary_markdown,
    supplementary_summary,
)
from evaluation.formatting import format_interval, format_number

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
        core = [r for r, v in spec["rows"].items() if not v.get("supplementary")]
        extra = [r for r in spec["rows"] if r not in core]
        pairs = read_pairs(spec.get("pairs"), core, root / study)
        summary = study_summary(folder, core, spec["reference"], groups, pairs=pairs)
        summary["total_folds"] = len(spec["k_folds"])
        summary["supplementary"] = supplementary_summary(
            folder, extra, spec["reference"], groups, spec["k_folds"]
        )
        spec["recorded"] = recorded_folds(folder, core)
        _CV_CACHE.clear()
        _CV_CACHE[key] = (spec, summary)
    return _CV_CACHE[key]


def cv_table(root: Path, study: str = CV_STUDY, records: str = CV_RECORDS) -> str:
    """The cross-validated comparison (evaluation/cv_results.py) from its committed records."""
    spec, summary = _cv_study(root, study, records)
    rows = {name: values.get("summary", "") for name, values in spec["rows"].items()}
    core = {name: text for name, text in rows.items() if name not in summary["supplementary"]}
    text = markdown(summary, core, spec["reference"])
    if summary["supplementary"]:
        text += (
            "\nSupplementary rows, added while the study ran: each pooled on the folds it has "
            f"finished and paired with `{spec['reference']}` on the same photographs (referable "
            "operating point from those folds only).\n\n"
            + supplementary_markdown(summary["supplementary"], spec["reference"])
            + "\n"
            + "".join(f"- `{name}`: {rows[name]}\n" for name in summary["supplementary"])
        )
    return text


def _folds_text(folds: Sequence[int]) -> str:
    """``0, 1, 2`` or ``none``."""
    return ", ".join(map(str, folds)) if folds else "none"


def _signed(value: float) -> str:
    return format_number(value, "+.3f", missing="undefined")


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


def _supplementary_sentences(summary: dict, reference: str) -> list[str]:
    """One sentence per supplementary row that has a fold: the reference minus it, read."""
    sentences = []
    for row, entry in (summary.get("supplementary") or {}).items():
        if not entry["folds"]:
            continue
        diff = entry["difference"]["qwk"]
        reading = {
            "better": "DeepMT-DR **beats** it too",
            "worse": f"`{row}` grades **better** than DeepMT-DR",
            "unclear": "the two **cannot be told apart**",
        }[verdict(diff)]
        sentences.append(
            f"Against the supplementary row `{row}`, on the {entry['images']} photographs of "
            f"fold{'s' if len(entry['folds']) > 1 else ''} {_folds_text(entry['folds'])}: "
            f"{_difference_text('`' + reference + '`', '`' + row + '`', diff)}: {reading}."
        )
    return sentences


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
    pooled = ", ".join(f"`{row}` {format_interval(entry)}" for row, entry in qwk.items())
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
    sentences += _supplementary_sentences(summary, reference)
    sentences.append(
        "Intervals: bootstrap over photographs (whole duplicate groups resampled), paired on the same "
        "resamples; the table below has every row and metric."
    )
    return " ".join(sentences) + "\n"


def cv_answer_block(root: Path, study: str = CV_STUDY, records: str = CV_RECORDS) -> str:
    """:func:`cv_answer` of the committed records."""
    spec, summary = _cv_study(root, study, records)
    return cv_answer(summary, spec["recorded"], spec["k_folds"], spec["reference"])
