"""The facts a release records of its training, read from the run and the repository: what the
weights were trained on (:func:`describe_data`, with the dataset's licence), the validation metrics
the run folder holds for the checkpoint (:func:`run_metrics`, the headline numbers of each
metrics file), and the git commit (:func:`git_commit`). ``engine/export.py`` writes them into the
release; ``scripts/inference_agreement.py`` records the commit too.
"""

from __future__ import annotations

import csv
import json
import logging
import subprocess
from pathlib import Path

from data.cache import file_sha256
from engine.config import Config
from engine.output_names import metrics_name_pattern
from evaluation.formatting import json_safe

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
# Licences and attributions of the public datasets a release may be trained on (the model card repeats them).
DATASET_TERMS = {
    "idrid": "IDRiD (Indian Diabetic Retinopathy Image Dataset), CC BY 4.0: Porwal P. et al., Data 3(3):25, 2018, doi:10.3390/data3030025",
    "synthetic": "the embedded semi-synthetic dataset (data/synthetic): skimage.data.retina() (CC0) and seven IDRiD grade-0 "
    "photographs (CC BY 4.0, Porwal et al. 2018) as backgrounds",
}
# What the release card keeps of each metrics file: the numbers a reader compares.
GRADING_KEYS = (
    "n",
    "accuracy",
    "qwk",
    "macro_f1",
    "macro_auc",
    "referable_auc",
    "referable_sensitivity",
    "referable_specificity",
)


def _summary(metrics: dict) -> dict:
    """The headline numbers of one metrics file (test.py's metrics*.json)."""
    out = {
        key: metrics.get(key)
        for key in ("split", "input", "checkpoint", "dataset", "hr_size", "scale")
        if key in metrics
    }
    if "grading" in metrics:
        out["grading"] = {key: metrics["grading"].get(key) for key in GRADING_KEYS}
        out["grading"]["confusion"] = metrics["grading"].get("confusion")
    if "sr" in metrics:
        out["sr"] = {
            name: {key: values.get(key) for key in ("psnr", "ssim", "psnr_lesion")}
            for name, values in metrics["sr"].items()
        }
    if "segmentation" in metrics:
        out["segmentation_aupr"] = {
            name: values.get("aupr") for name, values in metrics["segmentation"].items()
        }
    return json_safe(out)


def run_metrics(run_dir: Path | None, checkpoint: Path, state: dict) -> dict:
    """Metrics the run folder holds for this checkpoint: test.py's ``metrics*.json`` of its tag and the
    ``log.csv`` row of the epoch it was kept at (validation during training)."""
    if run_dir is None:
        return {}
    own = metrics_name_pattern(checkpoint)
    found: dict = {}
    for path in sorted(run_dir.glob("metrics*.json")):
        if not own.fullmatch(path.name):
            continue  # another checkpoint's file (metrics_val_lr_isr_best.json)
        try:
            found[path.name] = _summary(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError) as error:
            log.warning("skipped %s: %s", path, error)
    log_path = run_dir / "log.csv"
    if log_path.is_file():
        with log_path.open(newline="") as file:
            rows = list(csv.DictReader(file))
        epoch = state.get("best_epoch") or state.get("epoch")
        kept = [
            row
            for row in rows
            if row.get("stage") == state.get("stage") and str(row.get("epoch")) == str(epoch)
        ]
        if kept:
            found["log.csv"] = {
                key: value
                for key, value in kept[-1].items()
                if key in ("stage", "epoch") or key.startswith("val_")
            }
    return found


def describe_data(config: Config) -> dict:
    """What the weights were trained on: dataset, licence, sizes, split file (with its SHA-256)."""
    data = config.data
    described = {
        "dataset": data.dataset,
        "terms": DATASET_TERMS.get(
            data.dataset, f"{data.dataset}: see data/datasets/README.md for its licence"
        ),
        "root": data.root,
        "hr_size": data.hr_size,
        "lr_size": data.hr_size // data.scale,
        "scale": data.scale,
        "degradation": {
            "blur_kernel": data.blur_kernel,
            "blur_sigma": data.blur_sigma,
            "noise_var": data.noise_var,
        },
    }
    if data.dataset == "synthetic":
        described["n_train"] = data.n_train
        described["seed"] = data.seed
    else:
        split_file = (
            Path(data.split_file) if data.split_file else ROOT / "splits" / f"{data.dataset}.csv"
        )
        if split_file.is_file():
            described["split_file"] = str(
                split_file.relative_to(ROOT) if split_file.is_relative_to(ROOT) else split_file
            )
            described["split_sha256"] = file_sha256(split_file)
    return described


def git_commit() -> str:
    """HEAD's hash, with ``-dirty`` when tracked files differ from it; ``unknown`` outside git."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = (
            subprocess.run(
                ["git", "diff", "--quiet", "HEAD"], cwd=ROOT, capture_output=True, check=False
            ).returncode
            != 0
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("-dirty" if dirty else "")
