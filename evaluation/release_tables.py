"""Tables of a recorded run (``scripts/record_run.py``): where its training time went and how
its evaluations scored, grading with intervals, SR against bicubic and the lesion maps per lesion.
Rendered into the docs by ``scripts/results_tables.py`` like every generated table."""

from __future__ import annotations

import json
from pathlib import Path

from data.records import LESIONS
from data.splits import load_groups
from evaluation.formatting import format_interval, format_number
from evaluation.paired_compare import align, compare, markdown
from evaluation.prediction_csv import read_graded

STAGE_ORDER = ("isr", "seg", "cls", "joint")  # the record's JSON keeps its keys sorted


def _interval(entry: dict | None, value: float | None = None) -> str:
    """The value with its interval; the bare value where the evaluation has no interval."""
    return format_interval(entry) if entry else format_number(value, ".3f", "—")


def _stage_lines(record: dict) -> list[str]:
    lines = ["| stage | epochs | wall min |", "|---|---|---|"]
    total = 0.0
    stages = sorted(record["stages"].items(), key=lambda item: STAGE_ORDER.index(item[0]))
    for stage, entry in stages:
        total += entry["seconds"]
        lines.append(f"| {stage} | {entry['epochs']} | {entry['seconds'] / 60:.1f} |")
    lines.append(f"| all | | **{total / 60:.1f}** |")
    return lines


def _psnr(sr: dict | None, key: str) -> str:
    if not sr or key not in sr.get("sr", {}):
        return "—"
    return f"{sr['sr'][key]:.2f} ({sr['bicubic'][key]:.2f})"


def _aupr_cells(data: dict) -> list[str]:
    """One evaluation's AUPR per lesion and their mean ("—" where a lesion has no mask)."""
    segmentation = data.get("segmentation") or {}
    return [
        format_number(segmentation.get(lesion, {}).get("aupr"), ".3f", "—")
        for lesion in (*LESIONS, "mean")
    ]


def _threads(record: dict) -> str:
    return f"{record['threads']} thread{'s' if record['threads'] != 1 else ''}"


def _aupr_header() -> str:
    return " | ".join(f"AUPR {lesion}" for lesion in (*LESIONS, "mean"))


def _evaluation_label(name: str, data: dict) -> str:
    return f"{name} ({data['input'].upper()}{', flip TTA' if data['tta'] else ''})"


def _train_minutes(record: dict) -> float:
    return sum(entry["seconds"] for entry in record["stages"].values()) / 60


def _not_recorded(missing: list[str]) -> list[str]:
    return (
        ["Not recorded yet: " + ", ".join(f"`{arm}`" for arm in missing) + "."] if missing else []
    )


def _evaluation_lines(record: dict) -> list[str]:
    header = (
        "| evaluation | images | QWK [95% CI] | referable AUC [95% CI] | accuracy | "
        "PSNR dB (bicubic) | lesion PSNR dB (bicubic) | " + _aupr_header() + " |"
    )
    lines = [header, "|" + "---|" * (8 + len(LESIONS))]
    for name, data in _evaluations(record):
        grading, intervals = data["grading"], data.get("intervals") or {}
        aupr = _aupr_cells(data)
        lines.append(
            f"| {name} ({data['input'].upper()} input{', flip TTA' if data['tta'] else ''}) "
            f"| {grading['n']} | {_interval(intervals.get('qwk'), grading['qwk'])} "
            f"| {_interval(intervals.get('referable_auc'), grading['referable_auc'])} "
            f"| {grading['accuracy']:.3f} | {_psnr(data.get('sr'), 'psnr')} "
            f"| {_psnr(data.get('sr'), 'psnr_lesion')} | " + " | ".join(aupr) + " |"
        )
    return lines


def _evaluations(record: dict) -> list[tuple[str, dict]]:
    """The evaluations, the system's (LR input) before the HR upper bound's."""
    return sorted(
        record["evaluations"].items(), key=lambda item: (item[1]["input"] != "lr", item[0])
    )


