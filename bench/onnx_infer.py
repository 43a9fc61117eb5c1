"""ONNX Runtime vs PyTorch eager on the CPU, the same batch through the same inference path: one JSON line.

    python bench/onnx_infer.py                                  # the release size: LR 128 -> HR 512, batch 4
    python bench/onnx_infer.py --hr 128 --batch 8 --steps 5     # smaller, faster
    python bench/onnx_infer.py --ort-opt basic --threads 1      # graph optimisation, threads

A randomly initialised model of ``--config`` (default configs/idrid_small.yaml, the release's
architecture) is saved as a checkpoint and exported to ONNX by ``engine.deploy_export`` (what
``python -m engine.export --format onnx`` writes). Then, on one random LR batch: PyTorch eager
through engine.inference.Inferer in fp32 (what predict.py runs with ``--amp off``), ONNX Runtime
through engine.onnx_inferer.OnnxInferer (predict.py on the .onnx file), and, for information,
PyTorch with bf16 autocast and channels-last (``--amp on``; emulated, hence slow, on a CPU
without bf16 units). No TTA. Both runtimes use the same number of intra-op threads. Times are
medians of single calls taken in turn (see :func:`interleaved_seconds`).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import stamp
from engine.builders import build_model
from engine.checkpoint import save_checkpoint
from engine.config import load_config
from engine.deploy_export import export_deployment
from engine.inference import Inferer
from engine.onnx_inferer import OPTIMIZATION_LEVELS, OnnxInferer, load_deployed
from engine.runtime import configure_threads


def interleaved_seconds(runs: dict, lr: torch.Tensor, steps: int, warmup: int) -> dict[str, float]:
    """Median seconds per call of each inferer, their calls taken in turn (``warmup`` each first):
    on a shared machine a burst of other work then slows all of them alike, not one."""
    for inferer in runs.values():
        for _ in range(warmup):
            inferer(lr=lr)
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(steps):
        for name, inferer in runs.items():
            started = time.perf_counter()
            inferer(lr=lr)
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default="configs/idrid_small.yaml")
    parser.add_argument("--hr", type=int, default=512, help="HR size (the release: 512)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=5, help="timed calls of each")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument(
        "--threads", type=int, default=0, help="intra-op threads of both (0: every CPU)"
    )
    parser.add_argument(
        "--ort-opt",
        help="ONNX Runtime's graph optimisation level",
        choices=list(OPTIMIZATION_LEVELS),
        default="all",
    )
    parser.add_argument("--no-bf16", action="store_true", help="skip the bf16 autocast line")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args()

    threads = configure_threads(args.threads)
    device = torch.device("cpu")
    # The architecture of --config; the data it names is not read (a random model).
    config = load_config(
        args.config, ["data.dataset=synthetic", f"data.hr_size={args.hr}", *args.overrides]
    )
    torch.manual_seed(0)
    model = build_model(config).eval()
    scale = config.data.scale
    lr = torch.rand(args.batch, 3, args.hr // scale, args.hr // scale)
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = save_checkpoint(
            {"config": config.to_dict(), "model": model.state_dict()}, Path(folder) / "random.pt"
        )
        started = time.perf_counter()
        exported = export_deployment(checkpoint, Path(folder) / "random.onnx")
        export_seconds = time.perf_counter() - started
        deployed = load_deployed(exported.path, threads, args.ort_opt)
        runs = {
            "pytorch_eager_fp32": Inferer(model, config, "lr", amp=False),
            "onnxruntime_fp32": OnnxInferer(deployed),
        }
        if not args.no_bf16:  # a copy: channels-last would change the fp32 model's layout
            runs["pytorch_eager_bf16_autocast"] = Inferer(
                copy.deepcopy(model), config, "lr", amp=True
            )
        seconds = interleaved_seconds(runs, lr, args.steps, args.warmup)
        eager, ort = runs["pytorch_eager_fp32"](lr=lr), runs["onnxruntime_fp32"](lr=lr)
    eager_ips = args.batch / seconds["pytorch_eager_fp32"]
    print(
        json.dumps(
            {
                "bench": "onnx_infer",
                "config": args.config,
                "hr": args.hr,
                "lr": args.hr // scale,
                "batch": args.batch,
                "steps": args.steps,
                **stamp(device),
                "onnxruntime": deployed.runtime,
                "threads": threads,
                **{f"{name}_images_per_s": round(args.batch / s, 3) for name, s in seconds.items()},
                "onnxruntime_vs_eager_fp32": round(
                    args.batch / seconds["onnxruntime_fp32"] / eager_ips, 3
                ),
                "max_probability_difference": float(
                    (ort.probabilities - eager.probabilities).abs().max()
                ),
                "grades_equal": bool(torch.equal(ort.grades, eager.grades)),
                "onnx_mb": round(exported.bytes / 2**20, 1),
                "export_seconds": round(export_seconds, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
