"""The final-recipe comparison of docs/RESULTS.md (issue 14): DeepMT-DR against lr_cls and hr_cls.

    python scripts/idrid_recipe.py --seeds 3            # 3 rows x 3 seeds, runs/idrid_recipe
    python scripts/idrid_recipe.py --rows lr_cls --seeds 1

The deepmt_dr row starts from runs/idrid_isrseg/checkpoints/seg_best.pt (its isr and seg stages,
shared by the seeds; docs/RESULTS.md has the command that makes it); lr_cls and hr_cls start from
their own pre-training on the embedded dataset (train.init_from=synthetic). Rows are in
idrid_recipe.yaml; defaults as scripts/idrid_results.py.
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
        Path(__file__).with_name("idrid_recipe.yaml"),
        __doc__,
        "runs/idrid_recipe",
        "scripts/idrid_recipe.py",
        DEFAULTS,
    )


if __name__ == "__main__":
    sys.exit(run_cli(main))
