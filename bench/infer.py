"""Inference throughput of DeepMT-DR (LR -> SR -> lesion maps -> grade): one JSON line.

    python bench/infer.py                                            # CPU: LR 32 -> HR 128, seg width 1, batch 8
    python bench/infer.py --hr 1024 --seg-width 4 --batch 16 --amp --channels-last   # a GPU, paper size

Random LR batches already on the device, the model in eval mode under ``torch.inference_mode``;
what ``test.py`` and a deployment run per image. Fields as in bench/train_step.py.
"""
from __future__ import annotations

import argparse
import json
import sys
from contextlib import nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import count_flops, peak_memory_gb, reset_peak_memory, stamp, time_per_call
from engine.builders import build_model, select_device
from engine.config import load_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hr", type=int, default=128, help="HR size (paper: 1024)")
    parser.add_argument("--scale", type=int, default=4)
    parser.add_argument("--seg-width", type=float, default=1.0, help="segmentation width multiplier (paper: 4)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true", help="torch.compile the whole model (no Grad-CAM at inference)")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args()

    config = load_config(None, [f"data.hr_size={args.hr}", f"data.scale={args.scale}", f"model.seg_width={args.seg_width}", *args.overrides])
    device = select_device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    model = build_model(config).to(device).eval()
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    model.to(memory_format=memory_format)
    if args.compile:
        model.compile()
    lr = torch.rand(args.batch, 3, args.hr // args.scale, args.hr // args.scale, device=device).contiguous(memory_format=memory_format)
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if args.amp else nullcontext

    def infer() -> None:
        with torch.inference_mode(), autocast():
            model(lr)

    reset_peak_memory(device)
    seconds = time_per_call(infer, device, args.steps, args.warmup)
    flops = count_flops(infer) / args.batch
    images_per_s = args.batch / seconds
    print(json.dumps({
        "bench": "infer",
        "hr": args.hr,
        "lr": args.hr // args.scale,
        "scale": args.scale,
        "seg_width": args.seg_width,
        "batch": args.batch,
        **stamp(device),
        "dtype": "bfloat16" if args.amp else "float32",
        "channels_last": args.channels_last,
        "compile": args.compile,
        "images_per_s": round(images_per_s, 3),
        "ms_per_image": round(1000 / images_per_s, 2),
        "peak_memory_gb": round(peak_memory_gb(device), 2),
        "gflop_per_image": round(flops / 1e9, 2),
        "achieved_tflop_s": round(flops * images_per_s / 1e12, 4),
    }))


if __name__ == "__main__":
    main()
