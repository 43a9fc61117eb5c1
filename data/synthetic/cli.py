"""``python -m data.synthetic``: write the synthetic dataset to disk (images, masks, FOV, labels CSV)."""

from __future__ import annotations

import argparse
import csv
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from data.cli import OneLineParser, run
from data.records import LESIONS, DataError
from data.synthetic.dataset import SyntheticFundus
from data.synthetic.grading import COUNT_KEYS
from data.synthetic.render import render_sample


def _parse_class_mix(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in text.split(","))
    except ValueError as error:
        raise argparse.ArgumentTypeError(
            f"--class-mix must be comma-separated numbers, got {text!r}"
        ) from error


def _build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="python -m data.synthetic",
        description="Write the embedded synthetic fundus dataset to disk.",
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--n", type=int, required=True, help="number of images")
    parser.add_argument("--size", type=int, default=1024, help="HR side in pixels")
    parser.add_argument(
        "--scale", type=int, default=4, help="SR scale the size must be divisible by"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split", default="train", help="train, val or test")
    parser.add_argument(
        "--class-mix", type=_parse_class_mix, default=None, help="5 weights, e.g. 1,1,1,1,1"
    )
    parser.add_argument("--backgrounds", default="all", help="all or retina")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing labels.csv")
    return parser


def _write_png(path: Path, array: np.ndarray) -> None:
    if not cv2.imwrite(str(path), array):
        raise DataError(f"could not write {path}")


def write_dataset(
    out: Path,
    n: int,
    size: int,
    scale: int,
    seed: int,
    split: str,
    class_mix: Sequence[float] | None,
    backgrounds: str,
    overwrite: bool,
) -> Path:
    """Render ``n`` samples to ``out`` (images/, masks/, fov/, labels.csv); returns the labels path."""
    SyntheticFundus(split, n, size, scale, seed, class_mix, backgrounds)  # validates every argument
    labels = out / "labels.csv"
    if labels.exists() and labels.stat().st_size > 0 and not overwrite:
        raise DataError(f"{labels} exists; pass --overwrite to replace it")
    for folder in ("images", "masks", "fov"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    rows = []
    for index in tqdm(range(n), desc=f"synthetic {split}", unit="img"):
        sample = render_sample(seed, split, index, size, class_mix, backgrounds)
        image_path = Path("images") / f"{sample.id}.png"
        _write_png(out / image_path, cv2.cvtColor(sample.image, cv2.COLOR_RGB2BGR))
        for name, mask in zip(LESIONS, sample.masks):
            _write_png(out / "masks" / f"{sample.id}_{name}.png", mask.astype(np.uint8) * 255)
        _write_png(out / "fov" / f"{sample.id}.png", sample.fov.astype(np.uint8) * 255)
        rows.append(
            [
                sample.id,
                sample.grade,
                image_path.as_posix(),
                *(sample.lesion_counts[k] for k in COUNT_KEYS),
            ]
        )
    with labels.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "grade", "image", *COUNT_KEYS])
        writer.writerows(rows)
    return labels


def _main(argv: Sequence[str] | None) -> int:
    args = _build_parser().parse_args(argv)
    labels = write_dataset(
        args.out,
        args.n,
        args.size,
        args.scale,
        args.seed,
        args.split,
        args.class_mix,
        args.backgrounds,
        args.overwrite,
    )
    print(f"wrote {args.n} samples to {labels}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit code (2 for bad arguments or refused overwrite)."""
    return run("python -m data.synthetic", _main, argv)
