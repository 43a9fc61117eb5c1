"""Training-step throughput of DeepMT-DR: one JSON line per variant (images/s, peak memory, FLOPs).

    python bench/train_step.py --naive                       # CPU: LR 32 -> HR 128, x4, seg width 1, batch 8
    python bench/train_step.py --stage cls                   # another stage (isr and seg train on crops)
    python bench/train_step.py --stage cls --cache           # also with the frozen seg net's maps cached
    python bench/train_step.py --hr 1024 --seg-width 4 --batch 24 --amp --channels-last --naive   # a GPU, paper size

Random batches (no data loading; bench/loader.py measures that), Adam steps included, the same
``Trainer`` step functions ``train.py`` runs, so what is timed is what trains. ``--naive`` also
times bench/naive_step.py, the published step (one image at a time, per-channel Grad-CAM loops,
host round trips), on the same model and batch, and the project line gets ``speedup_vs_naive``.
``--cache`` (cls, joint) also times the step with the frozen segmentation net's lesion maps
looked up instead of computed (``train.cache_frozen``): line ``project_cached``, ``speedup_vs_uncached``.
FLOPs are counted by ``torch.utils.flop_counter`` over one step (convolutions and matmuls,
forward and backward); achieved TFLOP/s = FLOPs per image x images/s. Peak memory is the GPU's
allocator peak, or on a CPU the process's peak resident set.
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
from bench.naive_step import naive_joint_step
from engine.config import STAGES, load_config
from engine.frozen_cache import FrozenOutputs
from engine.trainer import Trainer


def random_batch(batch: int, hr: int, scale: int, seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    return {
        "hr": torch.rand(batch, 3, hr, hr, generator=generator),
        "lr": torch.rand(batch, 3, hr // scale, hr // scale, generator=generator),
        "masks": (torch.rand(batch, 4, hr, hr, generator=generator) > 0.99).float(),
        "mask_valid": torch.ones(batch, 4, dtype=torch.bool),
        "fov": torch.ones(batch, 1, hr, hr),
        "grade": torch.randint(0, 5, (batch,), generator=generator),
    }


def build_trainer(args) -> Trainer:
    overrides = [
        f"data.hr_size={args.hr}",
        f"data.scale={args.scale}",
        f"data.crop_size={args.crop}",
        f"model.seg_width={args.seg_width}",
        f"run.device={args.device}",
        f"run.amp={str(args.amp).lower()}",
        f"run.amp_dtype={args.amp_dtype}",
        f"run.channels_last={str(args.channels_last).lower()}",
        f"run.compile={str(args.compile).lower()}",
        f"model.seg_checkpoint={str(args.seg_checkpoint).lower()}",
        "model.grader_dropout=0",
        *args.overrides,
    ]
    trainer = Trainer(load_config(None, overrides))
    trainer.class_weights = None  # random batches: no dataset
    trainer.crop_generator = torch.Generator().manual_seed(0)
    return trainer


def parse_args() -> argparse.Namespace:
    """The command line: stage, sizes, precision and layout levers, --naive and --cache."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--stage", choices=STAGES, default="joint")
    add_size_args(parser)
    parser.add_argument(
        "--crop", type=int, default=0, help="HR crop of the isr and seg stages (0: whole image)"
    )
    parser.add_argument(
        "--amp", action="store_true", help="autocast (bf16 unless --amp-dtype float16)"
    )
    parser.add_argument("--amp-dtype", default="bfloat16", choices=("bfloat16", "float16"))
    parser.add_argument(
        "--compile", action="store_true", help="torch.compile the ISR and segmentation nets"
    )
    parser.add_argument(
        "--seg-checkpoint",
        action="store_true",
        help="activation checkpointing in the frozen segmentation net",
    )
    parser.add_argument(
        "--naive", action="store_true", help="also time the published per-image step (joint only)"
    )
    parser.add_argument(
        "--cache",
        action="store_true",
        help="also time the step with the frozen nets' outputs cached (cls, joint: train.cache_frozen)",
    )
    parser.add_argument(
        "overrides", nargs="*", metavar="key=value", help="further config overrides"
    )
    args = parser.parse_args()
    if args.naive and args.stage != "joint":
        parser.error("--naive times the joint step; drop --stage or --naive")
    if args.cache and args.stage not in ("cls", "joint"):
        parser.error(
            "--cache applies to the cls and joint stages, whose segmentation net is frozen"
        )
    return args