def _confusion_lines(name: str, data: dict) -> list[str]:
    matrix = data["grading"]["confusion"]
    lines = [
        f"Confusion matrix of `{name}` (rows: reference grade, columns: predicted):",
        "",
        "| | " + " | ".join(f"pred {k}" for k in range(len(matrix))) + " |",
        "|---|" + "---|" * len(matrix),
    ]
    lines += [
        f"| grade {k} | " + " | ".join(str(v) for v in row) + " |" for k, row in enumerate(matrix)
    ]
    return lines


def run_record_table(root: Path, records: str) -> str:
    """The stage-time table, the evaluations table and the first evaluation's confusion matrix of
    the record in ``root / records``; a line saying so when there is none yet."""
    path = root / records / "record.json"
    if not path.is_file():
        return f"No record yet (`python scripts/record_run.py RUN --out {records}`).\n"
    record = json.loads(path.read_text(encoding="utf-8"))
    first = _evaluations(record)[0]
    lines = [
        *_stage_lines(record),
        "",
        *_evaluation_lines(record),
        "",
        *_confusion_lines(*first),
        "",
        f"Run `{record['run']}` (config hash {record['config_hash']}), recorded at commit "
        f"{record['commit'][:7]}, {record['cpu']}, {_threads(record)}, torch "
        f"{record['torch']}. 95% intervals: bootstrap over photographs (duplicate groups "
        f"resampled whole). PSNR inside the field of view; lesion PSNR inside the dilated lesion "
        f"masks; AUPR per lesion over the pixels of the images that have that lesion's mask. "
        f"Source: `{records}/record.json` (per-image predictions beside it).",
    ]
    if record.get("note"):
        lines.append(f"Note: {record['note']}")
    return "\n".join(lines) + "\n"


def lever_records_table(root: Path, records: str, arms: dict[str, str]) -> str:
    """One line per lever arm (``arms``: record folder under ``root / records`` -> what differs):
    each arm's lesion AUPR from its first evaluation and its training time, for arms that differ
    in one setting and were evaluated alike; a line saying so for arms not recorded yet."""
    lines = [
        "| arm | what differs | evaluation | " + _aupr_header() + " | train min |",
        "|---|---|---|" + "---|" * (len(LESIONS) + 2),
    ]
    missing, first = [], None
    for arm, what in arms.items():
        path = root / records / arm / "record.json"
        if not path.is_file():
            missing.append(arm)
            continue
        record = json.loads(path.read_text(encoding="utf-8"))
        first = first or record
        name, data = _evaluations(record)[0]
        lines.append(
            f"| `{arm}` | {what} | {_evaluation_label(name, data)} | "
            + " | ".join(_aupr_cells(data))
            + f" | {_train_minutes(record):.1f} |"
        )
    if first is None:
        return f"No record yet (`python scripts/record_run.py RUN --out {records}/ARM`).\n"
    lines += [
        "",
        f"Recorded at commit {first['commit'][:7]}, {first['cpu']}, {_threads(first)}, torch "
        f"{first['torch']}. AUPR per lesion "
        f"over the pixels of the validation images that have that lesion's mask. Source: "
        f"`{records}/<arm>/record.json`.",
    ]
    lines += _not_recorded(missing)
    return "\n".join(lines) + "\n"


