"""predict.py's resident memory over a large folder (issue 27): one JSON line.

    python bench/predict_memory.py                          # 2,000 small photographs, the released checkpoint
    python bench/predict_memory.py --hr-size 128            # the same at a 16x smaller network input (LR 32 -> HR 128)
    python bench/predict_memory.py --n 600                  # the real input size (LR 128 -> HR 512), fewer photographs

Writes ``--n`` small generated fundus photographs (JPEG, ``--size``; a few distinct images under
different names) into a temporary folder, loads ``--checkpoint`` (default: the release) as
predict.py does and runs the same grading loop (``engine.predictor.predict``, in this process) into
a temporary --out, sampling this process's resident memory (psutil if installed, else VmRSS of
/proc/self/status) every ``--every`` photographs. Reports RSS at photograph ``--at`` (200) and at
the last one, the growth between them in percent (target: under 10 %), the range after ``--at``,
and the time per photograph. Decoding threads, panels, thumbnails, CSV and report are written as
in predict.py; the network input is the checkpoint's unless ``--hr-size`` makes it smaller (the
JSON line says which).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import stamp
from data.photo import PhotoInput
from engine.predictor import PredictSettings, predict
from engine.release import DEFAULT_RELEASE, resolve_checkpoint
from engine.runtime import configure_threads
from engine.testing import load_trained


def rss_mb() -> float:
    """This process's resident memory now, in MiB."""
    try:
        import psutil
    except ImportError:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError(
            "neither psutil nor /proc/self/status: cannot read resident memory here"
        ) from None
    return psutil.Process().memory_info().rss / 2**20


def fundus(height: int, width: int, seed: int) -> np.ndarray:
    """An orange disc with vessel-like lines and texture on black: gradable by data/quality.py."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width].astype(np.float32)
    cy, cx, radius = height / 2, width / 2, 0.45 * min(height, width)
    inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
    shade = 0.75 + 0.25 * np.cos((yy - cy) / radius * 1.3) * np.cos((xx - cx) / radius * 1.3)
    image = np.stack([200 * shade, 95 * shade, 40 * shade], axis=-1)
    image[
        np.abs(np.sin((xx - cx) / radius * (7 + seed % 5) + np.sin((yy - cy) / radius * 4) * 2))
        < 0.08
    ] *= 0.55
    image += rng.normal(0, 6, size=image.shape)
    out = np.zeros((height, width, 3), np.uint8)
    out[inside] = np.clip(image[inside], 0, 255).astype(np.uint8)
    return out


def make_photographs(
    folder: Path, count: int, size: tuple[int, int], distinct: int = 8
) -> list[PhotoInput]:
    """``count`` JPEGs named photo_00000.jpg ... cycling over ``distinct`` generated images."""
    width, height = size
    bases = [Image.fromarray(fundus(height, width, seed)) for seed in range(distinct)]
    photos = []
    for index in range(count):
        path = folder / f"photo_{index:05d}.jpg"
        bases[index % distinct].save(path, quality=90)
        photos.append(PhotoInput(path))
    return photos


def build_parser() -> argparse.ArgumentParser:
    """The command line: photograph count and size, sampling, checkpoint and predict.py options."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=2000, help="photographs (default 2000)")
    parser.add_argument(
        "--at", type=int, default=200, help="the first reading compared (default photograph 200)"
    )
    parser.add_argument(
        "--every", type=int, default=100, help="sample RSS every this many photographs"
    )
    parser.add_argument(
        "--size", default="320x240", help="photograph WIDTHxHEIGHT (default 320x240)"
    )
    parser.add_argument(
        "--checkpoint",
        default=DEFAULT_RELEASE,
        help=f"release name, checkpoint or run folder (default {DEFAULT_RELEASE})",
    )
    parser.add_argument(
        "--input", choices=("lr", "hr"), help="as predict.py --input (default: the checkpoint's)"
    )
    parser.add_argument("--no-panels", action="store_true", help="as predict.py --no-panels")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--amp", default="auto", choices=("auto", "on", "off"))
    parser.add_argument(
        "--hr-size",
        type=int,
        help="grade at this HR size instead of the checkpoint's (LR = HR / scale): the same weights and "
        "loop at a smaller network input, for a CPU too slow for --n photographs at the real size",
    )
    parser.add_argument(
        "--samples-csv",
        type=Path,
        help="also write every (photographs, rss_mb, seconds) sample here",
    )
    return parser


