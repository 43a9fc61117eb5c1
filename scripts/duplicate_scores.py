"""The record behind the duplicate finder's threshold (docs/RESULTS.md, "Duplicates in IDRiD").

    python scripts/duplicate_scores.py --root ../shared/data/idrid

Fingerprints every image of the dataset and, for each, a planted copy (resized to 60%, JPEG
quality 70, brightness x1.1 + 8 inside the field of view), then writes the similarity of
(a) each photograph and its planted copy, (b) the pairs the committed groups file calls copies,
(c) every other pair, as histograms and extremes to ``docs/records/duplicates/<dataset>.json``.
The threshold is sound when (c)'s maximum lies below it and (a)'s and (b)'s minima above it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from data.datasets import load_index  # noqa: E402
from data.datasets.base import read_image  # noqa: E402
from data.duplicates import (  # noqa: E402
    DEFAULT_THRESHOLD,
    SIGNATURE_SIDE,
    fingerprints,
    read_groups,
    score_distribution,
    signature,
)
from data.splits import default_groups_file  # noqa: E402
from engine.runtime import cpu_model  # noqa: E402

BINS = [-1.0, 0.0, 0.2, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 0.99, 1.0001]


def planted_copy(image: np.ndarray) -> np.ndarray:
    """The photograph resized to 60%, re-encoded at JPEG quality 70 and brightened."""
    height, width = image.shape[:2]
    small = cv2.resize(
        image, (round(width * 0.6), round(height * 0.6)), interpolation=cv2.INTER_AREA
    )
    brighter = np.clip(small.astype(np.float32) * 1.1 + 8.0, 0, 255).astype(np.uint8)
    brighter[small.max(axis=2) < 10] = small[small.max(axis=2) < 10]  # the dark surround stays dark
    ok, buffer = cv2.imencode(".jpg", brighter, [cv2.IMWRITE_JPEG_QUALITY, 70])
    assert ok
    return cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED)


def _histogram(values: np.ndarray) -> dict:
    counts, _ = np.histogram(values, bins=BINS)
    return {
        "n": int(values.size),
        "min": float(values.min()),
        "max": float(values.max()),
        "counts": counts.tolist(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="idrid")
    parser.add_argument("--root", required=True)
    args = parser.parse_args()
    start = time.time()
    records = load_index(args.dataset, args.root).records
    prints = fingerprints(records, progress=True)
    planted = np.array(
        [
            float(
                signature(planted_copy(read_image(r.image, min_side=4 * SIGNATURE_SIDE)))
                @ p.signature
            )
            for r, p in zip(records, prints)
        ]
    )
    scores = score_distribution(prints, read_groups(default_groups_file(args.dataset)))
    record = {
        "dataset": args.dataset,
        "threshold": DEFAULT_THRESHOLD,
        "bins": BINS[:-1] + [1.0],
        "planted_copies": _histogram(planted),
        "grouped_copies": _histogram(scores["copies"]),
        "distinct": _histogram(scores["distinct"]),
        "images": len(records),
        "cpu": cpu_model(),
        "seconds": round(time.time() - start, 1),
        "command": f"python scripts/duplicate_scores.py --root {args.root}",
    }
    out = ROOT / f"docs/records/duplicates/{args.dataset}.json"
    out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
