"""``python -m engine.export``: turn a trained run into a release for ``pretrained_model/``.

    python -m engine.export runs/idrid_small --out pretrained_model/NAME.pt
    python -m engine.export runs/idrid_small --out pretrained_model/deepmt_dr_idrid_small.safetensors
    python -m engine.export runs/idrid_small/checkpoints/best.pt --out pretrained_model/NAME.pt \\
        --train-command "python train.py --dataset idrid --data-root ../shared/data/idrid --config configs/idrid_small.yaml"
    python -m engine.export pretrained_model/NAME.pt --out /tmp/release/NAME.safetensors   # a release, converted

A release holds the model weights in float16 (half the file; ``load_trained`` reads them back as
float32), the resolved config, what it was trained on, the training and export commands, the git
commit, and the validation metrics found in the run folder; no optimiser, scheduler or RNG state.
The format follows --out's suffix (or ``--format``, which must agree with it):

- ``.pt``: one file written by ``engine.checkpoint.save_checkpoint`` (checksummed, atomic), read by
  this repository's loader (a checksum header precedes the torch zip, so plain ``torch.load`` does
  not open it).
- ``.safetensors``: the weights as a plain safetensors file that any tool opens
  (``safetensors.torch.load_file``), and beside it the sidecar ``NAME.json``: the config, the
  release facts above, the grade thresholds, the training position and the weights file's SHA-256
  (safetensors has no checksum of its own). Both are written atomically (temp file + rename),
  weights first.
- ``.onnx`` / ``.pt2``: not a release but a deployment file, the inference network with the
  metadata predict.py needs, for ONNX Runtime or torch.export (engine/deploy_export.py; not
  entered in ``RELEASES.json``).

The SHA-256 of the release file (and of the sidecar) is entered in the folder's ``RELEASES.json``
(``engine/release.py``), replacing any earlier entry of the same name. Exporting a release file
(not a run) converts it: the facts it recorded of its training (data, metrics, commands, source)
are kept, and ``converted_from`` names the file it came from. The command prints the hash and the
line for ``pretrained_model/README.md``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import shlex
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from data.atomic import atomic_path
from data.cache import file_sha256
from engine.builders import build_model
from engine.checkpoint import (
    RELEASE_STATE_KEYS,
    SAFETENSORS_SUFFIX,
    SIDECAR_FORMAT,
    CheckpointError,
    load_checkpoint,
    load_model_state,
    save_checkpoint,
    sidecar_of,
)
from engine.cli import run_cli
from engine.config import Config, config_from_dict
from engine.output_names import predictions_file
from engine.release import register
from engine.release_facts import (
    DATASET_TERMS,
    GRADING_KEYS,
    ROOT,
    describe_data,
    git_commit,
    run_metrics,
)
from engine.testing import run_folder_of
from evaluation.calibration import read_predictions, release_calibration
from evaluation.formatting import json_safe

__all__ = [  # with the release facts of engine/release_facts.py, which callers import from here
    "CARRIED_OVER",
    "DATASET_TERMS",
    "FLOAT32_KEYS",
    "FORMATS",
    "GRADING_KEYS",
    "MAX_RELEASE_MB",
    "RELEASE_FORMAT",
    "ROOT",
    "Exported",
    "describe_data",
    "export_release",
    "get_args_parser",
    "git_commit",
    "half_weights",
    "main",
    "readme_line",
    "release_file",
    "release_format",
    "run_metrics",
    "save_safetensors_release",
    "source_checkpoint",
    "validation_predictions",
]

log = logging.getLogger(__name__)

RELEASE_FORMAT = "deepmt-dr-release-1"
# The largest release file pretrained_model/ (committed to git) takes; main() warns above it.
MAX_RELEASE_MB = 30
FP16_MAX = torch.finfo(torch.float16).max
FORMATS = {".pt": "pt", SAFETENSORS_SUFFIX: "safetensors"}  # --out suffix -> format
# What a converted release keeps of the one it came from: how it was trained and what it scored.
CARRIED_OVER = (
    "data",
    "trained",
    "metrics",
    "train_command",
    "source",
    "source_sha256",
    "calibration",
    "referable_threshold",
    "referable_operating_point",
)


@dataclass(frozen=True)
class Exported:
    path: Path
    sha256: str
    bytes: int
    release: dict
    sidecar: Path | None = None  # a safetensors release's NAME.json
    sidecar_sha256: str | None = None


def source_checkpoint(source: str | Path) -> tuple[Path, Path | None]:
    """(checkpoint file, its run folder or None) from a run folder or a checkpoint file."""
    source = Path(source)
    if source.is_dir():
        checkpoint = source / "checkpoints" / "best.pt"
        if not checkpoint.is_file():
            raise CheckpointError(
                f"{source} has no checkpoints/best.pt: pass a run folder or a checkpoint file"
            )
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


def release_format(out: Path, format: str | None = None) -> str:
    """``pt`` or ``safetensors``: from ``--out``'s suffix, which ``--format`` (if given) must match."""
    by_suffix = FORMATS.get(out.suffix)
    if by_suffix is None:
        raise CheckpointError(
            f"--out {out} must be a .pt or .safetensors file (a release), or .onnx or .pt2 (a deployment file)"
        )
    if format is not None and format != by_suffix:
        wanted = next(suffix for suffix, name in FORMATS.items() if name == format)
        raise CheckpointError(f"--out {out} must end in {wanted} for --format {format}")
    return by_suffix


