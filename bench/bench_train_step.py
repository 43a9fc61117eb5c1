"""Time per image of each training stage's step, on random tensors (no data loading).

    python bench/bench_train_step.py                          # the demo's sizes (HR 128, x4)
    python bench/bench_train_step.py --config configs/paper.yaml --batch 2 --steps 5

Uses the same Trainer step functions as train.py, so what is timed is what trains.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from engine.config import STAGES, load_config
from engine.trainer import Trainer


def random_batch(batch: int, hr: int, scale: int) -> dict:
    masks = (torch.rand(batch, 4, hr, hr) > 0.99).float()
    return {
        "hr": torch.rand(batch, 3, hr, hr),
        "lr": torch.rand(batch, 3, hr // scale, hr // scale),
        "masks": masks,
        "mask_valid": torch.ones(batch, 4, dtype=torch.bool),
        "fov": torch.ones(batch, 1, hr, hr),
        "grade": torch.randint(0, 5, (batch,)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    config = load_config(args.config, args.overrides)
    trainer = Trainer(config)
    trainer.class_weights = None  # no dataset is built: the batches are random
    trainer.crop_generator = torch.Generator().manual_seed(0)
    batch = random_batch(args.batch, config.data.hr_size, config.data.scale)
    print(f"device {trainer.device}, threads {torch.get_num_threads()}, HR {config.data.hr_size}, x{config.data.scale}, "
          f"batch {args.batch}, crop {config.data.crop_size} (isr/seg)")
    for stage in STAGES:
        optimizers = trainer._prepare_stage(stage)
        step = getattr(trainer, f"step_{stage}")

        def run_step() -> None:
            with trainer.autocast():
                step(trainer._batch(batch, stage))
            for optimizer in optimizers.values():
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)

        run_step()  # warm-up
        if trainer.device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(args.steps):
            run_step()
        if trainer.device.type == "cuda":
            torch.cuda.synchronize()
        per_image = (time.perf_counter() - started) / args.steps / args.batch
        print(f"{stage:6s} {per_image * 1000:8.1f} ms/image  ({1 / per_image:7.1f} images/s)")


if __name__ == "__main__":
    main()