def build_variants(
    args: argparse.Namespace, trainer: Trainer, optimizers: dict, step, batch: dict
) -> dict:
    """The timed step functions by name: project, and naive / project_cached when asked for."""
    device, config = trainer.device, trainer.config

    def project_step() -> None:
        with trainer.autocast():
            step(trainer._batch(batch, args.stage))
        for optimizer in optimizers.values():
            trainer.scaler.step(optimizer)
            optimizer.zero_grad(set_to_none=True)
        trainer.scaler.update()

    def naive_step() -> None:
        on_device = {key: value.to(device) for key, value in batch.items()}
        naive_joint_step(trainer.model, on_device, config.loss, config.model.cam_target)
        for optimizer in optimizers.values():
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    def cached_step() -> None:
        trainer.frozen_train = frozen  # what train.py looks up for each batch in these stages
        try:
            project_step()
        finally:
            trainer.frozen_train = None

    variants = {"project": project_step}
    if args.naive:
        variants["naive"] = naive_step
    if args.cache:
        batch["index"] = torch.arange(args.batch)

        def lesion_logits(on_device: dict) -> dict:
            with trainer.autocast():
                return {
                    "lesion_logits": trainer.model.segment(
                        trainer._batch(on_device, args.stage)["hr"]
                    )
                }

        frozen = FrozenOutputs.compute([batch], lesion_logits, device)
        variants["project_cached"] = cached_step
    return variants


def time_variants(args: argparse.Namespace, trainer: Trainer, variants: dict) -> dict:
    """One result line per variant: throughput, FLOPs and peak memory of its timed steps."""
    device, config = trainer.device, trainer.config
    common = {
        "bench": "train_step",
        "stage": args.stage,
        "hr": args.hr,
        "lr": args.hr // args.scale,
        "scale": args.scale,
        "seg_width": trainer.config.model.seg_width,  # an override wins over --seg-width
        "batch": args.batch,
        **stamp(device),
    }
    lines = {}
    for name, fn in variants.items():
        reset_peak_memory(device)
        seconds = time_per_call(fn, device, args.steps, args.warmup)
        flops = count_flops(fn) / args.batch
        fast = name.startswith("project")
        lines[name] = {
            **common,
            "variant": name,
            "dtype": config.run.amp_dtype if (fast and trainer.amp_enabled) else "float32",
            "channels_last": fast and trainer.channels_last,
            "compile": fast and config.run.compile,
            **throughput_fields(args.batch, seconds, flops, device),
        }
    return lines


def add_speedups(args: argparse.Namespace, lines: dict) -> None:
    """Add speedup_vs_uncached (--cache) and speedup_vs_naive (--naive) to the lines compared."""
    if args.cache:
        lines["project_cached"]["speedup_vs_uncached"] = round(
            lines["project_cached"]["images_per_s"] / lines["project"]["images_per_s"], 2
        )
    if args.naive:
        lines["project"]["speedup_vs_naive"] = round(
            lines["project"]["images_per_s"] / lines["naive"]["images_per_s"], 2
        )


def main() -> None:
    args = parse_args()
    trainer = build_trainer(args)
    optimizers = trainer._prepare_stage(args.stage)
    step = trainer.stage_step(args.stage)
    batch = random_batch(args.batch, args.hr, args.scale)
    if trainer.device.type == "cuda":
        batch = {key: value.pin_memory() for key, value in batch.items()}
    variants = build_variants(args, trainer, optimizers, step, batch)
    lines = time_variants(args, trainer, variants)
    add_speedups(args, lines)
    for line in lines.values():
        print(json.dumps(line))


if __name__ == "__main__":
    main()