def grading_lever_table(root: Path, arms: dict[str, tuple[str, str]]) -> str:
    """One line per whole-recipe arm (``arms``: name -> (record folder under ``root``, what
    differs)): its first evaluation's grading with intervals, SR against bicubic and lesion AUPR,
    and its training time; for runs that differ in one setting and were evaluated alike."""
    lines = [
        "| arm | what differs | evaluation | QWK [95% CI] | referable AUC [95% CI] | "
        "PSNR dB (bicubic) | lesion PSNR dB (bicubic) | " + _aupr_header() + " | train min |",
        "|---|---|---|---|---|---|---|" + "---|" * (len(LESIONS) + 2),
    ]
    missing, provenance = [], []
    for arm, (folder, what) in arms.items():
        path = root / folder / "record.json"
        if not path.is_file():
            missing.append(arm)
            continue
        record = json.loads(path.read_text(encoding="utf-8"))
        name, data = _evaluations(record)[0]
        grading, intervals = data["grading"], data.get("intervals") or {}
        lines.append(
            f"| `{arm}` | {what} | {_evaluation_label(name, data)} "
            f"| {_interval(intervals.get('qwk'), grading['qwk'])} "
            f"| {_interval(intervals.get('referable_auc'), grading['referable_auc'])} "
            f"| {_psnr(data.get('sr'), 'psnr')} | {_psnr(data.get('sr'), 'psnr_lesion')} | "
            + " | ".join(_aupr_cells(data))
            + f" | {_train_minutes(record):.1f} |"
        )
        provenance.append(
            f"`{arm}` at commit {record['commit'][:7]} ({record['cpu']}, {_threads(record)}, "
            f"source `{folder}/record.json`)"
        )
    if not provenance:
        return "No record yet (`python scripts/record_run.py RUN --out FOLDER`).\n"
    lines += [
        "",
        "Recorded: " + "; ".join(provenance) + ". 95% intervals: bootstrap over photographs "
        "(duplicate groups resampled whole). PSNR inside the field of view; lesion PSNR inside "
        "the dilated lesion masks; AUPR per lesion over the pixels of the validation images that "
        "have that lesion's mask.",
    ]
    lines += _not_recorded(missing)
    return "\n".join(lines) + "\n"


def paired_predictions_table(root: Path, a: str, b: str, names: tuple[str, str]) -> str:
    """The paired comparison of two committed per-image prediction files (``root``-relative) on
    the photographs both graded: each model's metrics with 95% intervals and the difference
    ``a - b`` (scripts/compare_predictions.py's table, so the docs carry the same numbers)."""
    paths = (root / a, root / b)
    missing = [str(path.relative_to(root)) for path in paths if not path.is_file()]
    if missing:
        return "\n".join(_not_recorded(missing)) + "\n"
    groups = load_groups("idrid", root / "splits" / "idrid_groups.csv")
    aligned = align(read_graded(paths[0]), read_graded(paths[1]), names=names)
    return (
        markdown(compare(aligned, groups), names)
        + f"\n`python scripts/compare_predictions.py {a} {b} --names {','.join(names)}`"
        " (sensitivity and specificity at p(referable) 0.5 for both).\n"
    )


def releases_headline(root: Path, releases: dict[str, str]) -> str:
    """The README's one paragraph on the releases (``releases``: name -> record folder): each
    one's validation from the LR input, grading with intervals, lesion AUPR and SR against bicubic."""
    parts, missing, sizes = [], [], set()
    for name, folder in releases.items():
        path = root / folder / "record.json"
        if not path.is_file():
            missing.append(name)
            continue
        _, data = _evaluations(json.loads(path.read_text(encoding="utf-8")))[0]
        grading, intervals = data["grading"], data.get("intervals") or {}
        sizes.add(str(grading["n"]))
        segmentation = data.get("segmentation") or {}
        sr = (data.get("sr") or {}).get("sr", {})
        bicubic = (data.get("sr") or {}).get("bicubic", {})
        gain = sr["psnr"] - bicubic["psnr"] if "psnr" in sr and "psnr" in bicubic else None
        parts.append(
            f"`{name}` QWK {_interval(intervals.get('qwk'), grading['qwk'])}, referable AUC "
            f"{grading['referable_auc']:.3f}, lesion AUPR from SR mean "
            f"{format_number(segmentation.get('mean', {}).get('aupr'), '.3f', '—')} (MA "
            f"{format_number(segmentation.get('MA', {}).get('aupr'), '.3f', '—')})"
            + (f", SR {gain:+.2f} dB against bicubic" if gain is not None else "")
        )
    text = (
        f"**The releases** on the grouped validation split ({', '.join(sorted(sizes))} graded "
        "photographs; each recipe was chosen on them, so these are optimistic), from the LR "
        "input: " + "; ".join(parts) + "."
        if parts
        else "**The releases**: none recorded yet."
    )
    return " ".join([text, *_not_recorded(missing)]) + "\n"
