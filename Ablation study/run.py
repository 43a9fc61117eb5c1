"""Ablation study: train and test DeepMT-DR with one component switched off per row, N seeds each.

    python "Ablation study/run.py"                                    # 9 rows x 3 seeds, configs/table.yaml
    python "Ablation study/run.py" --rows full,no_task_aware --seeds 5
    python "Ablation study/run.py" --dataset ddr --data-root ~/data/DDR-dataset --device cuda
    python "Ablation study/run.py" --quick --out /tmp/smoke            # every row, tiny, in minutes
    python "Ablation study/run.py" --list                             # what each row switches

Rows are in rows.yaml next to this script (each is `train.py --method deepmt_dr OVERRIDES`);
outputs go to runs/ablation_study/: results.csv (one line per row x seed), table.md (mean +- std
over seeds), table.png (bar chart) and the run folders. Rerunning continues where it stopped.
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
        "runs/ablation_study",
        "Ablation study/run.py",
    )


if __name__ == "__main__":
    sys.exit(run_cli(main))
