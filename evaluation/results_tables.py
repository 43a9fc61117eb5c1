"""Results tables rendered from committed records, and the docs they live in kept in step.

A generated table sits in a Markdown file between ``<!-- table:NAME -->`` and
``<!-- /table:NAME -->``; :func:`regenerate` rewrites every such block from its renderer (a
function of the repository root), so no number in a table is typed by hand. ``scripts/
results_tables.py`` is the command; a test fails when a committed table differs from its
regeneration.

This module holds the small renderers (duplicate scores, test.py / predict.py agreement, the
task-aware loss sweep) and the registry :data:`RENDERERS`; the families of larger tables live in
their own modules, re-exported here: ``evaluation/cv_tables.py`` (the cross-validated study and
its answer in words) and ``evaluation/seed_tables.py`` (the table runner's per-seed tables).
"""

from __future__ import annotations

import json
import math
import re
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path

import yaml

from evaluation.cv_tables import (
    CV_RECORDS,
    CV_STUDY,
    cv_answer,
    cv_answer_block,
    cv_table,
    recorded_folds,
    verdict,
)
from evaluation.demo_tables import (
    demo_levers_table,
    demo_profile_table,
    demo_seeds_table,
    demo_time_estimate,
    machine_label,
)
from evaluation.formatting import format_number
from evaluation.release_tables import run_record_table
from evaluation.seed_tables import (
    SEED_METRICS,
    SEED_TABLES,
    seed_table,
    seed_table_lines,
    summarise_seeds,
)

__all__ = [
    "CV_RECORDS",
    "CV_STUDY",
    "RENDERERS",
    "SEED_METRICS",
    "SEED_TABLES",
    "cv_answer",
    "cv_answer_block",
    "cv_table",
    "paired_t_interval",
    "recorded_folds",
    "regenerate",
    "seed_table",
    "seed_table_lines",
    "summarise_seeds",
    "sweep_records",
    "sweep_table",
    "table_names",
    "verdict",
]

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


def _psnr_text(psnr: float) -> str:
    return "identical" if psnr == math.inf else f"{psnr:.1f} dB"


def _storage(record: dict) -> str:
    if record.get("cache_image_format") == "png":
        return "PNG (lossless)"
    return f"JPEG quality {record['cache_jpeg_quality']}"


def agreement_table(root: Path, release: str = "deepmt_dr_idrid_small", split: str = "val") -> str:
    """test.py vs predict.py on the same photographs, one row per cache JPEG quality
    (scripts/inference_agreement.py; records ``<release>_<split>[_q<quality>].json``)."""
    folder = root / "docs/records/inference_agreement"
    records = [
        json.loads(path.read_text()) for path in sorted(folder.glob(f"{release}_{split}*.json"))
    ]
    records.sort(
        key=lambda record: (
            record.get("cache_image_format", "jpeg") == "png",
            record["cache_jpeg_quality"],
            record["precision"],
        )
    )
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
            f"| {_storage(data)}, {data['precision']} "
            f"| {_psnr_text(data['median_cache_vs_photo_psnr_db'])} "
            f"| {data['agree_test_predict']:.1%} of {data['n']} | "
            f"{data['agree_test_cache_via_predict']:.1%} | "
            f"{'—' if round_trip is None else f'{round_trip:.1%}'} "
            f"| {data['max_abs_p_referable_difference']:.3f} | {differing or 'none'} |"
        )
    first = records[0]
    note = (
        f"\n{first['split']} split, `{Path(first['checkpoint']).name}`, single pass, on "
        f"{first['cpu']}: `python scripts/inference_agreement.py --data-root PATH [--amp off] "
        f"[--cache-dir DIR --jpeg-quality Q | --image-format png]` ("
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


def same_base(record: dict, other: dict) -> bool:
    """Whether two arms of a seed started from the same base weights: their recorded digests agree,
    or neither has one (the first records, whose arms all shared one base run in one session)."""
    return record.get("base_weights_sha256") == other.get("base_weights_sha256")


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
            common = [
                seed
                for seed in sorted(set(runs) & set(found.get(against, {})))
                if same_base(runs[seed], found[against][seed])
            ]
            deltas = [
                runs[s]["metrics"]["qwk"] - found[against][s]["metrics"]["qwk"] for s in common
            ]
            if deltas:
                low, high = paired_t_interval(deltas)
                difference = (
                    f"{statistics.fmean(deltas):+.3f} ({format_number(low, '+.3f', 'n/a')}, "
                    f"{format_number(high, '+.3f', 'n/a')}), {len(deltas)} seeds"
                )
        rows.append(
            f"| {arm} | {len(runs)} | {mean(lambda r: r['metrics']['qwk']):.3f} | {against or '—'} "
            f"| {difference} | {mean(lambda r: r['metrics']['psnr']):.2f} "
            f"({mean(lambda r: r['metrics']['psnr_bicubic']):.2f}) "
            f"| {mean(lambda r: r['metrics']['psnr_lesion']):.2f} "
            f"| {format_number(mean(lambda r: r['mechanism']['cam_pearson']), '.3f', 'n/a')} "
            f"| {format_number(mean(lambda r: r['mechanism']['task_gap']), '+.3f', 'n/a')} |"
        )
    every = [record for runs in found.values() for record in runs.values()]
    note = (
        "\nNo run recorded yet.\n"
        if not every
        else f"\n{len(every)} runs recorded (commit(s) "
        + ", ".join(sorted({record["commit"][:7] for record in every}))
        + f"; {', '.join(sorted({machine_label(record) for record in every}))}, "
        f"{statistics.fmean(r['wall_seconds'] for r in every) / 60:.1f} min per arm run). "
        "Arms are paired by seed only where both started from the same base weights "
        f"(`base_weights_sha256`). `python scripts/task_aware_sweep.py`; records: `{records}/`.\n"
    )
    return "\n".join(rows) + "\n" + note


def _seed_renderer(results: str, rows_file: str, split: str) -> Renderer:
    return lambda root: seed_table(root, results, rows_file, split)


RENDERERS: dict[str, Renderer] = {
    "idrid-duplicates": duplicates_table,
    "inference-agreement": agreement_table,
    "task-aware-sweep": sweep_table,
    "idrid-cv": cv_table,
    "idrid-cv-answer": cv_answer_block,
    "demo-seeds": demo_seeds_table,
    "demo-profile": demo_profile_table,
    "demo-levers": demo_levers_table,
    # The demo preset before channels-last in fp32 and the single isr validation (commit 6ae3e63).
    "demo-seeds-6ae3e63": lambda root: demo_seeds_table(root, "docs/records/demo_preset_6ae3e63"),
    "demo-profile-6ae3e63": lambda root: demo_profile_table(
        root, "docs/records/demo_preset_6ae3e63"
    ),
    "demo-avx2-estimate": lambda root: demo_time_estimate(
        root,
        "docs/records/demo_preset_6ae3e63/native_amd-epyc-avx2-only/seed0.json",
        "docs/records/demo_preset_6ae3e63/avx2_amd-epyc-family-26-avx-512-bf16/seed0.json",
        "docs/records/demo/avx2_amd-epyc-family-26-avx-512-bf16/seed0.json",
    ),
    "idrid-1024-run": lambda root: run_record_table(root, "docs/records/idrid_1024"),
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
