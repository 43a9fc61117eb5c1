"""Bootstrap speed: 2,000 resamples of the grading metrics on N images (evaluation/statistics.py).

    python bench/bootstrap.py --images 500 --resamples 2000

The study tables bootstrap every row and every paired difference; a per-resample scikit-learn
loop took about 30 s for this size, the vectorised scorer well under a second.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.runtime import cpu_model  # noqa: E402
from evaluation.statistics import bootstrap_intervals, paired_difference  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--resamples", type=int, default=2000)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    grades = rng.integers(0, 5, args.images)
    logits = rng.normal(size=(args.images, 5)) + 2.0 * np.eye(5)[grades]
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    predicted = probs.argmax(axis=1)
    start = time.perf_counter()
    bootstrap_intervals(grades, predicted, probs, 0.5, n_resamples=args.resamples)
    single = time.perf_counter() - start
    start = time.perf_counter()
    paired_difference(
        grades,
        predicted,
        probs,
        np.roll(predicted, 1),
        probs[::-1],
        0.5,
        0.5,
        n_resamples=args.resamples,
    )
    paired = time.perf_counter() - start
    print(
        f"{cpu_model()}: {args.resamples} resamples of {args.images} images: "
        f"intervals {single:.2f} s, paired difference {paired:.2f} s"
    )


if __name__ == "__main__":
    main()
