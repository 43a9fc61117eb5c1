"""Inference throughput of DeepMT-DR (LR -> SR -> lesion maps -> grade): one JSON line.

    python bench/infer.py                                            # CPU: LR 32 -> HR 128, seg width 1, batch 8
    python bench/infer.py --hr 1024 --seg-width 4 --batch 16 --amp --channels-last   # a GPU, paper size

Random LR batches already on the device through the one inferer (engine/inference.py), which is
what test.py, predict.py and the saliency CLI run per image. Fields as in bench/train_step.py.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import (
    add_size_args,
    count_flops,
    reset_peak_memory,
    stamp,
    throughput_fields,
    time_per_call,
)
from engine.builders import build_model, select_device
from engine.config import load_config
from engine.inference import Inferer
from engine.runtime import configure_threads


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_size_args(parser)
    parser.add_argument("--amp", action="store_true", help="bf16 autocast")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the whole model (no Grad-CAM at inference)",
    )
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args()

    config = load_config(
        None,
        [
            f"data.hr_size={args.hr}",
            f"data.scale={args.scale}",
            f"model.seg_width={args.seg_width}",
            f"run.amp={str(bool(args.amp)).lower()}",
            f"run.channels_last={str(bool(args.channels_last)).lower()}",
            *args.overrides,
        ],
    )
    device = select_device(args.device)
    configure_threads(config.run.threads)  # every CPU this process may use
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    model = build_model(config).to(device).eval()
    inferer = Inferer(model, config, "lr")  # run.amp / run.channels_last as the flags say
    if args.compile:
        model.compile()
    lr = torch.rand(args.batch, 3, args.hr // args.scale, args.hr // args.scale, device=device)

    def infer() -> None:
        inferer(lr=lr)

    reset_peak_memory(device)
    seconds = time_per_call(infer, device, args.steps, args.warmup)
    flops = count_flops(infer) / args.batch
    print(
        json.dumps(
            {
                "bench": "infer",
                "hr": args.hr,
                "lr": args.hr // args.scale,
                "scale": args.scale,
                "seg_width": config.model.seg_width,  # an override wins over --seg-width
                "batch": args.batch,
                **stamp(device),
                "dtype": "bfloat16" if args.amp else "float32",
                "channels_last": args.channels_last,
                "compile": args.compile,
                **throughput_fields(args.batch, seconds, flops, device),
            }
        )
    )


if __name__ == "__main__":
    main()
