"""Saliency maps of a trained DeepMT-DR grader for fundus photographs on disk.

    python saliency/run.py --checkpoint runs/demo/checkpoints/best.pt --images photos/ --out visualization_result/mine
    python saliency/run.py --checkpoint CKPT --images a.png b.jpg --methods gradcam,ig --target any_dr
    python saliency/run.py --checkpoint CKPT --images photos/ --input hr --layer grader.layer3

Each photograph is decoded, cropped to its field of view and resized to the HR size as predict.py
and the training cache do, and graded by the one inferer (engine/inference.py): --input lr
(default) degrades it to the LR input as in training, super-resolves it and explains the grader on
the SR image; --input hr explains the grader on the HR square.
Writes, per image, <out>/<name>/input.png (the image the grader saw), <method>.png (RGB overlay)
and <method>.npy (raw map, float32 HxW; signed for ig and occlusion; overlays of pixel-level maps
are saturated at their 99th percentile), and for all images
<out>/summary.csv and <out>/contact_sheet.png. Conventions: saliency/README.md.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
from tqdm import tqdm

from data.photo import prepare_photo, read_photo
from data.prepare import resize_square
from data.records import DataError
from engine.cli import run_cli
from engine.config import ConfigError
from engine.inference import Inferer
from engine.loading import load_trained
from saliency.adapters import SaliencyError, default_input, for_deepmt_dr, target_label
from saliency.methods import (
    PIXEL_METHODS,
    TITLES,
    Options,
    display_map,
    ig_completeness_error,
    parse_methods,
    raw_saliency,
)
from saliency.overlay import (
    ROWS_PER_SHEET,
    SheetRow,
    contact_sheet,
    overlay,
    saturate,
    sheet_name,
    to_rgb_array,
    write_rgb_png,
)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".ppm")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--checkpoint",
        required=True,
        help="DeepMT-DR checkpoint (e.g. runs/demo/checkpoints/best.pt)",
    )
    parser.add_argument(
        "--images", nargs="+", required=True, help="image files and/or folders of images"
    )
    parser.add_argument(
        "--methods",
        default="all",
        help="comma-separated, or all (default): gradcam, gradcampp, "
        "guided_backprop, guided_gradcam, ig, smoothgrad, occlusion",
    )
    parser.add_argument("--out", default="visualization_result/saliency", help="output folder")
    parser.add_argument(
        "--target",
        default="predicted",
        help="predicted (default), any_dr, or a grade 0..C-1: the score each map explains",
    )
    parser.add_argument("--layer", help="layer of the Grad-CAM family (default grader.layer4)")
    parser.add_argument(
        "--input",
        choices=("lr", "hr"),
        help="lr: explain the grader on the SR image of the LR-resized photograph; hr: on the "
        "photograph resized to the HR size (default: how the checkpoint's run is tested, else lr)",
    )
    parser.add_argument(
        "--size", type=int, help="HR side in pixels (default: the checkpoint's data.hr_size)"
    )
    parser.add_argument(
        "--no-crop", action="store_true", help="images are already cropped to the field of view"
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--ig-steps",
        type=int,
        default=Options.ig_steps,
        help="integrated gradients nodes (default 32), doubled for images whose completeness error "
        "exceeds 1 %% up to --ig-max-steps",
    )
    parser.add_argument(
        "--ig-max-steps", type=int, default=Options.ig_max_steps, help="default 256"
    )
    parser.add_argument("--smoothgrad-samples", type=int, default=Options.smoothgrad_samples)
    parser.add_argument(
        "--occlusion-window",
        type=float,
        default=Options.occlusion_window,
        help="occlusion window side as a fraction of the image side (default 1/8)",
    )
    parser.add_argument(
        "--occlusion-stride",
        type=float,
        default=Options.occlusion_stride,
        help="occlusion stride as a fraction of the image side (default 1/16)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def find_images(paths: list[str]) -> list[Path]:
    """Files as given, folders expanded to their image files (sorted); DataError if none or missing."""
    found: list[Path] = []
    for text in paths:
        path = Path(text)
        if path.is_dir():
            images = sorted(
                p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
            )
            if not images:
                raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in folder {path}")
            found += images
        elif path.is_file():
            found.append(path)
        else:
            raise DataError(f"image not found: {path}")
    return found


def load_fundus(path: Path, side: int, crop: bool = True) -> torch.Tensor:
    """A photograph -> ``[3,side,side]`` uint8 RGB at the HR size, decoded and FOV-cropped exactly
    as predict.py and the training cache do (data/decode.py, data/photo.py)."""
    image, size = read_photo(path)
    if crop:
        prepared = prepare_photo(image, side, size)
        if prepared.hr is None:
            raise DataError(
                f"{path}: no field of view found (pass --no-crop for images already cropped)"
            )
        square = prepared.hr
    elif image.shape[0] != image.shape[1]:
        raise DataError(
            f"{path}: --no-crop needs square images, got {image.shape[1]}x{image.shape[0]}"
        )
    else:
        square = resize_square(image, side)
    return torch.from_numpy(np.ascontiguousarray(square.transpose(2, 0, 1)))


def unique_names(paths: list[Path]) -> list[str]:
    """File stems, suffixed ``_2``, ``_3`` ... where two images share one."""
    names, seen = [], {}
    for path in paths:
        count = seen[path.stem] = seen.get(path.stem, 0) + 1
        names.append(path.stem if count == 1 else f"{path.stem}_{count}")
    return names


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(get_args_parser().parse_args(argv))
    except (
        SaliencyError
    ) as error:  # a bad method, layer or target name: a user error like the others
        raise ConfigError(str(error)) from error


def _check_args(args: argparse.Namespace) -> None:
    """The numeric options' ranges, before any work (a one-line ConfigError otherwise)."""
    if (
        args.batch_size <= 0
        or (args.size is not None and args.size <= 0)
        or min(args.ig_steps, args.smoothgrad_samples) <= 0
    ):
        raise ConfigError(
            "--batch-size, --size, --ig-steps and --smoothgrad-samples must be positive"
        )
    if not (0 < args.occlusion_stride <= args.occlusion_window <= 1):
        raise ConfigError("occlusion needs 0 < --occlusion-stride <= --occlusion-window <= 1")


