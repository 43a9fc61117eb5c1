"""Do test.py and predict.py grade a dataset's photographs alike? (docs/RELIABILITY.md)

    python scripts/inference_agreement.py --data-root ../shared/data/idrid
    python scripts/inference_agreement.py --checkpoint runs/x/checkpoints/best.pt --split val

Three single-pass gradings of the same split with the same weights and precision (the
checkpoint's ``run.amp``):

- ``test``: test.py's path: the evaluator over the preprocessing cache (HR squares stored as JPEG);
- ``predict``: predict.py's path: ``engine.predictor.predict`` on the original photographs
  (decoded, FOV-cropped and resized as the cache was built, but never JPEG-stored);
- ``cache_via_predict``: predict.py's grader on the cache's own HR squares, which separates the
  inferer (same input: should agree with ``test`` exactly) from the input (cache JPEG vs photo);
- ``photo_jpeg_via_predict``: predict.py's grader on the photograph's own square after a JPEG
  round trip at the cache's quality: how many grades the storage alone moves.

Writes a record (per image: the three grades and referable probabilities; the agreements; the PSNR
between the cache's HR square and the photograph's) and prints the summary.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from data.cache import read_manifest, read_settings  # noqa: E402
from data.photo import PhotoDataset, PhotoInput  # noqa: E402
from engine.builders import build_dataset, build_loader, cache_path  # noqa: E402
from engine.cli import run_cli  # noqa: E402
from engine.evaluator import evaluate  # noqa: E402
from engine.export import git_commit  # noqa: E402
from engine.inference import release_calibration  # noqa: E402
from engine.predictor import BatchGrader, PredictSettings, predict  # noqa: E402
from engine.release import DEFAULT_RELEASE, resolve_checkpoint  # noqa: E402
from engine.runtime import configure_threads, cpu_model  # noqa: E402
from engine.testing import load_trained, use_dataset  # noqa: E402

DEFAULT_OUT = ROOT / "docs" / "records" / "inference_agreement"


def _jpeg_round_trip(square: torch.Tensor, quality: int) -> torch.Tensor:
    """``[3,S,S]`` uint8 RGB encoded as the cache encodes it (OpenCV JPEG) and decoded again."""
    bgr = np.ascontiguousarray(square.permute(1, 2, 0).numpy()[:, :, ::-1])
    ok, data = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    decoded = cv2.imdecode(data, cv2.IMREAD_COLOR)[:, :, ::-1]
    return torch.from_numpy(np.ascontiguousarray(decoded.transpose(2, 0, 1)))


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a.float() - b.float()) / 255).pow(2).mean())
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


def _predict_rows(
    model,
    config,
    photos: list[PhotoInput],
    mode: str,
    batch_size: int,
    amp: str,
    temperature: float,
    threshold: float | None,
) -> list[dict]:
    """predict.py's path on the original photographs: the rows of its predictions.csv."""
    with tempfile.TemporaryDirectory() as folder:
        settings = PredictSettings(
            Path(folder), mode, batch_size, amp=amp, panels=False, workers=0, ignore_quality=True
        )
        settings.temperature, settings.referable_threshold = temperature, threshold
        predict(model, config, photos, settings)
        with (Path(folder) / "predictions.csv").open(newline="") as file:
            return list(csv.DictReader(file))


def _grade_squares(
    grader: BatchGrader, dataset, photo_set: PhotoDataset, batch_size: int, quality: int
) -> tuple[list[int], list[int], list[float]]:
    """predict.py's grader on cache squares and photo JPEG round trips; with cache-vs-photo PSNR."""
    via_cache, via_jpeg, psnr = [], [], []
    for start in range(0, len(dataset), batch_size):
        items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        fov = torch.stack([item["fov"] for item in items])
        hr = torch.stack([(item["hr"] * 255).round().to(torch.uint8) for item in items])
        via_cache += grader(hr, fov)["grades"].tolist()
        squares = [photo_set[start + offset]["hr"] for offset in range(len(items))]
        psnr += [_psnr(a, b) if b is not None else math.nan for a, b in zip(hr, squares)]
        # The photograph's own square through a JPEG round trip at the cache's quality: does the
        # storage alone account for the differences?
        stored = torch.stack(
            [_jpeg_round_trip(b if b is not None else a, quality) for a, b in zip(hr, squares)]
        )
        via_jpeg += grader(stored, fov)["grades"].tolist()
    return via_cache, via_jpeg, psnr


def _per_image(tested, rows: list[dict], via_cache, via_jpeg, psnr) -> list[dict]:
    """The record's per-image lines: true grade, the four gradings, both p_referable, PSNR."""
    predicted = [int(row["grade"]) if row["grade"] else -1 for row in rows]
    p_predict = [float(row["p_referable"] or "nan") for row in rows]
    p_test = tested.probs[:, 2:].sum(1).tolist()
    return [
        {
            "id": image_id,
            "grade": int(grade),
            "test": int(a),
            "predict": b,
            "cache_via_predict": c,
            "photo_jpeg_via_predict": d,
            "p_referable_test": round(pa, 5),
            "p_referable_predict": round(pb, 5),
            "cache_vs_photo_psnr_db": round(q, 2),
        }
        for image_id, grade, a, b, c, d, pa, pb, q in zip(
            tested.ids,
            tested.grades.tolist(),
            tested.predicted.tolist(),
            predicted,
            via_cache,
            via_jpeg,
            p_test,
            p_predict,
            psnr,
        )
    ]


