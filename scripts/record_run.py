"""Record a finished run for the docs: stage times, config, machine, and its test.py evaluations.

    python scripts/record_run.py runs/idrid_1024 --out docs/records/idrid_1024
    python scripts/record_run.py runs/idrid_1024 --out DIR --metrics metrics_val_lr.json metrics_val_hr.json

Writes DIR/record.json (per stage: epochs and wall seconds from log.csv; the config and its hash;
commit, CPU, torch; each evaluation's metrics from metrics_*.json without local paths) and
DIR/<evaluation>.csv (test.py's per-image predictions, sorted by id). Commit DIR; the run folder
(checkpoints) stays out of git. Tables: python scripts/results_tables.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.cli import run_cli  # noqa: E402
from engine.run_record import write_run_record  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run_dir", type=Path, help="the run folder (runs/<name>)")
    parser.add_argument("--out", type=Path, required=True, help="record folder (committed)")
    parser.add_argument(
        "--metrics",
        nargs="+",
        help="metrics files of the run folder to keep (default: every metrics*.json in it)",
    )
    parser.add_argument("--note", default="", help="one line saying what the run was for")
    args = parser.parse_args(argv)
    if args.metrics:
        paths = [args.run_dir / name for name in args.metrics]
    else:
        paths = sorted(args.run_dir.glob("metrics*.json"))
    path = write_run_record(args.run_dir, args.out, paths, args.note)
    print(f"recorded {args.run_dir} in {path.parent}: {', '.join(p.name for p in paths)}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
