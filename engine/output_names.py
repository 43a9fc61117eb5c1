"""Where test.py's results go and what they are called: one place for the output-name rules.

A run's own evaluation (the test split in its ``test.input`` and ``test.tta``, its final
checkpoint) writes ``<run>/metrics.json`` and ``<run>/predictions_test.csv``; any other split,
input, flip TTA or stage checkpoint adds to the name, so one evaluation never overwrites another's:
``metrics_val_hr_tta_isr_best.json``, ``predictions_val_hr_tta_isr_best.csv``. Figures go to
``<figures root>/<run name>/<the metrics name's suffix>/``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from engine.config import Config
    from engine.evaluator import Mode


def tta_tag(tta: bool, test_tta: bool) -> str:
    """``""`` when the evaluation uses the run's own ``test.tta``, else ``_tta`` or ``_no_tta``."""
    return "" if tta == test_tta else ("_tta" if tta else "_no_tta")


def checkpoint_tag(checkpoint: str | Path) -> str:
    """``""`` for a run's final checkpoint (best.pt, last.pt), ``_<name>`` for a stage's (isr_best.pt)."""
    stem = Path(checkpoint).stem
    return "" if stem in ("best", "last") else f"_{stem}"


def metrics_file(
    run_dir: Path,
    split: str,
    mode: Mode,
    test_input: Mode,
    checkpoint: str | Path = "best.pt",
    tta: bool = False,
    test_tta: bool = False,
) -> Path:
    """``metrics.json`` for the test split in the run's own mode (and its own ``test.tta``), else
    ``metrics_<split>_<mode>.json``; flip TTA other than the run's adds ``_tta`` / ``_no_tta`` and a
    stage checkpoint (``isr_best.pt``) its name (``metrics_val_lr_tta_isr_best.json``), so one
    evaluation never overwrites another's."""
    own = (split, mode, tta) == ("test", test_input, test_tta)
    suffix = "" if own else f"_{split}_{mode}{tta_tag(tta, test_tta)}"
    return Path(run_dir) / f"metrics{suffix}{checkpoint_tag(checkpoint)}.json"


def metrics_name_pattern(checkpoint: str | Path) -> re.Pattern:
    """Matches every :func:`metrics_file` name of ``checkpoint`` (any split, input and TTA)."""
    tag = re.escape(checkpoint_tag(checkpoint))
    return re.compile(rf"metrics(_(train|val|test)_(lr|hr)(_tta|_no_tta)?)?{tag}\.json")


def predictions_file(
    run_dir: Path,
    split: str,
    mode: Mode,
    checkpoint: str | Path = "best.pt",
    tta: bool = False,
    test_tta: bool = False,
) -> Path:
    """``predictions_<split>.csv``; grading the HR images adds ``_hr``, then the TTA and checkpoint
    tags as in :func:`metrics_file` (``predictions_val_hr_tta_isr_best.csv``)."""
    hr = "_hr" if mode == "hr" else ""
    name = f"predictions_{split}{hr}{tta_tag(tta, test_tta)}{checkpoint_tag(checkpoint)}.csv"
    return Path(run_dir) / name


def figures_dir(figures_root: str | Path, run_name: str, metrics_path: Path) -> Path:
    """``<figures_root>/<run_name>/`` for the run's own metrics, else a subfolder named like the
    metrics file's suffix (``val_hr_tta``)."""
    suffix = metrics_path.stem.removeprefix("metrics").lstrip("_")
    return Path(figures_root) / run_name / suffix


def run_folder_of(checkpoint: str | Path) -> Path | None:
    """``<run>`` for a checkpoint at ``<run>/checkpoints/<name>.pt``, else None (a release file)."""
    path = Path(checkpoint)
    return path.parent.parent if path.parent.name == "checkpoints" else None


def results_dir(checkpoint: str | Path, config: Config) -> Path:
    """The run folder that holds ``checkpoint``, so a copied or moved run gets its own results; a
    file elsewhere (a release) writes to ``<run.out_dir>/<run.name>``."""
    return run_folder_of(checkpoint) or config.run_dir