def _write_maps(folder: Path, image: torch.Tensor, maps: dict, index: int) -> list:
    """One image's input.png and, per method, its raw map (.npy) and overlay (.png); the panels."""
    write_rgb_png(folder / "input.png", np.round(to_rgb_array(image) * 255).astype(np.uint8))
    panels = []
    for method, raw in maps.items():
        np.save(folder / f"{method}.npy", raw[index, 0].cpu().numpy().astype(np.float32))
        shown = display_map(raw[index : index + 1])[0]
        rgb = overlay(image, saturate(shown) if method in PIXEL_METHODS else shown)
        write_rgb_png(folder / f"{method}.png", rgb)
        panels.append((TITLES[method], rgb))
    return panels


def _summary_row(name: str, path: Path, predicted: int, label: str, probs, ig_error) -> dict:
    return {
        "image": name,
        "path": str(path),
        "predicted": predicted,
        "target": label,
        **{f"p{c}": f"{float(p):.4f}" for c, p in enumerate(probs)},
        **({"ig_completeness_error": f"{float(ig_error):.4f}"} if ig_error is not None else {}),
    }


def _main(args: argparse.Namespace) -> int:
    methods = parse_methods(args.methods)
    _check_args(args)
    paths = find_images(args.images)
    model, config, _ = load_trained(args.checkpoint, args.device)
    explained = for_deepmt_dr(model)
    layer = args.layer or explained.default_layer
    explained.layer(layer)
    explained.targets(torch.zeros(1, config.data.num_classes + 1), args.target)  # check it now
    mode = args.input or default_input(config)
    scale = model.isr.scale
    side = args.size or config.data.hr_size
    if mode == "lr" and side % scale:
        raise ConfigError(f"--size {side} must be divisible by the model's SR scale {scale}")
    images = [load_fundus(path, side, crop=not args.no_crop) for path in paths]  # read up front
    # The one inferer (engine/inference.py) makes the graded image: LR degraded from the HR square
    # as in training, then super-resolved (--input lr); fp32, as the saliency methods need.
    inferer = Inferer(model, config, mode, amp=False)
    options = Options(
        ig_steps=args.ig_steps,
        ig_max_steps=args.ig_max_steps,
        smoothgrad_samples=args.smoothgrad_samples,
        occlusion_window=args.occlusion_window,
        occlusion_stride=args.occlusion_stride,
    )
    out, names, num_classes = Path(args.out), unique_names(paths), config.data.num_classes
    title = f"{Path(args.checkpoint).name}, input {mode}, layer {layer}"
    rows, sheets, summary = [], [], []
    batches = range(0, len(images), args.batch_size)
    for start in batches if args.quiet else tqdm(batches, desc="saliency", unit="batch"):
        result = inferer(hr=torch.stack(images[start : start + args.batch_size]))
        image = result.image.clamp(0, 1)
        with torch.no_grad():
            scores = explained(image)
        target = explained.targets(scores, args.target)
        maps = {
            method: raw_saliency(explained, image, method, target, layer, options)
            for method in methods
        }
        ig_error = (
            ig_completeness_error(explained, image, target, maps["ig"]) if "ig" in maps else None
        )
        probs = result.probabilities
        for i, name in enumerate(names[start : start + len(image)]):
            panels = _write_maps(out / name, image[i], maps, i)
            predicted = int(result.grades[i])
            label = target_label(int(target[i]), num_classes)
            caption = (
                f"{name}\npredicted {predicted} (p={float(probs[i, predicted]):.2f}), map: {label}"
            )
            rows.append(SheetRow(caption, to_rgb_array(image[i]), panels))
            error = ig_error[i] if ig_error is not None else None
            summary.append(_summary_row(name, paths[start + i], predicted, label, probs[i], error))
            if len(rows) == ROWS_PER_SHEET or start + i + 1 == len(images):  # bounded memory
                sheets.append(contact_sheet(out / sheet_name(len(sheets) + 1), rows, title))
                rows = []
    with (out / "summary.csv").open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(summary[0]))
        writer.writeheader()
        writer.writerows(summary)
    sheet_names = ", ".join(p.name for p in sheets)
    print(f"{len(paths)} images x {len(methods)} methods -> {out} ({sheet_names}, summary.csv)")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
