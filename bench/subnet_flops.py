"""Forward GFLOP per image of each sub-net (ISR, segmentation, grader) at a preset's sizes.

    python bench/subnet_flops.py --config configs/idrid_small.yaml data.hr_size=1024
    python bench/subnet_flops.py --config configs/idrid_small.yaml data.hr_size=1024 model.grader_input_size=512

One JSON line: where an image's compute goes, and what ``model.grader_input_size`` saves (the
grader on block-averaged SR and max-pooled lesion maps). FLOPs are counted by PyTorch's
FlopCounterMode on one image, so they do not depend on the machine; a training step costs about
three forwards of the sub-nets it trains (forward plus backward).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import commit
from engine.builders import build_model
from engine.config import load_config


def gflop(fn) -> float:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        fn()
    return round(counter.get_total_flops() / 1e9, 2)


def subnet_flops(config) -> dict:
    """``{"isr": .., "seg": .., "grader": .., "total": ..}``, forward GFLOP of one image."""
    model = build_model(config).eval()
    hr, scale = config.data.hr_size, config.data.scale
    lr = torch.rand(1, 3, hr // scale, hr // scale)
    with torch.no_grad():
        sr = model.isr(lr)
        lesion_logits = model.segment(sr)
    counts = {
        "isr": gflop(lambda: model.isr(lr)) if config.model.isr == "net" else 0.0,
        "seg": gflop(lambda: model.segment(sr)),
        "grader": gflop(lambda: model.grade_with_lesions(sr, lesion_logits)),
    }
    return {**counts, "total": round(sum(counts.values()), 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", help="a preset of configs/ (default: the defaults)")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args(argv)
    # Only the networks are built: the preset's dataset (and its data.root) is not needed.
    config = load_config(args.config, ["data.dataset=synthetic", *args.overrides])
    line = {
        "bench": "subnet_flops",
        "config": args.config,
        "hr": config.data.hr_size,
        "lr": config.data.hr_size // config.data.scale,
        "grader_input_size": config.model.grader_input_size or config.data.hr_size,
        "gflop_per_image": subnet_flops(config),
        "commit": commit(),
    }
    print(json.dumps(line))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
