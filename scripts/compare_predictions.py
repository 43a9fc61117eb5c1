"""Two models on the same photographs: each one's metrics and the paired difference, with intervals.

    python scripts/compare_predictions.py A.csv B.csv                       # common images of two test.py / predict.py CSVs
    python scripts/compare_predictions.py A.csv B.csv --names 1024,512 --held-out splits/idrid.csv --held-out old_split.csv
    python scripts/compare_predictions.py A.csv B.csv --only ids.txt --json out.json

Reads two predictions CSVs (test.py's predictions_<split>.csv or predict.py's predictions.csv),
keeps the images both graded with a known reference grade, and prints a markdown table: QWK,
accuracy, macro AUC, referable AUC, sensitivity, specificity and ECE of each model with a 95%
bootstrap interval, and A minus B with its paired interval and p-value (2,000 resamples of whole
duplicate groups, splits/<dataset>_groups.csv). --held-out SPLIT_FILE (once per model) keeps only
the photographs that no copy of which was in that split file's train role: the fair subset when
the two models were trained on different splits.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from data.records import DataError  # noqa: E402
from data.splits import load_groups, read_split_file  # noqa: E402
from engine.cli import run_cli  # noqa: E402
from evaluation.paired_compare import align, compare, held_out, markdown  # noqa: E402
from evaluation.prediction_csv import read_graded  # noqa: E402


def read_ids(path: Path) -> set[str]:
    """One id per line (the first comma-separated field; a header ``id`` and blank lines skipped)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise DataError(f"cannot read --only {path}: {error.strerror}") from None
    ids = {line.split(",")[0].strip() for line in lines}
    return ids - {"", "id"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("a", type=Path, help="predictions CSV of model A")
    parser.add_argument("b", type=Path, help="predictions CSV of model B")
    parser.add_argument("--names", default="A,B", help="two comma-separated names for the table")
    parser.add_argument("--dataset", default="idrid", help="whose duplicate groups to resample")
    parser.add_argument(
        "--groups", type=Path, help="groups CSV (default splits/<dataset>_groups.csv)"
    )
    parser.add_argument("--only", type=Path, help="file of ids: compare on these images only")
    parser.add_argument(
        "--held-out",
        type=Path,
        action="append",
        default=[],
        metavar="SPLIT_FILE",
        help="keep images no copy of which is in this split file's train role (repeatable)",
    )
    parser.add_argument(
        "--referable-thresholds",
        default="0.5,0.5",
        help="each model's cut on p(grade >= 2) for sensitivity / specificity",
    )
    parser.add_argument("--resamples", type=int, default=2000)
    parser.add_argument("--json", type=Path, help="also write the numbers as JSON here")
    args = parser.parse_args(argv)
    names = tuple(part.strip() for part in args.names.split(","))
    if len(names) != 2 or not all(names):
        parser.error(f"--names needs two comma-separated names, got {args.names!r}")
    try:
        thresholds = tuple(float(part) for part in args.referable_thresholds.split(","))
    except ValueError:
        thresholds = ()
    if len(thresholds) != 2:
        parser.error(f"--referable-thresholds needs two numbers, got {args.referable_thresholds!r}")
    if args.resamples < 100:
        parser.error(f"--resamples must be at least 100, got {args.resamples}")
    groups = load_groups(args.dataset, args.groups)
    a, b = read_graded(args.a), read_graded(args.b)
    only = read_ids(args.only) if args.only else None
    if args.held_out:
        unseen = held_out(a.keys, [read_split_file(path) for path in args.held_out], groups)
        only = unseen if only is None else only & unseen
    aligned = align(a, b, only, names)
    result = compare(aligned, groups, thresholds, args.resamples)
    print(markdown(result, names), end="")
    if args.json:
        args.json.write_text(json.dumps({"names": names, **result}, indent=1, default=float) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
