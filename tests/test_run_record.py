"""A finished run recorded for the docs (engine/run_record.py, scripts/record_run.py) and its
tables (evaluation/release_tables.py)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from data.records import DataError
from engine.cli import run_cli
from engine.config import load_config, save_config
from engine.output_names import predictions_file
from engine.run_record import evaluation_name, stage_times, write_run_record
from evaluation.release_tables import run_record_table
from scripts.record_run import main as record_main


def make_run(folder: Path, tta: bool = True) -> Path:
    """A run folder as train.py + test.py --split val --tta leave it (no checkpoints needed)."""
    folder.mkdir(parents=True)
    config = load_config(
        None, ["data.hr_size=64", "test.tta=false", "run.name=tiny", "run.threads=3"]
    )
    save_config(config, folder / "config.yaml")
    (folder / "log.csv").write_text(
        "stage,epoch,lr,train_loss,seconds\n"
        "isr,1,0.001,0.5,60.0\n"
        "isr,2,0.001,0.4,30.0\n"
        "isr,2,0.001,0.4,45.0\n"  # epoch 2 resumed: its last line counts
        "cls,1,0.001,1.2,120.0\n"
        "joint,0,0.001,,40.0\n"  # the joint stage's validation of its incoming weights
        "joint,1,0.001,1.1,200.0\n"
    )
    metrics = {
        "split": "val",
        "input": "lr",
        "tta": tta,
        "checkpoint": str(folder / "checkpoints/best.pt"),
        "report": "/somewhere/report.html",
        "grading": {
            "n": 3,
            "qwk": 0.5,
            "referable_auc": 0.75,
            "accuracy": 0.66,
            "confusion": [[1, 0], [1, 1]],
        },
        "intervals": {"qwk": {"value": 0.5, "low": 0.1, "high": 0.8, "n_valid": 2000}},
        "sr": {
            "sr": {"psnr": 33.1, "psnr_lesion": 30.2},
            "bicubic": {"psnr": 31.0, "psnr_lesion": 28.0},
        },
        "segmentation": {"MA": {"aupr": 0.12}, "EX": {"aupr": 0.5}, "mean": {"aupr": 0.31}},
    }
    (folder / "metrics_val_lr_tta.json").write_text(json.dumps(metrics))
    target = predictions_file(folder, "val", "lr", "best.pt", tta, False)
    target.write_text("id,grade,predicted,p0,p1\nb,1,1,0.2,0.8\na,0,1,0.4,0.6\nc,1,0,0.9,0.1\n")
    return folder


def test_stage_times_count_a_resumed_epoch_once(tmp_path):
    run = make_run(tmp_path / "run")
    assert stage_times(run / "log.csv") == {
        "isr": {"epochs": 2, "seconds": 105.0},
        "cls": {"epochs": 1, "seconds": 120.0},
        "joint": {"epochs": 1, "seconds": 240.0},
    }
    (tmp_path / "bad.csv").write_text("stage,epoch,seconds\nisr,one,3\n")
    with pytest.raises(DataError, match="bad.csv, line 2"):
        stage_times(tmp_path / "bad.csv")


def test_record_keeps_metrics_predictions_and_provenance_without_local_paths(tmp_path):
    run = make_run(tmp_path / "run")
    out = tmp_path / "records"
    path = write_run_record(run, out, [run / "metrics_val_lr_tta.json"], note="first try")
    record = json.loads(path.read_text())
    assert record["run"] == "run" and record["note"] == "first try"
    assert record["stages"]["isr"]["seconds"] == 105.0
    assert len(record["config_hash"]) == 16 and record["config"]["data"]["hr_size"] == 64
    evaluation = record["evaluations"]["val_lr_tta"]
    assert evaluation["grading"]["qwk"] == 0.5
    assert "report" not in evaluation and "checkpoint" not in evaluation
    assert {"commit", "cpu", "torch", "threads"} <= set(record)
    assert record["threads"] == 3  # the run's run.threads, not the recording process's
    with open(out / "val_lr_tta.csv", newline="") as handle:
        ids = [row["id"] for row in csv.DictReader(handle)]
    assert ids == ["a", "b", "c"]  # sorted: small diffs in git


def test_record_refuses_a_folder_without_config_or_predictions(tmp_path):
    with pytest.raises(DataError, match="not a run folder"):
        write_run_record(tmp_path, tmp_path / "out", [tmp_path / "metrics.json"])
    run = make_run(tmp_path / "run")
    predictions_file(run, "val", "lr", "best.pt", True, False).unlink()
    with pytest.raises(DataError, match="predictions_val_tta.csv are not in"):
        write_run_record(run, tmp_path / "out", [run / "metrics_val_lr_tta.json"])
    assert not (tmp_path / "out" / "record.json").exists()


def test_table_renders_stages_evaluations_and_confusion(tmp_path):
    assert "No record yet" in run_record_table(tmp_path, "records")
    run = make_run(tmp_path / "run")
    write_run_record(run, tmp_path / "records", [run / "metrics_val_lr_tta.json"])
    table = run_record_table(tmp_path, "records")
    assert "| isr | 2 | 1.8 |" in table and "| all | | **7.8** |" in table
    assert "0.500 [0.100, 0.800]" in table  # QWK with its interval
    assert "33.10 (31.00)" in table and "30.20 (28.00)" in table
    assert "| 0.120 | — | 0.500 | — | 0.310 |" in table  # AUPR MA HE EX SE mean
    assert "| grade 1 | 1 | 1 |" in table


def test_evaluation_names():
    assert evaluation_name(Path("metrics_val_hr_tta.json")) == "val_hr_tta"
    assert evaluation_name(Path("metrics.json")) == "test"


def test_cli_records_every_metrics_file(tmp_path, capsys):
    """In process (scripts/record_run.py's main under run_cli): a subprocess would cost the
    suite a torch import."""
    run = make_run(tmp_path / "run")
    assert run_cli(record_main, [str(run), "--out", str(tmp_path / "r")]) == 0
    assert (tmp_path / "r" / "record.json").is_file()
    assert "metrics_val_lr_tta.json" in capsys.readouterr().out
    assert run_cli(record_main, [str(tmp_path), "--out", str(tmp_path / "x")]) == 2
    assert "not a run folder" in capsys.readouterr().err


def test_lever_table_has_one_line_per_recorded_arm(tmp_path):
    from evaluation.release_tables import lever_records_table

    arms = {"plain": "the preset", "other": "one setting changed", "later": "not run yet"}
    assert "No record yet" in lever_records_table(tmp_path, "levers", arms)
    for arm in ("plain", "other"):
        run = make_run(tmp_path / arm)
        write_run_record(run, tmp_path / "levers" / arm, [run / "metrics_val_lr_tta.json"])
    table = lever_records_table(tmp_path, "levers", arms)
    assert (
        "| `plain` | the preset | val_lr_tta (LR, flip TTA) | 0.120 | — | 0.500 | — | 0.310 | 7.8 |"
        in table
    )
    assert "| `other` | one setting changed |" in table
    assert "Not recorded yet: `later`." in table and "3 threads" in table


def test_grading_lever_table_has_grading_sr_and_lesions_per_arm(tmp_path):
    from evaluation.release_tables import grading_lever_table

    arms = {"base": ("runs_a", "the preset"), "later": ("runs_b", "not run yet")}
    assert "No record yet" in grading_lever_table(tmp_path, arms)
    run = make_run(tmp_path / "run")
    write_run_record(run, tmp_path / "runs_a", [run / "metrics_val_lr_tta.json"])
    table = grading_lever_table(tmp_path, arms)
    assert "| `base` | the preset | val_lr_tta (LR, flip TTA) | 0.500 [0.100, 0.800] |" in table
    assert "| 33.10 (31.00) | 30.20 (28.00) | 0.120 | — | 0.500 | — | 0.310 | 7.8 |" in table
    assert "source `runs_a/record.json`" in table and "Not recorded yet: `later`." in table