@contextmanager
def release_file(path: Path) -> Iterator[Path]:
    """:func:`data.atomic.atomic_path` for a release or deployment file: a kill mid-write leaves the
    previous file as it was, and a failed write is a CheckpointError naming the file."""
    try:
        with atomic_path(path) as temp:
            yield temp
    except OSError as error:
        raise CheckpointError(f"could not write {path}: {error.strerror or error}") from error


def save_safetensors_release(weights: dict[str, torch.Tensor], facts: dict, out: Path) -> Path:
    """Write ``out`` (safetensors) and its sidecar ``NAME.json`` (``facts`` plus the weights' SHA-256),
    each atomically, weights first: a sidecar never describes weights that are not on disk, and a
    kill between the two leaves a pair the loader refuses (hash mismatch) rather than misreads."""
    from safetensors.torch import save_file

    out.parent.mkdir(parents=True, exist_ok=True)
    sidecar = sidecar_of(out)
    tensors = {key: tensor.detach().contiguous() for key, tensor in weights.items()}
    metadata = {"format": SIDECAR_FORMAT, "name": out.stem, "sidecar": sidecar.name}
    with release_file(out) as temp:
        save_file(tensors, str(temp), metadata=metadata)
    facts = {
        "format": SIDECAR_FORMAT,
        "weights": {"file": out.name, "sha256": file_sha256(out), "bytes": out.stat().st_size},
        **facts,
    }
    text = json.dumps(facts, indent=2, allow_nan=False) + "\n"
    with release_file(sidecar) as temp:
        temp.write_text(text, encoding="utf-8")
    return sidecar


def _release_record(
    config: Config,
    state: dict,
    model: torch.nn.Module,
    checkpoint: Path,
    run_dir: Path | None,
    out: Path,
    kind: str,
    kept: list[str],
    train_command: str | None,
    command: str | None,
) -> dict:
    """The release's facts: its format, input, data, training position, metrics, commands, source."""
    return {
        "format": RELEASE_FORMAT,
        "name": out.stem,
        "file_format": kind,
        "weights_dtype": "float16",
        "float32_tensors": kept,
        "parameters": sum(parameter.numel() for parameter in model.parameters()),
        "method": config.method,
        "input": {
            "lr_size": config.data.hr_size // config.data.scale,
            "hr_size": config.data.hr_size,
            "scale": config.data.scale,
            "test_input": config.test.input,
            "test_tta": config.test.tta,
            "num_classes": config.data.num_classes,
        },
        "data": describe_data(config),
        "trained": {key: state.get(key) for key in RELEASE_STATE_KEYS},
        "metrics": run_metrics(run_dir, checkpoint, state),
        "source": str(checkpoint),
        "source_sha256": file_sha256(checkpoint),
        "train_command": train_command,
        "export_command": command,
        "commit": git_commit(),
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "torch": str(torch.__version__),
    }


