"""Sanity checks of saliency maps (Adebayo et al., NeurIPS 2018) and of degenerate inputs.

    python saliency/sanity.py --checkpoint runs/demo/checkpoints/best.pt
    python saliency/sanity.py --checkpoint CKPT --methods gradcam,ig --n 4 --input hr

Cascading model randomisation: the grader's weights are re-initialised layer by layer, output
side first (head, layer4, ..., stem), and after each step every method's display map is compared
with the trained model's map of the same image and target by Spearman rank correlation (mean
over images). A method whose maps do not change is explaining the image, not the model.
Constant input: the display maps of a black and of a grey image must be finite; they are exactly
zero wherever the raw map is flat (with zero-padded convolutions a constant image still gives
the borders their own values, so a real grader's map of it need not be flat).
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
from scipy.stats import rankdata

from engine.builders import build_dataset, build_loader
from engine.cli import run_cli
from engine.config import ConfigError
from engine.loading import load_trained
from saliency.adapters import SaliencyError, SaliencyModel, default_input, for_deepmt_dr
from saliency.methods import TITLES, Options, display_map, parse_methods, raw_saliency


def rank_correlation(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """Spearman correlation per image of two ``[N,...]`` maps (average ranks for ties); NaN where a map is constant."""
    ranks_a = rankdata(a.flatten(1).double().cpu().numpy(), axis=1)
    ranks_b = rankdata(b.flatten(1).double().cpu().numpy(), axis=1)
    ranks_a -= ranks_a.mean(axis=1, keepdims=True)
    ranks_b -= ranks_b.mean(axis=1, keepdims=True)
    norm = np.sqrt((ranks_a**2).sum(1) * (ranks_b**2).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(norm > 0, (ranks_a * ranks_b).sum(1) / norm, np.nan)


def randomise(module: torch.nn.Module, seed: int) -> None:
    """Re-initialise every sub-module that can (``reset_parameters``; BatchNorm statistics too), seeded."""
    device = next(module.parameters()).device
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        for sub in module.modules():
            if hasattr(sub, "reset_parameters"):
                sub.reset_parameters()


def cascading_randomisation(
    model: SaliencyModel,
    image: torch.Tensor,
    target: torch.Tensor,
    methods: list[str],
    layer: str | None = None,
    options: Options | None = None,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """``{"none": {...}, "grader.head": {...}, "grader.layer4": {...}, ...}``: per cumulative
    randomisation step, per method, the mean Spearman correlation with the trained model's maps.

    ``target`` is fixed (the trained model's), so every step explains the same score column. The
    model is deep-copied; the caller's weights are untouched. Images whose map became constant
    have no rank correlation and are left out of the mean (NaN if all are).
    """

    def maps(explained: SaliencyModel) -> dict[str, torch.Tensor]:
        return {
            m: display_map(raw_saliency(explained, image, m, target, layer, options))
            for m in methods
        }

    reference = maps(model)
    result = {"none": {m: 1.0 for m in methods}}
    randomised = copy.deepcopy(model)
    for step, name in enumerate(model.randomisation_order):
        randomise(randomised.layer(name), seed + step)
        current = maps(randomised)
        result[name] = {}
        for method in methods:
            correlation = rank_correlation(reference[method], current[method])
            result[name][method] = (
                float(np.nanmean(correlation)) if np.isfinite(correlation).any() else math.nan
            )
    return result


def constant_input_check(
    model: SaliencyModel,
    methods: list[str],
    size: int,
    value: float,
    layer: str | None = None,
    options: Options | None = None,
) -> dict[str, dict[str, float]]:
    """Per method, for a batch of 2 constant images of ``value``: NaN count and max of the display map."""
    image = torch.full((2, 3, size, size), value, device=next(model.parameters()).device)
    with torch.no_grad():
        target = model.targets(model(image), "predicted")
    result = {}
    for method in methods:
        shown = display_map(raw_saliency(model, image, method, target, layer, options))
        result[method] = {
            "nan": int(torch.isnan(shown).sum()),
            "max": float(torch.nan_to_num(shown).max()),
        }
    return result


def format_tables(randomisation: dict, constant: dict[str, dict]) -> str:
    methods = list(randomisation["none"])
    header = "| randomised up to | " + " | ".join(TITLES[m] for m in methods) + " |"
    lines = [
        "Spearman rank correlation with the trained model's maps (1 = unchanged)",
        "",
        header,
        "|---|" + "---|" * len(methods),
    ]
    for step, row in randomisation.items():
        lines.append(f"| {step} | " + " | ".join(f"{row[m]:.3f}" for m in methods) + " |")
    lines += [
        "",
        "Constant input: NaN pixels / max of the display map",
        "",
        "| input | " + " | ".join(TITLES[m] for m in methods) + " |",
        "|---|" + "---|" * len(methods),
    ]
    for name, row in constant.items():
        lines.append(
            f"| {name} | "
            + " | ".join(f"{row[m]['nan']} / {row[m]['max']:.3f}" for m in methods)
            + " |"
        )
    return "\n".join(lines)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--methods", default="all", help="comma-separated, or all (default)")
    parser.add_argument("--n", type=int, default=8, help="test images (default 8)")
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
    parser.add_argument("--device", default="auto")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    try:
        methods = parse_methods(args.methods)
        if args.n <= 0:
            raise ConfigError("--n must be positive")
        model, config, _ = load_trained(args.checkpoint, args.device)
        device = next(model.parameters()).device
        explained = for_deepmt_dr(model)
        explained.layer(args.layer or explained.default_layer)
        batch = next(iter(build_loader(build_dataset(config, args.split), args.n, False, 0)))
        mode = args.input or default_input(config)
        source = batch["lr" if mode == "lr" else "hr"].to(device)
        with torch.no_grad():
            image = model.isr(source).clamp(0, 1) if mode == "lr" else source
            target = explained.targets(explained(image), args.target)
        randomisation = cascading_randomisation(explained, image, target, methods, args.layer)
        constant = {
            f"black {image.shape[-1]} px": constant_input_check(
                explained, methods, image.shape[-1], 0.0, args.layer
            ),
            f"grey 0.5 {image.shape[-1]} px": constant_input_check(
                explained, methods, image.shape[-1], 0.5, args.layer
            ),
        }
    except SaliencyError as error:
        raise ConfigError(str(error)) from error
    print(f"{len(image)} {args.split} images, input {mode}, target {args.target}")
    print(format_tables(randomisation, constant))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
