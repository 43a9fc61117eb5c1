"""``python -m data.make_splits``: (re)write a dataset's split file and k-fold file from its images.

    python -m data.duplicates  --dataset idrid --root ../shared/data/idrid --out splits/idrid_groups.csv
    python -m data.make_splits --dataset idrid --root ../shared/data/idrid --folds 5

Reads the duplicate groups of ``splits/<dataset>_groups.csv`` (run ``data.duplicates`` first: a
split made without them may put two copies of one photograph on both sides) and writes
``splits/<dataset>.csv`` (train/val, ``data/splits.py``) and, with ``--folds K``,
``splits/<dataset>_folds.csv`` (grouped, grade-stratified folds for cross-validation). Both
files are meant to be committed; each run with the same images and seed writes the same rows.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from data.cli import OneLineParser, run
from data.datasets import DATASETS, load_index
from data.splits import (
    SplitSettings,
    compute_folds,
    compute_split,
    default_groups_file,
    default_split_file,
    keep_in_train,
    load_groups,
    write_folds_file,
    write_split_file,
)


def default_folds_file(dataset: str) -> Path:
    return default_split_file(dataset).with_name(f"{dataset}_folds.csv")


def main(argv: Sequence[str] | None = None) -> int:
    parser = OneLineParser(prog="python -m data.make_splits", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True, choices=sorted(DATASETS))
    parser.add_argument("--root", required=True, help="the dataset as unpacked")
    parser.add_argument("--folds", type=int, default=0, help="also write K cross-validation folds")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--val-fraction", type=float, default=0.2)
    args = parser.parse_args(argv)
    if args.folds == 1 or args.folds < 0:
        parser.error(f"argument --folds: {args.folds} folds (use 0 for none, or K >= 2)")
    groups_file = default_groups_file(args.dataset)
    if not groups_file.is_file():
        parser.error(f"no duplicate groups at {groups_file}: run python -m data.duplicates first")
    records = load_index(args.dataset, args.root).records
    groups = load_groups(args.dataset)
    settings = SplitSettings(args.val_fraction, 0.2, args.seed, keep_in_train(args.dataset))
    roles = compute_split(records, settings, groups)
    path = default_split_file(args.dataset)
    write_split_file(path, args.dataset, roles, settings)
    print(f"wrote {path}: {dict(sorted(Counter(roles.values()).items()))}")
    if args.folds:
        folds = compute_folds(records, args.folds, settings, groups)
        path = default_folds_file(args.dataset)
        write_folds_file(path, args.dataset, folds, args.folds, args.seed)
        print(f"wrote {path}: {dict(sorted(Counter(folds.values()).items()))} images per fold")
    return 0


if __name__ == "__main__":
    raise SystemExit(run("python -m data.make_splits", main))
