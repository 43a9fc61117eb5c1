"""The IDRiD results of docs/RESULTS.md: train and test each row on the validation split.

    python scripts/idrid_results.py                                   # every row, seed 0 (--seeds 1)
    python scripts/idrid_results.py --rows deepmt_dr,lr_cls --seeds 3
    python scripts/idrid_results.py --config configs/idrid.yaml --device cuda --out runs/idrid_paper

Defaults: --dataset idrid --data-root ../shared/data/idrid --config configs/idrid_small.yaml
--split val --seeds 0 --out runs/idrid_small (each can be given again to override it). Rows are in
idrid_rows.yaml next to this script; the options are those of "Compared Methods/run.py".
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.cli import run_cli
from engine.table_cli import table_main

DEFAULTS = [
    "--dataset",
    "idrid",
    "--data-root",
    str(ROOT.parent / "shared" / "data" / "idrid"),
    "--config",
    str(ROOT / "configs" / "idrid_small.yaml"),
    "--split",
    "val",
    "--seeds",
    "1",
]


def main(argv: list[str] | None = None) -> int:
    return table_main(
        argv,
        Path(__file__).with_name("idrid_rows.yaml"),
        __doc__,
        "runs/idrid_small",
        "scripts/idrid_results.py",
        DEFAULTS,
    )


if __name__ == "__main__":
    sys.exit(run_cli(main))
