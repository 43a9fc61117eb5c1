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


def agreement_table(root: Path, release: str = "deepmt_dr_idrid_small", split: str = "val") -> str:
    """test.py vs predict.py on the same photographs, one row per cache JPEG quality
    (scripts/inference_agreement.py; records ``<release>_<split>[_q<quality>].json``)."""
    folder = root / "docs/records/inference_agreement"
    records = [
        json.loads(path.read_text()) for path in sorted(folder.glob(f"{release}_{split}*.json"))
    ]
    records.sort(key=lambda record: (record["cache_jpeg_quality"], record["precision"]))
    rows = [
        "| test.py's cache, precision | cache vs photo PSNR (median) | test.py = predict.py "
        "(photographs) | test.py = predict.py's grader on the cache's squares | predict.py = itself "
        "after a JPEG round trip of its squares | largest p_referable gap | differing |",
        "|---|---|---|---|---|---|---|",
    ]
    for data in records:
        differing = ", ".join(
            f"{image['id'].rsplit('/', 1)[-1]} ({image['test']} vs {image['predict']})"
            for image in data["images"]
            if image["test"] != image["predict"]
        )
        round_trip = data.get("agree_predict_photo_jpeg")
        rows.append(
            f"| JPEG quality {data['cache_jpeg_quality']}, {data['precision']} "
            f"| {data['median_cache_vs_photo_psnr_db']:.1f} dB "
            f"| {data['agree_test_predict']:.1%} of {data['n']} | "
            f"{data['agree_test_cache_via_predict']:.1%} | "
            f"{'—' if round_trip is None else f'{round_trip:.1%}'} "
            f"| {data['max_abs_p_referable_difference']:.3f} | {differing or 'none'} |"
        )
    first = records[0]
    note = (
        f"\n{first['split']} split, `{Path(first['checkpoint']).name}`, single pass, on "
        f"{first['cpu']}: `python scripts/inference_agreement.py --data-root PATH [--amp off] "
        f"[--cache-dir DIR --jpeg-quality Q]` ("
        + ", ".join(f"{data['wall_seconds']:.0f} s" for data in records)
        + f"; commit {first['commit'][:7]}); records in `docs/records/inference_agreement/`.\n"
    )
    return "\n".join(rows) + "\n" + note


# ------------------------------------------------------------------------------------------------
# The task-aware loss sweep (scripts/task_aware_sweep.yaml, records under docs/records/task_aware_sweep/)
# ------------------------------------------------------------------------------------------------

SWEEP = "scripts/task_aware_sweep.yaml"
SWEEP_RECORDS = "docs/records/task_aware_sweep"


def sweep_records(root: Path, records: str = SWEEP_RECORDS) -> dict[str, dict[int, dict]]:
    """``{arm: {seed: record JSON}}`` of every recorded (arm, seed)."""
    found: dict[str, dict[int, dict]] = {}
    for path in sorted((root / records).glob("*/seed*.json")):
        record = json.loads(path.read_text())
        found.setdefault(record["arm"], {})[int(record["seed"])] = record
    return found


def paired_t_interval(
    differences: Sequence[float], confidence: float = 0.95
) -> tuple[float, float]:
    """Student-t interval of the mean of paired per-seed differences (NaN below two seeds)."""
    from scipy import stats

    n = len(differences)
    if n < 2:
        return math.nan, math.nan
    mean, sd = statistics.fmean(differences), statistics.stdev(differences)
    half = stats.t.ppf(0.5 + confidence / 2, n - 1) * sd / math.sqrt(n)
    return mean - half, mean + half


def _fmt(value, digits: int = 3, sign: str = "") -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:{sign}.{digits}f}"


def sweep_table(root: Path, sweep: str = SWEEP, records: str = SWEEP_RECORDS) -> str:
    """One row per arm: seeds, QWK, the paired QWK difference against the arm it is compared
    with (mean and 95% t-interval over the seeds both have), PSNR, lesion PSNR, CAM agreement
    (Pearson SR vs HR) and the task gap."""
    spec = yaml.safe_load((root / sweep).read_text(encoding="utf-8"))
    found = sweep_records(root, records)
    rows = [
        "| arm | seeds | QWK | ΔQWK vs | ΔQWK (95% CI) | PSNR dB (bicubic) | lesion PSNR dB "
        "| CAM Pearson SR/HR | task gap |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for arm, values in spec["arms"].items():
        runs = found.get(arm, {})
        if not runs:
            rows.append(f"| {arm} | 0 | | | | | | | |")
            continue
        mean = lambda get, runs=runs: statistics.fmean(get(r) for r in runs.values())  # noqa: E731
        against = values.get("against")
        difference = "—"
        if against:
            common = sorted(set(runs) & set(found.get(against, {})))
            deltas = [
                runs[s]["metrics"]["qwk"] - found[against][s]["metrics"]["qwk"] for s in common
            ]
            if deltas:
                low, high = paired_t_interval(deltas)
                difference = (
                    f"{statistics.fmean(deltas):+.3f} ({_fmt(low, sign='+')}, "
                    f"{_fmt(high, sign='+')}), {len(deltas)} seeds"
                )
        rows.append(
            f"| {arm} | {len(runs)} | {mean(lambda r: r['metrics']['qwk']):.3f} | {against or '—'} "
            f"| {difference} | {mean(lambda r: r['metrics']['psnr']):.2f} "
            f"({mean(lambda r: r['metrics']['psnr_bicubic']):.2f}) "
            f"| {mean(lambda r: r['metrics']['psnr_lesion']):.2f} "
            f"| {_fmt(mean(lambda r: r['mechanism']['cam_pearson']))} "
            f"| {_fmt(mean(lambda r: r['mechanism']['task_gap']), sign='+')} |"
        )
    every = [record for runs in found.values() for record in runs.values()]
    note = (
        "\nNo run recorded yet.\n"
        if not every
        else f"\n{len(every)} runs recorded (commit(s) "
        + ", ".join(sorted({record["commit"][:7] for record in every}))
        + f"; {every[0]['cpu']}, {statistics.fmean(r['wall_seconds'] for r in every) / 60:.1f} min "
        f"per arm run). `python scripts/task_aware_sweep.py`; records: `{records}/`.\n"
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
    "inference-agreement": agreement_table,
    "task-aware-sweep": sweep_table,
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
