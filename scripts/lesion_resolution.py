"""What resolution each lesion type needs, measured on a dataset's masks (docs/RESULTS.md, issue 14).

    python scripts/lesion_resolution.py                                   # IDRiD, sizes 128..1024
    python scripts/lesion_resolution.py --sizes 256,512 --lesions MA

For every annotated image: crop to the FOV square as the cache does, then per lesion the share of
its green-channel contrast that survives the image at each size (evaluation/lesion_resolution.py).
Prints a markdown table of median (and quartile) retention per lesion type and size, with the
median lesion diameter at each size.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from data.datasets import load_index
from data.datasets.base import read_image
from data.fundus import crop_to_fov_square
from data.prepare import read_masks
from data.records import LESIONS, DataError
from engine.cli import run_cli
from evaluation.lesion_resolution import contrast_retention


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", default="idrid")
    parser.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data" / "idrid"))
    parser.add_argument(
        "--sizes", default="128,256,512,1024", help="comma list of square image sizes"
    )
    parser.add_argument(
        "--lesions", default="MA,HE,EX,SE", help=f"comma list of {', '.join(LESIONS)}"
    )
    args = parser.parse_args(argv)
    try:
        args.sizes = [int(part) for part in args.sizes.split(",")]
    except ValueError:
        parser.error(f"--sizes must be a comma list of integers, got {args.sizes!r}")
    args.lesions = [part.strip() for part in args.lesions.split(",")]
    unknown = [name for name in args.lesions if name not in LESIONS]
    if unknown or any(size < 8 for size in args.sizes):
        parser.error(
            f"--lesions must name {', '.join(LESIONS)} and --sizes be at least 8, got {unknown or args.sizes}"
        )
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    records = [
        record
        for record in load_index(args.dataset, args.data_root).records
        if any(record.mask_valid)
    ]
    if not records:
        raise DataError(f"{args.data_root}: no {args.dataset} image has lesion masks")
    chosen = [LESIONS.index(name) for name in args.lesions]
    ratios = {name: {size: [] for size in args.sizes} for name in args.lesions}
    widths = {name: [] for name in args.lesions}
    sides = []
    for record in records:
        image = read_image(record.image)
        square, square_masks, fov = crop_to_fov_square(image, read_masks(record, image.shape[:2]))
        square_masks = np.asarray(square_masks, dtype=bool)
        sides.append(square.shape[0])
        background = fov & ~square_masks.any(axis=0)
        for index in chosen:
            name = LESIONS[index]
            if not record.mask_valid[index] or not square_masks[index].any():
                continue
            for size, values in contrast_retention(
                square[..., 1], square_masks[index], background, args.sizes
            ).items():
                ratios[name][size].extend(values.tolist())
            labels, _ = ndimage.label(square_masks[index], structure=np.ones((3, 3), dtype=bool))
            widths[name].extend(
                2 * np.sqrt(np.bincount(labels.ravel())[1:] / np.pi)
            )  # equivalent diameters
    side = float(np.median(sides))
    print(
        f"{len(records)} images with masks, FOV square median {side:.0f} px; contrast kept at each size, "
        "median [quartiles] over lesions"
    )
    print(
        "| lesion | lesions | median diameter | "
        + " | ".join(f"{size} px" for size in args.sizes)
        + " |"
    )
    print("|---|---|---|" + "---|" * len(args.sizes))
    for name in args.lesions:
        if not widths[name]:
            continue
        diameter = float(np.median(widths[name]))
        cells = []
        for size in args.sizes:
            kept = np.asarray(ratios[name][size])
            if (
                kept.size == 0
            ):  # every lesion of this type too faint or without background around it
                cells.append("n/a")
                continue
            cells.append(
                f"{np.median(kept):.0%} [{np.quantile(kept, 0.25):.0%}, {np.quantile(kept, 0.75):.0%}], "
                f"{diameter * size / side:.1f} px wide"
            )
        print(
            f"| {name} | {len(ratios[name][args.sizes[0]])} | {diameter:.1f} px at {side:.0f} | "
            + " | ".join(cells)
            + " |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
