"""Preprocessing throughput: full-size 4288x2848 fundus JPEGs (IDRiD's camera) to the HR cache.

Run from the repository root:
    python bench/bench_prepare.py [--n 24] [--workers 2] [--size 1024]

The source images are the shared IDRiD photographs (``../shared/data/idrid``) upscaled back to
4288x2848 and saved as JPEG quality 95 (about the release's file size), or rendered embedded-dataset
fundi when the shared data is absent. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.machine import cpu_name
from data.prepare import prepare
from data.synthetic import render_sample

SHARED_IDRID = (
    ROOT.parent
    / "shared"
    / "data"
    / "idrid"
    / "B. Disease Grading"
    / "1. Original Images"
    / "a. Training Set"
)
WIDTH, HEIGHT = 4288, 2848


def source_images(n: int) -> list[np.ndarray]:
    """``n`` BGR images at 4288x2848."""
    paths = sorted(SHARED_IDRID.glob("*.jpg"))[:n]
    images = [cv2.imread(str(path), cv2.IMREAD_COLOR) for path in paths]
    while len(images) < n:  # no shared data: rendered fundi on a black 3:2 canvas
        fundus = render_sample(0, "bench", len(images), 1024).image[:, :, ::-1]
        canvas = np.zeros((1024, 1536, 3), np.uint8)
        canvas[:, 256:1280] = fundus
        images.append(canvas)
    return [cv2.resize(image, (WIDTH, HEIGHT), interpolation=cv2.INTER_CUBIC) for image in images]


def write_dataset(folder: Path, n: int) -> Path:
    rows = ["image,grade"]
    for index, image in enumerate(source_images(n)):
        name = f"images/fundus_{index:03d}.jpg"
        (folder / "images").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / name), image, [cv2.IMWRITE_JPEG_QUALITY, 95])
        rows.append(f"{name},{index % 5}")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    return folder / "labels.csv"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=24, help="images")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--keep", type=Path, help="keep the cache here (e.g. for bench/loader.py)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        labels = write_dataset(Path(scratch) / "source", args.n)
        megabytes = (
            sum(path.stat().st_size for path in (Path(scratch) / "source" / "images").iterdir())
            / 1e6
        )
        out = args.keep or Path(scratch) / "cache"
        start = time.perf_counter()
        report = prepare("csv", labels, out, size=args.size, workers=args.workers)
        seconds = time.perf_counter() - start
    print(
        json.dumps(
            {
                "bench": "prepare",
                "machine": cpu_name(),
                "source": f"{WIDTH}x{HEIGHT} JPEG q95, {megabytes / args.n:.2f} MB each",
                "size": args.size,
                "workers": args.workers,
                "images": report.written,
                "seconds": round(seconds, 2),
                "images_per_s": round(report.written / seconds, 2),
                "s_per_image_per_worker": round(seconds * args.workers / report.written, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
