"""Real photographs end to end: a handful of the shared IDRiD training images (../shared/data/idrid)
are listed in a CSV, cached, trained on for a step per stage and tested. Skipped without the data."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

import test as test_cli
import train as train_cli
from data.datasets import idrid
from data.datasets.base import image_size, read_image, read_mask
from engine.cli import run_cli

REAL = Path(__file__).resolve().parents[2] / "shared/data/idrid"
pytestmark = pytest.mark.skipif(
    not REAL.is_dir(), reason=f"real IDRiD training parts not found at {REAL}"
)


def _handful(root: Path, out: Path) -> Path:
    """A CSV (the generic loader's format) of 6 graded and 3 segmentation images, val marked."""
    records = idrid.index(root).records
    graded = sorted((r for r in records if r.part == "grading"), key=lambda r: r.id)
    segmented = sorted((r for r in records if r.part == "segmentation"), key=lambda r: r.id)
    chosen = []
    for grade in (0, 2, 4):
        chosen += [
            (r, "train" if i == 0 else "val")
            for i, r in enumerate([r for r in graded if r.grade == grade][:2])
        ]
    chosen += [(r, "val" if i == 2 else "train") for i, r in enumerate(segmented[:3])]
    path = out / "handful.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "grade", "split", "mask_MA", "mask_HE", "mask_EX", "mask_SE"])
        for record, split in chosen:
            grade = record.grade if record.grade >= 0 else ""
            writer.writerow([record.image, grade, split, *[mask or "" for mask in record.masks]])
    return path


def test_a_handful_of_real_images_train_and_test_end_to_end(tmp_path, tiny_overrides):
    table = _handful(REAL, tmp_path)
    name, out_dir = "real", str(tmp_path / "runs")
    overrides = [
        *tiny_overrides,
        f"data.cache_dir={tmp_path / 'cache'}",
        "data.prepare_workers=1",
        "data.jpeg_quality=90",
    ]
    argv = [
        "--quiet",
        "--config",
        "configs/demo.yaml",
        "--dataset",
        "csv",
        "--data-root",
        str(table),
        "--name",
        name,
    ]
    assert run_cli(train_cli.main, [*argv, *overrides]) == 0
    log = (tmp_path / "runs" / name / "log.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in log[1:]] == ["isr", "seg", "cls", "joint"]
    assert (
        run_cli(
            test_cli.main,
            [
                "--quiet",
                "--name",
                name,
                "--out-dir",
                out_dir,
                "--split",
                "val",
                "--figures",
                str(tmp_path / "f"),
                "--samples",
                "0",
            ],
        )
        == 0
    )
    metrics = json.loads((tmp_path / "runs" / name / "metrics_val_lr.json").read_text())
    assert metrics["grading"]["n"] == 3  # one graded val image per grade 0, 2, 4
    assert metrics["sr"]["sr"]["n"] == 4 and metrics["sr"]["sr"]["n_lesion"] == 1
    # Real photographs downscaled to 64 px: bicubic is far from perfect but finite, and so is SR.
    assert all(math.isfinite(metrics["sr"][kind]["psnr"]) for kind in ("sr", "bicubic"))
    assert math.isfinite(metrics["segmentation"]["mean"]["aupr"])


def test_every_shared_image_and_mask_decodes():
    """All 467 photographs and 187 lesion masks of the shared release decode, masks at their image's size."""
    records = idrid.index(REAL).records
    assert len(records) == 413 + 54
    masks = 0
    for record in records:
        image = read_image(
            record.image, min_side=128
        )  # DCT-scaled decode: every byte is still read
        assert image.ndim == 3 and image.shape[2] == 3 and image.mean() > 5, record.image
        for path in record.masks:
            if path is not None:
                mask = read_mask(path, record.mask_threshold)
                assert mask.shape == image_size(record.image), path
                masks += 1
    assert masks == 54 + 53 + 54 + 26
