"""Compared methods: train and test every method of the table for N seeds, then write the table.

    python "Compared Methods/run.py"                                  # 7 methods x 3 seeds, configs/table.yaml
    python "Compared Methods/run.py" --rows deepmt_dr,lr_cls --seeds 5
    python "Compared Methods/run.py" --dataset idrid --data-root ../shared/data/idrid --device cuda
    python "Compared Methods/run.py" --quick --out /tmp/smoke          # every row, tiny, in minutes
    python "Compared Methods/run.py" --list                           # what each row runs

Rows are in rows.yaml next to this script (each is `train.py --method NAME`); outputs go to
runs/compared_methods/: results.csv (one line per method x seed), table.md (mean +- std over
seeds), table.png (bar chart) and the run folders. Rerunning continues where it stopped.
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.cli import run_cli  # noqa: E402
from engine.table_cli import table_main  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    return table_main(
        argv,
        Path(__file__).with_name("rows.yaml"),
        __doc__,
        "runs/compared_methods",
        "Compared Methods/run.py",
    )


if __name__ == "__main__":
    sys.exit(run_cli(main))
