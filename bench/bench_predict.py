"""predict.py throughput and memory on full-size fundus JPEGs: one JSON line.

    python bench/bench_predict.py --n 200                     # 4288x2848 JPEGs, idrid_small architecture
    python bench/bench_predict.py --n 50 --extra=--amp=off     # fp32 instead of auto (bf16 on AVX-512 BF16 / AMX)

Makes ``--n`` 4288x2848 JPEGs (quality 95, IDRiD's camera size) by upscaling the shared IDRiD
photographs (``--source``, cycled; kept in ``--images`` for reruns), builds a random-weight model
of ``--config``'s architecture at its real input size and exports it as a release (float16 on
disk, like the released file), then times the whole ``python predict.py FOLDER`` command: decode,
FOV crop, quality, grading, Grad-CAM, panels, CSV and report. Peak RSS is the predict process's
(and its decoding workers', the largest of them) ``ru_maxrss``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

import cv2
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import ROOT, stamp
from engine.builders import build_model
from engine.checkpoint import save_checkpoint
from engine.config import load_config
from engine.export import export_release

FULL_SIZE = (4288, 2848)  # width, height of IDRiD's camera frames
DEFAULT_SOURCE = (
    ROOT.parent
    / "shared"
    / "data"
    / "idrid"
    / "B. Disease Grading"
    / "1. Original Images"
    / "a. Training Set"
)


def make_images(source: Path, folder: Path, count: int) -> list[Path]:
    """``count`` full-size JPEGs upscaled (bicubic) from the photographs in ``source``, cycled."""
    originals = sorted(source.glob("*.jpg"))
    if not originals:
        raise SystemExit(f"no JPEGs in {source} (--source)")
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        path = folder / f"full_{index:04d}.jpg"
        if not path.is_file():
            image = cv2.imread(str(originals[index % len(originals)]))
            cv2.imwrite(
                str(path),
                cv2.resize(image, FULL_SIZE, interpolation=cv2.INTER_CUBIC),
                [cv2.IMWRITE_JPEG_QUALITY, 95],
            )
        paths.append(path)
    return paths


def random_release(config_path: str, folder: Path) -> Path:
    """A random-weight model of the preset's architecture, exported like a release."""
    config = load_config(config_path, ["data.root=unused", "run.name=bench_predict"])
    torch.manual_seed(0)
    model = build_model(config)
    raw = save_checkpoint(
        {"config": config.to_dict(), "model": model.state_dict(), "stage": "joint", "epoch": 0},
        folder / "random.pt",
    )
    return export_release(raw, folder / "bench_random.pt").path


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--config", default="configs/idrid_small.yaml")
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--images", type=Path, default=Path("/tmp/deepmt_bench_predict/images"))
    parser.add_argument("--work", type=Path, default=Path("/tmp/deepmt_bench_predict"))
    parser.add_argument(
        "--extra", default="", help="more predict.py options, e.g. --extra='--amp off --no-panels'"
    )
    args = parser.parse_args()
    images = make_images(args.source, args.images / str(args.n), args.n)
    checkpoint = random_release(args.config, args.work)
    out = args.work / f"out_{args.n}"
    command = [
        sys.executable,
        str(ROOT / "predict.py"),
        str(images[0].parent),
        "--checkpoint",
        str(checkpoint),
        "--out",
        str(out),
        "--quiet",
        *shlex.split(args.extra),
    ]
    started = time.perf_counter()
    result = subprocess.run(
        command,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        print(result.stdout, result.stderr, file=sys.stderr)
        return result.returncode
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    inner = float(
        result.stdout.split(" in ")[1].split(" s")[0]
    )  # "graded N of N photographs (...) in X s"
    line = {
        "bench": "predict",
        "images": args.n,
        "image_size": f"{FULL_SIZE[0]}x{FULL_SIZE[1]} JPEG q95",
        "config": args.config,
        "options": args.extra,
        "wall_s": round(seconds, 1),
        "images_per_s_wall": round(args.n / seconds, 3),
        "images_per_s_grading": round(args.n / inner, 3),
        "peak_rss_gb": round(usage.ru_maxrss / 2**20, 2),
        # CPU time is what the load of other jobs does not stretch: 2 idle cores give at most 2 / this.
        "cpu_s_per_image": round((usage.ru_utime + usage.ru_stime) / args.n, 3),
        "load_average_1min_after": round(os.getloadavg()[0], 2),
        "checkpoint_mb": round(checkpoint.stat().st_size / 2**20, 1),
        **stamp(torch.device("cpu")),
    }
    print(json.dumps(line))
    return 0


if __name__ == "__main__":
    sys.exit(main())