def _carry_over(release: dict, previous: dict, checkpoint: Path, train_command: str | None) -> None:
    """A release converted: keep what ``previous`` (its release record) recorded of its training."""
    release["converted_from"] = {
        "file": str(checkpoint),
        "sha256": release["source_sha256"],
        "commit": previous.get("commit"),
        "created": previous.get("created"),
    }
    release.update({key: previous[key] for key in CARRIED_OVER if previous.get(key) is not None})
    release["train_command"] = train_command or previous.get("train_command")


def _write_release(
    kind: str, out: Path, weights: dict, state: dict, config: Config, release: dict, entry: dict
) -> tuple[Path | None, str | None, dict]:
    """Write the release file (and a safetensors release's sidecar); returns the sidecar, its
    SHA-256 and the registry entry."""
    keep = {key: state[key] for key in RELEASE_STATE_KEYS if key in state}
    if kind != "safetensors":
        save_checkpoint(
            {"config": state["config"], "model": weights, "release": release, **keep}, out
        )
        return None, None, entry
    thresholds = weights.get("grade_thresholds")
    sidecar = save_safetensors_release(
        weights,
        {
            "config": state["config"],
            "release": release,
            "state": json_safe(keep),
            # For readers without this repository: the grade is the expected grade cut at these
            # (model.grade_decoding=thresholds; else the argmax). The weights' own tensor is what loads.
            "grade_decoding": config.model.grade_decoding,
            "grade_thresholds": thresholds.tolist() if thresholds is not None else None,
        },
        out,
    )
    sidecar_digest = file_sha256(sidecar)
    entry = {
        "format": "safetensors",
        "sidecar": sidecar.name,
        "sidecar_sha256": sidecar_digest,
        **entry,
    }
    return sidecar, sidecar_digest, entry


def export_release(
    source: str | Path,
    out: str | Path,
    train_command: str | None = None,
    command: str | None = None,
    tta: bool | None = None,
    format: str | None = None,
    calibrate_on: str | Path | None = None,
    specificity: float = 0.90,
) -> Exported:
    """Write the release of ``source`` (run folder or checkpoint) to ``out`` and register its SHA-256.

    ``out``'s suffix picks the format (``.pt``, or ``.safetensors`` with its sidecar ``.json``);
    ``format`` ("pt" / "safetensors"), if given, must agree. ``tta`` True / False sets the
    release's ``test.tta`` (flip test-time augmentation, test.py's default for it); None keeps the run's.
    ``calibrate_on``: a validation predictions CSV of test.py (default: the run folder's, in the
    release's input and TTA, when there) on which the temperature and the referral threshold at
    ``specificity`` are fitted (evaluation/calibration.py); none found: the release has neither."""
    checkpoint, run_dir = source_checkpoint(source)
    out = Path(out)
    kind = release_format(out, format)
    state = load_checkpoint(checkpoint)
    run_tta = state["config"]["test"].get("tta", False)
    if tta is not None:
        state["config"]["test"]["tta"] = tta
    config = config_from_dict(state["config"])
    config.model.imagenet_weights = None
    model = build_model(config)
    load_model_state(model, state["model"], checkpoint)  # refuse weights that do not rebuild
    weights, kept = half_weights(state["model"])
    if kept:
        log.warning("kept in float32 (values beyond float16's range): %s", ", ".join(kept))
    release = _release_record(
        config, state, model, checkpoint, run_dir, out, kind, kept, train_command, command
    )
    previous = state.get("release")
    if isinstance(previous, dict) and run_dir is None:
        _carry_over(release, previous, checkpoint, train_command)
    predictions = calibrate_on or validation_predictions(run_dir, config, run_tta)
    if predictions is not None:
        grades, probs = read_predictions(Path(predictions))
        release.update(release_calibration(grades, probs, specificity, str(predictions)))
    release = json_safe(release)
    entry = {
        "lr_size": release["input"]["lr_size"],
        "hr_size": release["input"]["hr_size"],
        "dataset": config.data.dataset,
        "commit": release["commit"],
        "created": release["created"],
    }
    sidecar, sidecar_digest, entry = _write_release(
        kind, out, weights, state, config, release, entry
    )
    digest, size = file_sha256(out), out.stat().st_size
    register(out, {"sha256": digest, "bytes": size, **entry})
    return Exported(out, digest, size, release, sidecar, sidecar_digest)


