"""The cross-validated IDRiD comparison of docs/RESULTS.md (issue 24), resumable anywhere.

    python scripts/idrid_cv.py                          # every row, every fold not yet recorded
    python scripts/idrid_cv.py --rows lr_cls,hr_cls     # some rows (run two such processes on 2 cores)
    python scripts/idrid_cv.py --folds 0 --list         # what is left, without training

Rows and settings: scripts/idrid_cv.yaml. Each finished (row, fold) writes its record under
docs/records/idrid_cv/<row>/ (commit it); a record already there is skipped, so the study
continues where it stopped, on any machine with the IDRiD training parts. Checkpoints go to
--out (runs/idrid_cv) and are never committed. Tables: python scripts/results_tables.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.cli import run_cli  # noqa: E402
from engine.cv_study import CVRunner, choose_names, folds_of, load_study  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--study", default=str(ROOT / "scripts/idrid_cv.yaml"))
    parser.add_argument("--data-root", default=str(ROOT.parent / "shared/data/idrid"))
    parser.add_argument("--rows", help="comma-separated rows (default: all, in the study's order)")
    parser.add_argument("--folds", help="comma-separated folds (default: all)")
    parser.add_argument(
        "--out", default="runs/idrid_cv", help="run folders (checkpoints; not committed)"
    )
    parser.add_argument(
        "--records", default=str(ROOT / "docs/records/idrid_cv"), help="record folder (committed)"
    )
    parser.add_argument("--list", action="store_true", help="print what is left and stop")
    parser.add_argument(
        "overrides", nargs="*", help="extra key=value overrides for every run (a smoke test)"
    )
    args = parser.parse_args(argv)
    study = load_study(args.study)
    rows = choose_names(args.rows, list(study.rows), "rows")
    folds = choose_names(args.folds, folds_of(study), "folds")
    runner = CVRunner(
        study,
        args.data_root,
        Path(args.out).resolve(),  # recorded in each run's config: the same from any folder
        Path(args.records).resolve(),
        tuple(args.overrides),
    )
    pending = runner.pending(rows, folds)
    print(
        f"{len(pending)} of {len(rows) * len(folds)} (row, fold) runs left: "
        + ", ".join(f"{row}/fold{fold}" for fold, row in pending)
    )
    if args.list:
        return 0
    for fold, row in pending:
        provenance = runner.run_one(row, fold)
        print(
            f"recorded {row}/fold{fold}: {provenance['images']} images, {provenance['wall_seconds']:.0f} s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
