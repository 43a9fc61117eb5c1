"""Which run folder a table cell may use: its own only if trained with the row's settings, or a
finished run of another table (``--reuse-from``) trained with exactly them, copied in.

Why: the ablation's ``full`` rows and the compared methods' ``deepmt_dr`` rows are the same
training; a second table takes the first one's tested runs instead of training them again, and a
run folder trained with other settings stops the runner rather than being mixed into the table.
"""

from __future__ import annotations

import shutil
from collections.abc import Collection, Sequence
from pathlib import Path

import yaml

from engine.config import Config, ConfigError, config_differences
from engine.output_names import metrics_file

# Settings that do not change results: a rerun may differ in them. Narrower than a resume's
# RESUME_MAY_CHANGE (engine/checkpoint.py): a resume continues a training and may extend its
# epochs or change its speed switches, whereas a table cell must be exactly its row's training.
# (engine/cv_study.py's NOT_HASHED, what a study's config hash leaves out, is another such list.)
NOT_COMPARED = ("run.device", "run.threads", "data.num_workers", "data.prepare_workers")
# Keys that name a run's folder: a finished run of another table may be reused under another name.
RUN_LOCATION = ("run.name", "run.out_dir")


def differing_settings(
    saved_path: Path, config: Config, ignored: Collection[str] = NOT_COMPARED
) -> list[str]:
    """``key: saved -> wanted`` for every setting in which a run's saved config.yaml differs from ``config``."""
    saved = yaml.safe_load(saved_path.read_text()) or {}
    return [
        f"{key}: {old!r} -> {new!r}"
        for key, old, new in config_differences(saved, config.to_dict(), ignored)
    ]


def check_same_settings(config: Config) -> None:
    """Stop if the run folder was trained with other settings than ``config``."""
    saved_path = config.run_dir / "config.yaml"
    if not saved_path.is_file():
        return
    differing = differing_settings(saved_path, config)
    if differing:
        shown = "; ".join(differing[:4]) + (
            f" (+{len(differing) - 4} more)" if len(differing) > 4 else ""
        )
        raise ConfigError(
            f"{config.run_dir} was trained with other settings ({shown}): use another --out, or delete that folder to retrain it"
        )


def reusable_folders(tables: Sequence[str | Path]) -> list[Path]:
    """The run folders of other tables' output folders (``--reuse-from``), sorted."""
    return sorted(
        folder for root in tables for folder in (Path(root) / "runs").glob("*") if folder.is_dir()
    )


def find_reusable_run(config: Config, run_folders: Sequence[Path], split: str) -> Path | None:
    """A finished run folder among ``run_folders`` trained with exactly ``config``'s settings, or None."""
    for folder in run_folders:
        saved_path = folder / "config.yaml"
        if folder.resolve() == config.run_dir.resolve() or not saved_path.is_file():
            continue
        if not metrics_file(folder, split, config.test.input, config.test.input).is_file():
            continue
        if not differing_settings(saved_path, config, NOT_COMPARED + RUN_LOCATION):
            return folder
    return None


def copy_reused_run(source: Path, config: Config, figures_root: Path) -> None:
    """Copy a finished run folder (and its test figures) to ``config``'s run folder, renamed."""
    target = config.run_dir
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(source, target)
    saved_path = target / "config.yaml"
    text = saved_path.read_text()
    header = "".join(line for line in text.splitlines(keepends=True) if line.startswith("#"))
    saved = yaml.safe_load(text)
    saved["run"]["name"], saved["run"]["out_dir"] = config.run.name, config.run.out_dir
    saved_path.write_text(
        header + f"# reused from {source}\n" + yaml.safe_dump(saved, sort_keys=False)
    )
    source_figures = source.parent.parent / "figures" / source.name
    if source_figures.is_dir():
        shutil.copytree(source_figures, figures_root / config.run.name, dirs_exist_ok=True)