def _summary(images: list[dict], psnr: list[float]) -> dict:
    """The agreements between the gradings, the largest p_referable gap and the median PSNR."""
    count = len(images)
    same = lambda key: sum(image["test"] == image[key] for image in images)  # noqa: E731
    differing = [image for image in images if image["test"] != image["predict"]]
    return {
        "n": count,
        "agree_test_predict": same("predict") / count,
        "agree_test_cache_via_predict": same("cache_via_predict") / count,
        "agree_predict_photo_jpeg": sum(i["predict"] == i["photo_jpeg_via_predict"] for i in images)
        / count,
        "max_abs_p_referable_difference": max(
            abs(image["p_referable_test"] - image["p_referable_predict"]) for image in images
        ),
        "median_cache_vs_photo_psnr_db": float(torch.tensor(psnr).nanmedian()),
        "differing": [image["id"] for image in differing],
    }


def agreement(
    checkpoint: str,
    data_root: str | None,
    split: str,
    batch_size: int,
    cache_dir: str | None = None,
    jpeg_quality: int | None = None,
    amp: str = "auto",
    image_format: str | None = None,
) -> dict:
    started = time.perf_counter()
    path = resolve_checkpoint(checkpoint)
    model, config, state = load_trained(path, "cpu")
    if cache_dir:  # a cache of its own (built here if missing), e.g. at another JPEG quality
        config.data.cache_dir = cache_dir
    if jpeg_quality:
        config.data.jpeg_quality = jpeg_quality
    if image_format:
        config.data.cache_image_format = image_format
    use_dataset(config, path, None, data_root)
    mode = config.test.input
    temperature, threshold = release_calibration(state)
    grader = BatchGrader(model, config, mode, tta=False, amp=amp, temperature=temperature)
    dataset = build_dataset(config, split)
    loader = build_loader(dataset, batch_size, False, 0)
    tested = evaluate(
        model, loader, grader.device, mode, grader.inferer.autocast, temperature=temperature
    )
    manifest = {entry.id: entry for entry in read_manifest(cache_path(config))}
    root = Path(config.data.root)
    photos = [PhotoInput(root / manifest[i].source) for i in tested.ids]
    rows = _predict_rows(model, config, photos, mode, batch_size, amp, temperature, threshold)
    photo_set = PhotoDataset(photos, config.data.hr_size)
    quality = (read_settings(cache_path(config)) or {}).get("jpeg_quality", 95)
    via_cache, via_jpeg, psnr = _grade_squares(grader, dataset, photo_set, batch_size, quality)
    images = _per_image(tested, rows, via_cache, via_jpeg, psnr)
    summary = _summary(images, psnr)
    return {
        "checkpoint": str(path),
        "split": split,
        "cache_jpeg_quality": (read_settings(cache_path(config)) or {}).get("jpeg_quality"),
        "cache_image_format": (read_settings(cache_path(config)) or {}).get("image_format", "jpeg"),
        "mode": mode,
        "precision": grader.inferer.precision,
        **summary,
        "cpu": cpu_model(),
        "commit": git_commit(),
        "wall_seconds": round(time.perf_counter() - started, 1),
        "images": images,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", default=DEFAULT_RELEASE)
    parser.add_argument("--data-root", help="the dataset's folder (default: the checkpoint's)")
    parser.add_argument("--split", default="val")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--cache-dir", help="the preprocessing cache folder (default: the checkpoint's)"
    )
    parser.add_argument(
        "--jpeg-quality", type=int, help="JPEG quality of the HR squares if the cache is built here"
    )
    parser.add_argument(
        "--image-format",
        choices=("jpeg", "png"),
        help="how the cache stores HR squares if it is built here (png: lossless)",
    )
    parser.add_argument(
        "--amp",
        choices=("auto", "on", "off"),
        default="auto",
        help="precision of all three gradings (auto: bf16 where this machine has it)",
    )
    parser.add_argument(
        "--out", type=Path, help=f"record file (default {DEFAULT_OUT}/NAME_SPLIT.json)"
    )
    args = parser.parse_args(argv)
    configure_threads(0)
    record = agreement(
        args.checkpoint,
        args.data_root,
        args.split,
        args.batch_size,
        args.cache_dir,
        args.jpeg_quality,
        args.amp,
        args.image_format,
    )
    quality = f"_q{args.jpeg_quality}" if args.jpeg_quality else ""
    quality += "_png" if args.image_format == "png" else ""
    quality += "_fp32" if args.amp == "off" else ""
    out = args.out or DEFAULT_OUT / f"{Path(record['checkpoint']).stem}_{args.split}{quality}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1) + "\n")
    print(
        f"{record['n']} images, {record['precision']}: test.py and predict.py agree on "
        f"{record['agree_test_predict']:.1%} of the grades; predict.py's grader on the cache's "
        f"own HR squares agrees on {record['agree_test_cache_via_predict']:.1%}; cache vs photo "
        f"PSNR median {record['median_cache_vs_photo_psnr_db']:.1f} dB -> {out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
