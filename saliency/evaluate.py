"""Lesion agreement of saliency maps: do the grader's maps land on the lesions?

    python saliency/evaluate.py --checkpoint runs/demo/checkpoints/best.pt
    python saliency/evaluate.py --checkpoint CKPT --methods gradcam,ig --n 32 --target any_dr --json agreement.json

On the test images of the checkpoint's dataset that hold lesion pixels in the field of view, per
method: the fraction of the display map's mass inside the lesion region (the union of the lesion
masks dilated as ``evaluation.metrics.lesion_region`` does, inside the FOV) over its mass inside
the FOV, and the per-image ROC AUC of the map as a detector of lesion-region pixels within the FOV;
means over images. A uniform map scores the lesion area fraction and AUC 0.5 (row "uniform"); the
segmentation net's any-lesion probability map is a reference row ("lesion net"), where there is one.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from tqdm import tqdm

from engine.builders import build_dataset, build_loader
from engine.cli import run_cli
from engine.config import ConfigError
from engine.inference import Inferer
from engine.loading import load_trained
from evaluation.metrics import lesion_region
from models.deepmt_dr import any_lesion_map
from saliency.adapters import SaliencyError, default_input, for_deepmt_dr
from saliency.methods import TITLES, Options, display_map, parse_methods, raw_saliency

UNIFORM, LESION_NET = "uniform", "lesion net"


def agreement_per_image(
    maps: torch.Tensor, region: torch.Tensor, fov: torch.Tensor
) -> tuple[np.ndarray, np.ndarray]:
    """Mass fraction in the region and ROC AUC, each ``[N]`` (NaN where undefined).

    maps: ``[N,1,H,W]`` >= 0; region, fov: ``[N,1,H,W]`` {0,1}. Mass fraction: sum of the map over
    region & FOV / sum over the FOV (NaN for a map that is zero in the whole FOV). AUC: pixels of
    the FOV, positives in the region (NaN without both classes); ties count one half.
    """
    inside = fov > 0.5
    lesion = (region > 0.5) & inside
    mass_fov = (maps * inside).flatten(1).sum(1)
    mass_lesion = (maps * lesion).flatten(1).sum(1)
    mass = torch.where(mass_fov > 0, mass_lesion / mass_fov.clamp_min(1e-12), torch.nan)
    aucs = []
    for score, positive, valid in zip(
        maps.flatten(1).cpu().numpy(),
        lesion.flatten(1).cpu().numpy(),
        inside.flatten(1).cpu().numpy(),
    ):
        labels = positive[valid]
        aucs.append(
            float(roc_auc_score(labels, score[valid]))
            if 0 < labels.sum() < labels.size
            else math.nan
        )
    return mass.double().cpu().numpy(), np.asarray(aucs)


def lesion_agreement(
    checkpoint: str | Path,
    methods: list[str],
    n: int = 64,
    split: str = "test",
    target: str = "predicted",
    layer: str | None = None,
    mode: str | None = None,
    batch_size: int = 8,
    device: str = "auto",
    options: Options | None = None,
    progress=None,
) -> dict:
    """Per method (plus "uniform" and "lesion net"): mean mass fraction, mean AUC, image counts.

    Uses the first ``n`` images of ``split`` with lesion pixels in the FOV; ``mode`` lr explains
    the grader on SR (the system), hr on the HR image, None as the run is tested.
    """
    model, config, _ = load_trained(checkpoint, device)
    mode = mode or default_input(config)
    explained = for_deepmt_dr(model)
    layer = layer or explained.default_layer
    explained.layer(layer)
    explained.targets(torch.zeros(1, config.data.num_classes + 1), target)  # check the target now
    loader = build_loader(build_dataset(config, split), batch_size, False, 0)
    # The one inferer (engine/inference.py) grades, in fp32 as the saliency methods need.
    inferer = Inferer(model, config, mode, amp=False)
    references = [UNIFORM, LESION_NET] if model.use_lesions else [UNIFORM]  # no seg net: no map
    names = [*references, *methods]
    mass: dict[str, list[np.ndarray]] = {name: [] for name in names}
    auc: dict[str, list[np.ndarray]] = {name: [] for name in names}
    area: list[np.ndarray] = []
    counted = 0
    for batch in progress(loader) if progress else loader:
        masks = batch["masks"] * batch["mask_valid"][:, :, None, None]
        region = lesion_region(masks, batch["fov"]).to(inferer.device)
        keep = region.flatten(1).amax(1) > 0
        keep &= torch.cumsum(keep.long(), 0) + counted <= n
        if not keep.any():
            continue
        region, fov = region[keep], batch["fov"].to(inferer.device)[keep]
        maps = _saliency_maps(
            inferer, explained, batch, keep, fov, methods, (target, layer, options)
        )
        for name, saliency in maps.items():
            m, a = agreement_per_image(saliency, region, fov)
            mass[name].append(m)
            auc[name].append(a)
        area.append(
            ((region * fov).flatten(1).sum(1) / fov.flatten(1).sum(1)).double().cpu().numpy()
        )
        counted += int(keep.sum())
        if counted >= n:
            break
    if counted == 0:
        raise ConfigError(f"no {split} image with lesion pixels in its field of view")
    return {
        "checkpoint": str(checkpoint),
        "split": split,
        "images": counted,
        "input": mode,
        "target": target,
        "layer": layer,
        "lesion_area_fraction": float(np.concatenate(area).mean()),
        "methods": {name: _method_row(mass[name], auc[name]) for name in names},
    }


def _saliency_maps(inferer, explained, batch, keep, fov, methods, how) -> dict:
    """The uniform reference, the lesion net's any-lesion map and each method's map of the kept
    images of ``batch`` (graded as the inferer grades them)."""
    target, layer, options = how
    lr = batch["lr"][keep] if inferer.mode == "lr" else None
    result = inferer(batch["hr"][keep], lr)
    image = result.image.clamp(0, 1)
    with torch.no_grad():
        scores = explained(image)
    target_index = explained.targets(scores, target)
    maps = {UNIFORM: torch.ones_like(fov)}
    if inferer.model.use_lesions:
        maps[LESION_NET] = any_lesion_map(result.lesions)
    for method in methods:
        maps[method] = display_map(
            raw_saliency(explained, image, method, target_index, layer, options)
        )
    return maps


def _method_row(masses: list[np.ndarray], aucs: list[np.ndarray]) -> dict:
    masses, aucs = np.concatenate(masses), np.concatenate(aucs)
    return {
        "mass_in_lesions": float(np.nanmean(masses)) if np.isfinite(masses).any() else math.nan,
        "auc": float(np.nanmean(aucs)) if np.isfinite(aucs).any() else math.nan,
        "zero_maps": int(np.isnan(masses).sum()),
    }


def format_table(result: dict) -> str:
    """A Markdown table of :func:`lesion_agreement`'s result."""
    lines = [
        (
            f"{result['images']} {result['split']} images with lesions, input {result['input']}, "
            f"target {result['target']}, layer {result['layer']}; lesion region = "
            f"{100 * result['lesion_area_fraction']:.2f} % of the FOV"
        ),
        "",
        "| map | saliency mass in lesions | x chance | lesion AUC | all-zero maps |",
        "|---|---|---|---|---|",
    ]
    for name, row in result["methods"].items():
        ratio = row["mass_in_lesions"] / result["lesion_area_fraction"]
        lines.append(
            f"| {TITLES.get(name, name)} | {100 * row['mass_in_lesions']:.2f} % | {ratio:.2f} | "
            f"{row['auc']:.3f} | {row['zero_maps']} |"
        )
    return "\n".join(lines)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--methods", default="all", help="comma-separated, or all (default)")
    parser.add_argument("--n", type=int, default=64, help="images with lesions to use (default 64)")
    parser.add_argument("--split", default="test", choices=("train", "val", "test"))
    parser.add_argument(
        "--target", default="predicted", help="predicted (default), any_dr or a grade"
    )
    parser.add_argument("--layer", help="layer of the Grad-CAM family (default grader.layer4)")
    parser.add_argument(
        "--input",
        choices=("lr", "hr"),
        help="lr: maps on SR (the system), hr: on HR "
        "(default: how the checkpoint's run is tested, else lr)",
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", help="also write the result as JSON here")
    parser.add_argument("--quiet", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    try:
        methods = parse_methods(args.methods)
        if args.n <= 0 or args.batch_size <= 0:
            raise ConfigError("--n and --batch-size must be positive")
        progress = (
            None
            if args.quiet
            else (lambda loader: tqdm(loader, desc="lesion agreement", unit="batch"))
        )
        result = lesion_agreement(
            args.checkpoint,
            methods,
            args.n,
            args.split,
            args.target,
            args.layer,
            args.input,
            args.batch_size,
            args.device,
            progress=progress,
        )
    except SaliencyError as error:
        raise ConfigError(str(error)) from error
    print(format_table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2).replace("NaN", "null"))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
