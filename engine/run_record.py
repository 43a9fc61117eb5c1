"""A finished training run turned into a small committed record: what it cost and what it scored.

A run folder (``runs/<name>/``) holds checkpoints and is never committed; a results table must
still be rebuilt from the repository. ``write_run_record`` keeps what a table needs from the
folder: the wall time and epochs of every stage (``log.csv``), the config and its hash, where it
ran (commit, CPU, torch), and each of its test.py evaluations (``metrics_*.json``, less the local
paths) with the per-image predictions CSV beside it. ``scripts/record_run.py`` is the command;
``evaluation/release_tables.py`` renders the tables.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import yaml

from data.atomic import write_atomic
from data.records import DataError
from engine.config import config_from_dict
from engine.cv_study import config_hash, machine_provenance, write_predictions_record
from engine.output_names import predictions_file

RECORD = "record.json"
KEPT_METRICS = (
    "split",
    "input",
    "tta",
    "stage",
    "epoch",
    "dataset",
    "hr_size",
    "scale",
    "method",
    "grading",
    "sr",
    "segmentation",
    "mechanism",
    "calibration",
    "intervals",
    "operating_points",
)


def stage_times(log_csv: Path) -> dict[str, dict[str, float | int]]:
    """Per stage, in training order: epochs and the summed ``seconds`` of ``log.csv`` (training
    epochs with their validation passes; a resumed epoch counts once, its last line). Epoch 0 (the
    joint stage's validation of the weights it starts from) adds its seconds but is no epoch."""
    try:
        with log_csv.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except OSError as error:
        raise DataError(f"cannot read {log_csv}: {error.strerror}") from None
    last: dict[tuple[str, int], float] = {}
    for line, row in enumerate(rows, start=2):
        try:
            last[(row["stage"], int(row["epoch"]))] = float(row["seconds"])
        except (KeyError, TypeError, ValueError):
            raise DataError(f"{log_csv}, line {line}: no stage, epoch or seconds") from None
    stages: dict[str, dict[str, float | int]] = {}
    for (stage, epoch), seconds in last.items():
        entry = stages.setdefault(stage, {"epochs": 0, "seconds": 0.0})
        entry["epochs"] += epoch > 0
        entry["seconds"] = round(entry["seconds"] + seconds, 1)
    return stages


def evaluation_name(metrics_path: Path) -> str:
    """``metrics_val_lr_tta.json`` -> ``val_lr_tta``; the run's own ``metrics.json`` -> ``test``."""
    return metrics_path.stem.removeprefix("metrics").lstrip("_") or "test"


def write_run_record(run_dir: Path, out: Path, metrics_paths: list[Path], note: str = "") -> Path:
    """Write ``out/record.json`` and one ``out/<evaluation>.csv`` per metrics file; returns the
    JSON's path. Every file is written atomically, the JSON last (a record counts only with it)."""
    run_dir, out = Path(run_dir), Path(out)
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise DataError(f"{run_dir} is not a run folder (no config.yaml)")
    config = config_from_dict(yaml.safe_load(config_path.read_text(encoding="utf-8")))
    if not metrics_paths:
        raise DataError(f"{run_dir}: no metrics_*.json to record (run test.py first)")
    evaluations = {}
    for path in metrics_paths:
        try:
            metrics = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as error:
            raise DataError(f"cannot read test.py's metrics {path}: {error}") from None
        name = evaluation_name(Path(path))
        predictions = predictions_file(
            run_dir,
            metrics["split"],
            metrics["input"],
            metrics.get("checkpoint", "best.pt"),
            metrics["tta"],
            config.test.tta,
        )
        if not predictions.is_file():
            raise DataError(f"{path}: its predictions {predictions.name} are not in {run_dir}")
        write_predictions_record(predictions, out / f"{name}.csv")
        evaluations[name] = {key: metrics[key] for key in KEPT_METRICS if key in metrics}
    record = {
        "run": run_dir.name,
        "config_hash": config_hash(config),
        "config": config.to_dict(),
        "stages": stage_times(run_dir / "log.csv"),
        "evaluations": evaluations,
        "note": note,
        **machine_provenance(),
    }
    if config.run.threads:  # the run's threads, not this recording process's
        record["threads"] = config.run.threads
    path = out / RECORD
    write_atomic(path, (json.dumps(record, indent=1, sort_keys=True) + "\n").encode())
    return path
