"""The lever table of docs/RESULTS.md (issue 14): each grading lever's paired ΔQWK on IDRiD validation.

    python scripts/idrid_levers.py                      # every lever, seed 0
    python scripts/idrid_levers.py --rows baseline,ema --seeds 3

Every row trains only the cls stage, from the same isr + seg run (idrid_levers.yaml, the
``overrides`` for every row), and is graded from the true HR image, so the rows differ by their
lever alone. Defaults as scripts/idrid_results.py, output runs/idrid_levers.
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.cli import run_cli
from engine.table_cli import table_main
from scripts.idrid_results import DEFAULTS


def main(argv: list[str] | None = None) -> int:
    return table_main(
        argv,
        Path(__file__).with_name("idrid_levers.yaml"),
        __doc__,
        "runs/idrid_levers",
        "scripts/idrid_levers.py",
        DEFAULTS,
    )


if __name__ == "__main__":
    sys.exit(run_cli(main))
