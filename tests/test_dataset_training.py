"""train.py / test.py on a public dataset: the cache is built on first use, stages see the images
that carry their labels, and a mixed joint stage runs."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from test_dataset_idrid import make_idrid

import test as test_cli
import train as train_cli
from data.cache import CachedFundus, read_manifest
from engine.builders import build_dataset, stage_subset
from engine.cli import run_cli
from engine.config import load_config


def _overrides(tmp_path: Path, tiny_overrides: list[str]) -> list[str]:
    return [
        *tiny_overrides,
        f"data.cache_dir={tmp_path / 'cache'}",
        f"data.split_file={tmp_path / 'split.csv'}",
        "data.val_fraction=0.4",
        "data.prepare_workers=1",
    ]


def test_train_and_test_on_an_idrid_tree(tmp_path, tiny_overrides, capsys):
    root = make_idrid(tmp_path / "IDRiD")
    argv = [
        "--quiet",
        "--config",
        "configs/demo.yaml",
        "--dataset",
        "idrid",
        "--data-root",
        str(root),
        "--name",
        "idrid",
    ]
    assert run_cli(train_cli.main, [*argv, *_overrides(tmp_path, tiny_overrides)]) == 0
    assert (tmp_path / "cache" / "idrid-64" / "manifest.csv").is_file()
    assert (tmp_path / "split.csv").is_file()
    log = (tmp_path / "runs" / "idrid" / "log.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in log[1:]] == ["isr", "seg", "cls", "joint"]
    out_dir = str(tmp_path / "runs")
    # IDRiD's own test set (2 graded + 1 segmentation image)
    assert (
        run_cli(
            test_cli.main,
            [
                "--quiet",
                "--name",
                "idrid",
                "--out-dir",
                out_dir,
                "--figures",
                str(tmp_path / "f"),
                "--samples",
                "1",
            ],
        )
        == 0
    )
    metrics = json.loads((tmp_path / "runs" / "idrid" / "metrics.json").read_text())
    assert metrics["grading"]["n"] == 2
    assert metrics["sr"]["sr"]["n"] == 3 and metrics["sr"]["sr"]["n_lesion"] == 1
    assert "QWK" in capsys.readouterr().out


def test_stage_subsets_and_class_weights_come_from_the_labels(tmp_path, tiny_overrides):
    root = make_idrid(tmp_path / "IDRiD")
    config = load_config(
        "configs/demo.yaml",
        [*_overrides(tmp_path, tiny_overrides), "data.dataset=idrid", f"data.root={root}"],
    )
    train = build_dataset(config, "train")
    assert isinstance(train, CachedFundus)
    entries = read_manifest(tmp_path / "cache" / "idrid-64")
    assert len(entries) == 8  # 3 + 2 graded, 2 + 1 segmentation images
    val = build_dataset(config, "val")
    test = build_dataset(config, "test")
    assert len(train) + len(val) == 5 and len(test) == 3
    assert {entry.id for entry in train.entries}.isdisjoint(entry.id for entry in val.entries)
    seg = stage_subset(train, "seg")
    cls = stage_subset(train, "cls")
    assert len(seg) + len(cls) == len(train)
    assert all(train[i]["mask_valid"].any() for i in seg.indices)
    assert all(train[i]["grade"] >= 0 for i in cls.indices)
    assert stage_subset(train, "joint") is train
    batch = torch.utils.data.default_collate(
        [train[i] for i in range(len(train))]
    )  # mixed images collate
    assert batch["hr"].shape == (len(train), 3, 64, 64)
    assert set(batch["grade"].tolist()) >= {-1}
