"""One joint training step and one inference pass at the paper's sizes (LR 256 -> HR 1024,
segmentation width 4): seconds and peak memory, one JSON line, so that a user's first GPU run
is not the first time this code sees 1024 px.

    python bench/paper_size.py                                  # configs/paper.yaml, batch 2, CPU
    python bench/paper_size.py --batch 1 model.seg_checkpoint=true
    python bench/paper_size.py --device cuda                    # a GPU

The step is train.py's joint step (``Trainer.step_joint``, Adam included) on a random batch,
with the frozen segmentation net's HR lesion maps cached as train.py caches them
(``train.cache_frozen``; the seconds that takes are reported apart). Before the full step the
same step runs, each in a fresh process, at 1/8 and 1/4 of the size; their peaks, extrapolated
linearly in pixels, estimate the full step's peak. If that estimate exceeds the memory available to this process
(MemAvailable and the cgroup limit, or the GPU's free memory), the script stops with one line
and exit code 2 instead of being killed by the kernel. Peak memory is the process's peak
resident set on a CPU, the allocator's peak on a GPU.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import peak_memory_gb, reset_peak_memory, stamp, synchronize
from bench.train_step import random_batch
from engine.config import load_config
from engine.frozen_cache import FrozenOutputs
from engine.trainer import Trainer


def available_memory_gb(device: torch.device) -> float:
    """Memory this process can still take: free GPU memory, or MemAvailable capped by the cgroup limit."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free / 2**30
    available = float("inf")
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) / 2**20
    limit, usage = Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory.current")
    if limit.is_file() and usage.is_file() and limit.read_text().strip() != "max":
        available = min(available, (int(limit.read_text()) - int(usage.read_text())) / 2**30)
    return available


class JointStep:
    """train.py's joint step at one size, with the HR lesion maps cached once."""

    def __init__(self, overrides: list[str], hr: int, scale: int, batch: int) -> None:
        self.trainer = Trainer(
            load_config(
                "configs/paper.yaml", [f"data.hr_size={hr}", f"data.scale={scale}", *overrides]
            )
        )
        self.trainer.class_weights = None  # random batches: no dataset
        self.trainer.crop_generator = torch.Generator().manual_seed(0)
        self.optimizers = self.trainer._prepare_stage("joint")
        self.batch = random_batch(batch, hr, scale)
        self.batch["index"] = torch.arange(batch)
        self.cache_seconds = 0.0
        self.trainer.frozen_train = None
        if self.trainer.config.train.cache_frozen:
            started = time.perf_counter()
            self.trainer.frozen_train = FrozenOutputs.compute(
                [self.batch], self._hr_lesions, self.trainer.device
            )
            synchronize(self.trainer.device)
            self.cache_seconds = time.perf_counter() - started

    def _hr_lesions(self, batch: dict) -> dict:
        with self.trainer.autocast():
            return {
                "lesion_logits": self.trainer.model.segment(
                    self.trainer._batch(batch, "joint")["hr"]
                )
            }

    def __call__(self) -> float:
        trainer = self.trainer
        synchronize(trainer.device)
        started = time.perf_counter()
        with trainer.autocast():
            trainer.step_joint(trainer._batch(self.batch, "joint"))
        for optimizer in self.optimizers.values():
            trainer.scaler.step(optimizer)
            optimizer.zero_grad(set_to_none=True)
        trainer.scaler.update()
        synchronize(trainer.device)
        return time.perf_counter() - started

    def infer(self) -> float:
        """LR -> SR -> lesion maps -> grade of the batch, as test.py evaluates."""
        trainer = self.trainer
        lr = self.batch["lr"].to(trainer.device)
        trainer.model.eval()
        synchronize(trainer.device)
        started = time.perf_counter()
        with torch.inference_mode(), trainer.autocast():
            trainer.model(lr)
        synchronize(trainer.device)
        return time.perf_counter() - started


def probe_peak_gb(args: argparse.Namespace, hr: int) -> float:
    """Peak memory of the same step at HR ``hr``, in a fresh process (a clean peak)."""
    command = [
        sys.executable,
        __file__,
        "--probe",
        "--hr",
        str(hr),
        "--scale",
        str(args.scale),
        "--batch",
        str(args.batch),
        "--device",
        args.device,
        *args.overrides,
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(
            f"error: the HR {hr} probe step failed: {done.stderr.strip().splitlines()[-1:]}"
        )
    return json.loads(done.stdout.strip().splitlines()[-1])["peak_memory_gb"]


def estimate_peak_gb(args: argparse.Namespace) -> float:
    """Peak memory at HR ``args.hr``, extrapolated linearly in pixels from two probe steps at
    HR/8 and HR/4 (weights and optimiser state are the constant, activations the slope)."""
    small, large = args.hr // 8, args.hr // 4
    peak_small, peak_large = probe_peak_gb(args, small), probe_peak_gb(args, large)
    slope = max(0.0, (peak_large - peak_small) / (large**2 - small**2))
    return peak_large + slope * (args.hr**2 - large**2)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--hr", type=int, default=1024, help="HR size (paper: 1024)")
    parser.add_argument("--scale", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--no-estimate", action="store_true", help="skip the memory estimate and run the full step"
    )
    parser.add_argument(
        "--probe", action="store_true", help=argparse.SUPPRESS
    )  # one step only, for the estimate
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="further config overrides of configs/paper.yaml",
    )
    args = parser.parse_args()
    overrides = [f"run.device={args.device}", "model.grader_dropout=0", *args.overrides]
    device = torch.device(args.device)

    estimate = None
    if not (args.probe or args.no_estimate):
        estimate = estimate_peak_gb(args)
        available = available_memory_gb(device)
        if estimate > 0.9 * available:
            print(
                f"error: a joint step at HR {args.hr}, batch {args.batch} needs about {estimate:.1f} GB "
                f"(extrapolated from HR {args.hr // 8} and {args.hr // 4}), but {available:.1f} GB is available on "
                f"{device}; try --batch 1, model.seg_checkpoint=true, or a GPU",
                file=sys.stderr,
            )
            return 2

    reset_peak_memory(device)
    step = JointStep(overrides, args.hr, args.scale, args.batch)
    step_seconds = step()
    infer_seconds = None if args.probe else step.infer()
    trainer = step.trainer
    print(
        json.dumps(
            {
                "bench": "paper_size",
                "hr": args.hr,
                "lr": args.hr // args.scale,
                "seg_width": trainer.config.model.seg_width,
                "batch": args.batch,
                **stamp(device),
                "dtype": trainer.config.run.amp_dtype if trainer.amp_enabled else "float32",
                "channels_last": trainer.channels_last,
                "seg_checkpoint": trainer.config.model.seg_checkpoint,
                "joint_step_s": round(step_seconds, 2),
                "lesion_cache_s": round(step.cache_seconds, 2),
                "infer_s": None if infer_seconds is None else round(infer_seconds, 2),
                "peak_memory_gb": round(peak_memory_gb(device), 2),
                "estimated_peak_gb": None if estimate is None else round(estimate, 2),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