def readme_line(exported: Exported) -> str:
    """The model card's table row for this file."""
    release = exported.release
    size = release["input"]
    return (
        f"| `{exported.path.name}` | {release['data']['dataset']} | LR {size['lr_size']} -> HR {size['hr_size']} (x{size['scale']}) "
        f"| {exported.bytes / 2**20:.1f} MB | `{exported.sha256}` |"
    )


def validation_predictions(run_dir: Path | None, config: Config, run_tta: bool) -> Path | None:
    """test.py's validation predictions in the release's input and TTA, if the run folder has them."""
    if run_dir is None:
        return None
    path = predictions_file(
        run_dir, "val", config.test.input, tta=config.test.tta, test_tta=run_tta
    )
    return path if path.is_file() else None


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m engine.export",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "source",
        metavar="RUN_OR_CHECKPOINT",
        help="a run folder (its checkpoints/best.pt) or a checkpoint file",
    )
    parser.add_argument(
        "--out",
        required=True,
        help="the release file, e.g. pretrained_model/deepmt_dr_idrid_small.safetensors; "
        "NAME.safetensors writes safetensors weights and the sidecar NAME.json, NAME.pt one file",
    )
    parser.add_argument(
        "--format",
        choices=[*sorted(set(FORMATS.values())), "onnx", "pt2"],
        help="pt or safetensors (a release), onnx or pt2 (a deployment file of the inference "
        "network: engine/deploy_export.py); default: --out's suffix, which must agree",
    )
    parser.add_argument(
        "--train-command", help="the command that trained the run, recorded in the release"
    )
    parser.add_argument(
        "--calibrate-on",
        metavar="CSV",
        help="test.py's validation predictions to fit the temperature and the referral threshold "
        "on (default: the run folder's predictions_val*.csv in the release's input and TTA)",
    )
    parser.add_argument(
        "--referable-specificity",
        type=float,
        default=0.90,
        help="the validation specificity the release's referral threshold reaches (default 0.90)",
    )
    parser.add_argument(
        "--tta",
        action=argparse.BooleanOptionalAction,
        help="set the release's test.tta: test.py then averages each image's grade over its four "
        "flips unless told --no-tta (predict.py only with its --tta; default: the run's test.tta)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    command = shlex.join(
        ["python", "-m", "engine.export", *(sys.argv[1:] if argv is None else argv)]
    )
    from engine import deploy_export  # imports engine.export: here, not at the top

    if deploy_export.deploy_format(Path(args.out), args.format):
        return deploy_export.main(args, command)
    exported = export_release(
        args.source,
        args.out,
        args.train_command,
        command,
        args.tta,
        args.format,
        args.calibrate_on,
        args.referable_specificity,
    )
    megabytes = exported.bytes / 2**20
    release = exported.release
    sidecar = f", its sidecar {exported.sidecar}" if exported.sidecar else ""
    print(
        f"wrote {exported.path} ({megabytes:.1f} MB, {release['parameters']:,} parameters in float16){sidecar} "
        f"and its entry in {exported.path.parent / 'RELEASES.json'}"
    )
    found = (
        ", ".join(release["metrics"])
        or "none (run test.py --split val on the run first to record them)"
    )
    origin = (
        f"carried over from {release['converted_from']['file']}"
        if "converted_from" in release
        else "from the run folder"
    )
    print(f"metrics recorded {origin}: {found}")
    if megabytes > MAX_RELEASE_MB:
        print(
            f"warning: {megabytes:.1f} MB is over the {MAX_RELEASE_MB} MB a file in pretrained_model/ may take",
            file=sys.stderr,
        )
    calibration = release.get("calibration")
    if calibration:
        point = release["referable_operating_point"]
        print(
            f"calibrated on {calibration['n']} validation images: temperature "
            f"{calibration['temperature']:.3f}, ECE {calibration['ece_before']:.3f} -> "
            f"{calibration['ece_after']:.3f}; referral threshold {release['referable_threshold']:.3f} "
            f"(sensitivity {point['sensitivity']:.3f} at specificity {point['specificity']:.3f})"
        )
    else:
        print(
            "not calibrated: no validation predictions (run test.py --split val first, or --calibrate-on)"
        )
    if exported.sidecar:
        print(f"sidecar SHA-256 {exported.sidecar_sha256}")
    print(f"SHA-256 {exported.sha256}")
    print("model card line (pretrained_model/README.md):")
    print(readme_line(exported))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
