"""Seconds per saliency method for a batch of images, one JSON line per method.

    python bench/bench_saliency.py                     # batch 8, 512x512, all methods (about 4 min on 2 cores)
    python bench/bench_saliency.py --full              # the iterative methods run in full too (about 15 min)
    python bench/bench_saliency.py --methods gradcam,gradcampp --size 1024 --batch 2 --device cuda

Times what ``saliency/run.py`` computes per batch: DeepMT-DR's grader (segmentation + grading) on
random images, explained for the predicted grade with each method's default options (integrated
gradients with a fixed --ig-steps: no completeness refinement, so that the time does not depend
on the weights). Without --checkpoint the architecture is configs/demo.yaml's, random weights.

Integrated gradients, SmoothGrad and occlusion cost a fixed amount per step, noise sample or
occlusion window. Without --full they run a fraction of it (4 steps, 2 samples, non-overlapping
windows) and the time is scaled to the full count; the JSON line says so ("timed"). Time a quiet
machine: other busy processes make CPU timings meaningless.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from engine.builders import build_model, select_device
from engine.config import load_config
from engine.testing import load_trained
from saliency.adapters import for_deepmt_dr
from saliency.methods import Options, occlusion_geometry, parse_methods, raw_saliency

QUICK_IG_STEPS, QUICK_SMOOTHGRAD_SAMPLES = 4, 2


def windows(size: int, options: Options) -> int:
    """Occlusion windows per image (Captum slides until the whole side is covered)."""
    (window, _), (stride, _) = occlusion_geometry(size, size, options)
    return (math.ceil((size - window) / stride) + 1) ** 2


def timed_options(
    method: str, options: Options, size: int, full: bool
) -> tuple[Options, float, str]:
    """(options to run, factor from the timed run to the full one, what was timed)."""
    if full:
        return options, 1.0, "full"
    if method == "ig":
        quick = replace(options, ig_steps=QUICK_IG_STEPS, ig_max_steps=QUICK_IG_STEPS)
        return (
            quick,
            options.ig_steps / QUICK_IG_STEPS,
            f"{QUICK_IG_STEPS} of {options.ig_steps} steps, scaled",
        )
    if method == "smoothgrad":
        quick = replace(options, smoothgrad_samples=QUICK_SMOOTHGRAD_SAMPLES)
        factor = options.smoothgrad_samples / QUICK_SMOOTHGRAD_SAMPLES
        return (
            quick,
            factor,
            f"{QUICK_SMOOTHGRAD_SAMPLES} of {options.smoothgrad_samples} samples, scaled",
        )
    if method == "occlusion":
        quick = replace(options, occlusion_stride=options.occlusion_window)
        full_count, quick_count = windows(size, options), windows(size, quick)
        # one unperturbed forward besides the windows
        return (
            quick,
            (full_count + 1) / (quick_count + 1),
            f"{quick_count} of {full_count} windows, scaled",
        )
    return options, 1.0, "full"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--methods", default="all")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--full", action="store_true", help="run every method in full (no scaling)")
    parser.add_argument(
        "--checkpoint", help="time a trained model (default: demo architecture, random weights)"
    )
    parser.add_argument("--ig-steps", type=int, default=Options.ig_steps)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    methods = parse_methods(args.methods)
    if args.checkpoint:
        model, _, _ = load_trained(args.checkpoint, args.device)
    else:
        torch.manual_seed(0)
        model = build_model(load_config("configs/demo.yaml")).to(select_device(args.device)).eval()
    device = next(model.parameters()).device
    explained = for_deepmt_dr(model)
    options = replace(Options(), ig_steps=args.ig_steps, ig_max_steps=args.ig_steps)
    image = torch.rand(
        args.batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(0)
    ).to(device)
    with torch.no_grad():
        target = explained.targets(explained(image), "predicted")
    raw_saliency(explained, image[:1], "gradcam", target[:1], options=options)  # warm-up
    (window, _), (stride, _) = occlusion_geometry(args.size, args.size, options)
    settings = {
        "ig": f"{options.ig_steps} Gauss-Legendre steps",
        "smoothgrad": f"{options.smoothgrad_samples} samples",
        "occlusion": f"window {window} px, stride {stride} px, {windows(args.size, options)} windows",
    }
    for method in methods:
        run_options, factor, timed = timed_options(method, options, args.size, args.full)
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        raw_saliency(explained, image, method, target, options=run_options)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = (time.perf_counter() - start) * factor
        print(
            json.dumps(
                {
                    "method": method,
                    "seconds": round(seconds, 3),
                    "seconds_per_image": round(seconds / args.batch, 3),
                    "batch": args.batch,
                    "size": args.size,
                    "settings": settings.get(method, ""),
                    "timed": timed,
                    "device": str(device),
                    "threads": torch.get_num_threads(),
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
