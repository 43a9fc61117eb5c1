"""``python -m engine.export``: turn a trained run into a release checkpoint for ``pretrained_model/``.

    python -m engine.export runs/idrid_small --out pretrained_model/deepmt_dr_idrid_small.pt
    python -m engine.export runs/idrid_small/checkpoints/best.pt --out pretrained_model/NAME.pt \\
        --train-command "python train.py --dataset idrid --data-root ../shared/data/idrid --config configs/idrid_small.yaml"

A release holds the model weights in float16 (half the file; ``load_trained`` reads them back as
float32), the resolved config, what it was trained on, the training and export commands, the git
commit, and the validation metrics found in the run folder; no optimiser, scheduler or RNG state.
It is written by ``engine.checkpoint.save_checkpoint`` (checksummed, atomic), and its SHA-256 is
entered in the folder's ``RELEASES.json`` (``engine/release.py``). The command prints the hash and
the line for ``pretrained_model/README.md``.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import json
import logging
import math
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from data.cache import file_sha256
from engine.builders import build_model
from engine.checkpoint import CheckpointError, load_checkpoint, load_model_state, save_checkpoint
from engine.cli import run_cli
from engine.config import Config, config_from_dict
from engine.release import register
from engine.testing import checkpoint_tag, run_folder_of

log = logging.getLogger(__name__)

RELEASE_FORMAT = "deepmt-dr-release-1"
MAX_RELEASE_MB = 30  # pretrained_model/ holds files up to this size (DESIGN.md)
FP16_MAX = torch.finfo(torch.float16).max
ROOT = Path(__file__).resolve().parents[1]
# Licences and attributions of the public datasets a release may be trained on (the model card repeats them).
DATASET_TERMS = {
    "idrid": "IDRiD (Indian Diabetic Retinopathy Image Dataset), CC BY 4.0: Porwal P. et al., Data 3(3):25, 2018, doi:10.3390/data3030025",
    "synthetic": "the embedded semi-synthetic dataset (data/synthetic): skimage.data.retina() (CC0) and seven IDRiD grade-0 "
    "photographs (CC BY 4.0, Porwal et al. 2018) as backgrounds",
}
# What the release card keeps of each metrics file: the numbers a reader compares.
GRADING_KEYS = ("n", "accuracy", "qwk", "macro_f1", "macro_auc", "referable_auc", "referable_sensitivity", "referable_specificity")


@dataclass(frozen=True)
class Exported:
    path: Path
    sha256: str
    bytes: int
    release: dict


def source_checkpoint(source: str | Path) -> tuple[Path, Path | None]:
    """(checkpoint file, its run folder or None) from a run folder or a checkpoint file."""
    source = Path(source)
    if source.is_dir():
        checkpoint = source / "checkpoints" / "best.pt"
        if not checkpoint.is_file():
            raise CheckpointError(f"{source} has no checkpoints/best.pt: pass a run folder or a checkpoint file")
        return checkpoint, source
    if not source.is_file():
        raise CheckpointError(f"checkpoint not found: {source}")
    run_dir = run_folder_of(source)
    return source, run_dir if run_dir is not None and (run_dir / "config.yaml").is_file() else None


# Kept in float32 whatever their values: the grade thresholds are decision cut points, and float16's
# rounding (0.002 near 3.5) would move the grade of images near one.
FLOAT32_KEYS = frozenset({"grade_thresholds"})


def half_weights(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Floating-point tensors as float16; those with values beyond float16's range stay float32 (listed),
    as do those of FLOAT32_KEYS (not listed)."""
    weights, kept = {}, []
    for key, tensor in state.items():
        if key in FLOAT32_KEYS:
            weights[key] = tensor.clone()
        elif tensor.is_floating_point() and tensor.dtype != torch.float16:
            if tensor.numel() and tensor.abs().max() > FP16_MAX:
                kept.append(key)
                weights[key] = tensor.float().clone()
                continue
            weights[key] = tensor.half().clone()
        else:
            weights[key] = tensor.clone()
    return weights, kept


