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
from collections.abc import Callable
from pathlib import Path

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
)
from evaluation.release_tables import (
    grading_lever_table,
    lever_records_table,
    paired_predictions_table,
    releases_headline,
    run_record_table,
)
from evaluation.seed_tables import (
    SEED_METRICS,
    SEED_TABLES,
    seed_table,
    seed_table_lines,
    summarise_seeds,
)
from evaluation.sweep_tables import (
    paired_t_interval,
    sweep_answer,
    sweep_records,
    sweep_table,
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
    "sweep_answer",
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


def _seed_renderer(results: str, rows_file: str, split: str) -> Renderer:
    return lambda root: seed_table(root, results, rows_file, split)


RENDERERS: dict[str, Renderer] = {
    "idrid-duplicates": duplicates_table,
    "inference-agreement": agreement_table,
    "task-aware-sweep": sweep_table,
    "task-aware-answer": sweep_answer,
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
    # The segmentation loss at 1024 (issue 28): seg stage alone, 100 epochs, same seed.
    "idrid-1024-seg-levers": lambda root: lever_records_table(
        root,
        "docs/records/idrid_1024_seg_levers",
        {
            "dice_focal": "Dice + focal (the preset's `loss.seg_loss`)",
            "dice_bce": "Dice + BCE with lesion pixels weighted 10 (`loss.seg_loss=dice_bce`)",
        },
    ),
    # The 512 preset from random initialisation on the grouped split (issue 28: its ISR net).
    "idrid-small-scratch-run": lambda root: run_record_table(
        root, "docs/records/idrid_small_scratch"
    ),
    # The segmentation loss of the 512 release recipe (issue 28): whole runs from the same start.
    "idrid-512-seg-loss": lambda root: grading_lever_table(
        root,
        {
            "dice_focal": (
                "docs/records/idrid_512_seg_loss/dice_focal",
                "Dice + focal in every stage (the preset's `loss.seg_loss`)",
            ),
            "isr_focal": (
                "docs/records/idrid_512_seg_loss/isr_focal",
                "Dice + focal in the isr stage, Dice + BCE after: `loss.seg_loss=dice_bce "
                "loss.isr_seg_loss=dice_focal`",
            ),
            "dice_bce": (
                "docs/records/release_idrid_small",
                "Dice + BCE (lesion pixels weighted 10) in every stage: `loss.seg_loss=dice_bce` "
                "(the release)",
            ),
        },
    ),
    # The releases' model cards (pretrained_model/README.md): the runs they were exported from.
    "release-idrid-small": lambda root: run_record_table(root, "docs/records/release_idrid_small"),
    "release-idrid-1024": lambda root: run_record_table(root, "docs/records/release_idrid_1024"),
    "releases-headline": lambda root: releases_headline(
        root,
        {
            "deepmt_dr_idrid_small": "docs/records/release_idrid_small",
            "deepmt_dr_idrid_1024": "docs/records/release_idrid_1024",
        },
    ),
    "release-1024-vs-512": lambda root: paired_predictions_table(
        root,
        "docs/records/release_idrid_1024/val_lr.csv",
        "docs/records/release_idrid_small/val_lr.csv",
        ("1024", "512"),
    ),
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