def run_predict(args: argparse.Namespace, model, config, size: tuple[int, int]) -> dict:
    """Grade ``--n`` generated photographs as predict.py does, sampling RSS every ``--every``."""
    with tempfile.TemporaryDirectory(prefix="deepmt_predict_memory_") as work:
        work = Path(work)
        (work / "photos").mkdir()
        photos = make_photographs(work / "photos", args.n, size)
        samples: list[tuple[int, float, float]] = []
        state = {"done": 0, "next": args.every}
        started = time.perf_counter()

        def on_progress(count: int) -> None:
            state["done"] += count
            if state["done"] >= state["next"] or state["done"] == args.n:
                samples.append((state["done"], rss_mb(), time.perf_counter() - started))
                while state["next"] <= state["done"]:
                    state["next"] += args.every

        settings = PredictSettings(
            work / "out",
            args.input,
            args.batch_size,
            False,
            args.amp,
            not args.no_panels,
            workers=args.workers,
        )
        rss_start = rss_mb()
        summary = predict(model, config, photos, settings, on_progress=on_progress)
        seconds = time.perf_counter() - started
        written = sum(1 for _ in (work / "out" / "thumbs").iterdir())
    return {
        "samples": samples,
        "summary": summary,
        "rss_start": rss_start,
        "seconds": seconds,
        "written": written,
    }


def report(args: argparse.Namespace, config, size: tuple[int, int], run: dict) -> dict:
    """The JSON line: RSS at --at and at the end, growth, range after --at, time per photograph."""
    width, height = size
    samples, seconds = run["samples"], run["seconds"]
    at = next(sample for sample in samples if sample[0] >= args.at)
    last = samples[-1]
    after = [rss for done, rss, _ in samples if done >= at[0]]
    return {
        "bench": "predict_memory",
        "photographs": args.n,
        "graded": run["summary"].graded,
        "thumbnails_written": run["written"],
        "photo_size": f"{width}x{height} JPEG q90",
        "checkpoint": args.checkpoint,
        "input": args.input or config.test.input,
        "network_input": f"HR {config.data.hr_size}"
        + (
            f" (LR {config.data.hr_size // config.data.scale})"
            if (args.input or config.test.input) == "lr"
            else ""
        ),
        "panels": not args.no_panels,
        "batch_size": args.batch_size,
        "workers": args.workers,
        "rss_mb_before": round(run["rss_start"], 1),
        "rss_mb_at": {str(at[0]): round(at[1], 1), str(last[0]): round(last[1], 1)},
        "growth_percent": round(100 * (last[1] - at[1]) / at[1], 2),
        "rss_mb_range_after_at": [round(min(after), 1), round(max(after), 1)],
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "seconds": round(seconds, 1),
        "seconds_per_photograph": round(seconds / args.n, 3),
        "load_average_1min_after": round(os.getloadavg()[0], 2),
        "rss_reader": "psutil" if _has_psutil() else "/proc/self/status VmRSS",
        **stamp(torch.device("cpu")),
    }


def write_samples_csv(path: Path, samples: list[tuple[int, float, float]]) -> None:
    """Write every (photographs, rss_mb, seconds) sample as CSV (--samples-csv)."""
    path.write_text(
        "photographs,rss_mb,seconds\n" + "".join(f"{d},{r:.1f},{s:.1f}\n" for d, r, s in samples)
    )


def main() -> int:
    parser = build_parser()
    args = parser.parse_args()
    if args.n < args.at:
        parser.error("--n must be at least --at")
    width, height = (int(side) for side in args.size.lower().split("x"))
    model, config, _ = load_trained(resolve_checkpoint(args.checkpoint), "cpu")
    if args.hr_size:
        config.data.hr_size = args.hr_size
    configure_threads(0)
    run = run_predict(args, model, config, (width, height))
    line = report(args, config, (width, height), run)
    if args.samples_csv:
        write_samples_csv(args.samples_csv, run["samples"])
    print(json.dumps(line))
    return 0


def _has_psutil() -> bool:
    try:
        import psutil  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    sys.exit(main())