def _finite(value):
    """JSON- and weights_only-safe: NaN becomes None, nested containers are walked."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(key): _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


def _summary(metrics: dict) -> dict:
    """The headline numbers of one metrics file (test.py's metrics*.json)."""
    out = {key: metrics.get(key) for key in ("split", "input", "checkpoint", "dataset", "hr_size", "scale") if key in metrics}
    if "grading" in metrics:
        out["grading"] = {key: metrics["grading"].get(key) for key in GRADING_KEYS}
        out["grading"]["confusion"] = metrics["grading"].get("confusion")
    if "sr" in metrics:
        out["sr"] = {name: {key: values.get(key) for key in ("psnr", "ssim", "psnr_lesion")} for name, values in metrics["sr"].items()}
    if "segmentation" in metrics:
        out["segmentation_aupr"] = {name: values.get("aupr") for name, values in metrics["segmentation"].items()}
    return _finite(out)


def run_metrics(run_dir: Path | None, checkpoint: Path, state: dict) -> dict:
    """Metrics the run folder holds for this checkpoint: test.py's ``metrics*.json`` of its tag and the
    ``log.csv`` row of the epoch it was kept at (validation during training)."""
    if run_dir is None:
        return {}
    own = re.compile(rf"metrics(_(train|val|test)_(lr|hr)(_tta|_no_tta)?)?{re.escape(checkpoint_tag(checkpoint))}\.json")
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
        kept = [row for row in rows if row.get("stage") == state.get("stage") and str(row.get("epoch")) == str(epoch)]
        if kept:
            found["log.csv"] = {key: value for key, value in kept[-1].items() if key in ("stage", "epoch") or key.startswith("val_")}
    return found


def describe_data(config: Config) -> dict:
    """What the weights were trained on: dataset, licence, sizes, split file (with its SHA-256)."""
    data = config.data
    described = {
        "dataset": data.dataset,
        "terms": DATASET_TERMS.get(data.dataset, f"{data.dataset}: see data/datasets/README.md for its licence"),
        "root": data.root,
        "hr_size": data.hr_size,
        "lr_size": data.hr_size // data.scale,
        "scale": data.scale,
        "degradation": {"blur_kernel": data.blur_kernel, "blur_sigma": data.blur_sigma, "noise_var": data.noise_var},
    }
    if data.dataset == "synthetic":
        described["n_train"] = data.n_train
        described["seed"] = data.seed
    else:
        split_file = Path(data.split_file) if data.split_file else ROOT / "splits" / f"{data.dataset}.csv"
        if split_file.is_file():
            described["split_file"] = str(split_file.relative_to(ROOT) if split_file.is_relative_to(ROOT) else split_file)
            described["split_sha256"] = file_sha256(split_file)
    return described


def git_commit() -> str:
    """HEAD's hash, with ``-dirty`` when tracked files differ from it; ``unknown`` outside git."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD"], cwd=ROOT, capture_output=True, check=False).returncode != 0
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("-dirty" if dirty else "")


def export_release(source: str | Path, out: str | Path, train_command: str | None = None, command: str | None = None,
                   tta: bool | None = None) -> Exported:
    """Write the release checkpoint of ``source`` (run folder or checkpoint) to ``out`` and register its SHA-256.

    ``tta`` True / False sets the release's ``test.tta`` (flip test-time augmentation, test.py's
    default for it); None keeps the run's."""
    checkpoint, run_dir = source_checkpoint(source)
    out = Path(out)
    if out.suffix != ".pt":
        raise CheckpointError(f"--out {out} must be a .pt file")
    state = load_checkpoint(checkpoint)
    if tta is not None:
        state["config"]["test"]["tta"] = tta
    config = config_from_dict(state["config"])
    config.model.imagenet_weights = None
    model = build_model(config)
    load_model_state(model, state["model"], checkpoint)  # refuse weights that do not rebuild
    weights, kept = half_weights(state["model"])
    if kept:
        log.warning("kept in float32 (values beyond float16's range): %s", ", ".join(kept))
    release = _finite({
        "format": RELEASE_FORMAT,
        "name": out.stem,
        "weights_dtype": "float16",
        "float32_tensors": kept,
        "parameters": sum(parameter.numel() for parameter in model.parameters()),
        "method": config.method,
        "input": {"lr_size": config.data.hr_size // config.data.scale, "hr_size": config.data.hr_size, "scale": config.data.scale,
                  "test_input": config.test.input, "test_tta": config.test.tta, "num_classes": config.data.num_classes},
        "data": describe_data(config),
        "trained": {key: state.get(key) for key in ("stage", "epoch", "step", "best_metric", "best_epoch")},
        "metrics": run_metrics(run_dir, checkpoint, state),
        "source": str(checkpoint),
        "source_sha256": file_sha256(checkpoint),
        "train_command": train_command,
        "export_command": command,
        "commit": git_commit(),
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "torch": str(torch.__version__),
    })
    keep = {key: state[key] for key in ("stage", "epoch", "step", "best_metric", "best_epoch") if key in state}
    save_checkpoint({"config": state["config"], "model": weights, "release": release, **keep}, out)
    digest, size = file_sha256(out), out.stat().st_size
    register(out, {
        "sha256": digest,
        "bytes": size,
        "lr_size": release["input"]["lr_size"],
        "hr_size": release["input"]["hr_size"],
        "dataset": config.data.dataset,
        "commit": release["commit"],
        "created": release["created"],
    })
    return Exported(out, digest, size, release)


def readme_line(exported: Exported) -> str:
    """The model card's table row for this file."""
    release = exported.release
    size = release["input"]
    return (f"| `{exported.path.name}` | {release['data']['dataset']} | LR {size['lr_size']} -> HR {size['hr_size']} (x{size['scale']}) "
            f"| {exported.bytes / 2**20:.1f} MB | `{exported.sha256}` |")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m engine.export", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", metavar="RUN_OR_CHECKPOINT", help="a run folder (its checkpoints/best.pt) or a checkpoint file")
    parser.add_argument("--out", required=True, help="the release file, e.g. pretrained_model/deepmt_dr_idrid_small.pt")
    parser.add_argument("--train-command", help="the command that trained the run, recorded in the release")
    parser.add_argument("--tta", action=argparse.BooleanOptionalAction,
                        help="set the release's test.tta: test.py then averages each image's grade over its four "
                        "flips unless told --no-tta (predict.py only with its --tta; default: the run's test.tta)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    command = shlex.join(["python", "-m", "engine.export", *(sys.argv[1:] if argv is None else argv)])
    exported = export_release(args.source, args.out, args.train_command, command, args.tta)
    megabytes = exported.bytes / 2**20
    release = exported.release
    print(f"wrote {exported.path} ({megabytes:.1f} MB, {release['parameters']:,} parameters in float16) "
          f"and its entry in {exported.path.parent / 'RELEASES.json'}")
    found = ", ".join(release["metrics"]) or "none (run test.py --split val on the run first to record them)"
    print(f"metrics recorded from the run folder: {found}")
    if megabytes > MAX_RELEASE_MB:
        print(f"warning: {megabytes:.1f} MB is over the {MAX_RELEASE_MB} MB a file in pretrained_model/ may take", file=sys.stderr)
    print(f"SHA-256 {exported.sha256}")
    print("model card line (pretrained_model/README.md):")
    print(readme_line(exported))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
