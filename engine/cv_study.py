"""Grouped k-fold cross-validation of several rows (methods and ablations), resumable anywhere.

A study (``scripts/idrid_cv.yaml``) names a preset, the folds file (``data/splits.py``), overrides
every row shares, runs shared by several rows of a fold (``shared``: e.g. DeepMT-DR's isr + seg +
cls stages) and the rows. For fold ``k`` a row trains on every other fold and grades fold ``k``;
its out-of-fold predictions and a JSON of provenance are the **record**::

    <records>/<row>/fold<k>.csv    id, grade, predicted, p0..p4 (the held-out images)
    <records>/<row>/fold<k>.json   config hash, commit, CPU, wall time, metrics, the command

Records are small and committed; checkpoints stay under ``runs/`` and are never committed. The
runner skips every (row, fold) whose record exists, so a study stopped anywhere continues later,
on another machine, from what is committed. Work is ordered fold by fold (every row on fold 0
before any row on fold 1), so a partial study is already a like-for-like comparison.

A row that ``start``s from a shared run begins from its final checkpoint: every tensor the row's
model has under the same name and shape is copied, the rest keeps the row's own random
initialisation (e.g. the no-lesion-maps row keeps the shared ISR net and trains a new grader).
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from data.atomic import atomic_open, write_atomic
from data.lock import FolderLock, LockError
from data.records import DataError
from data.splits import SplitSettings, fold_roles, read_folds_file, write_split_file
from engine.builders import build_model
from engine.checkpoint import load_checkpoint, save_checkpoint
from engine.config import Config, ConfigError, load_config
from engine.logging import log_facts
from engine.release_facts import git_commit
from engine.runtime import cpu_family, cpu_flags, cpu_model
from engine.testing import run_test
from engine.trainer import Trainer
from evaluation.cv_results import read_pairs
from evaluation.prediction_csv import TEST_COLUMNS, read_graded

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
CPU_FLAGS_NOTED = (
    "avx2",
    "avx512f",
    "avx512_bf16",
    "amx_bf16",
)  # what decides fp32 or bf16 speed here
WAIT_SECONDS = 60  # how often a process looks again at a shared run another process is training
# Keys that say where or how fast a run goes, not what it learns: left out of the config hash.
NOT_HASHED = (
    "run.name",
    "run.out_dir",
    "run.device",
    "run.threads",
    "data.num_workers",
    "data.prepare_workers",
    "data.split_file",
    "data.root",
    "data.cache_dir",
    "train.init_from",
)


@dataclass(frozen=True)
class RunSpec:
    method: str
    overrides: tuple[str, ...] = ()
    start: str | None = None  # a shared run of the same fold this run starts from
    summary: str = ""
    supplementary: bool = False  # outside the main table: compared on the folds it has finished


@dataclass(frozen=True)
class Study:
    title: str
    preset: Path
    folds_file: Path
    reference: str
    overrides: tuple[str, ...]
    shared: dict[str, RunSpec]
    rows: dict[str, RunSpec]
    path: Path = field(default=Path("."))
    pairs: tuple[tuple[str, str], ...] = ()  # (a, b): a minus b, beside the reference's differences


def _run_spec(name: str, values: dict, shared: dict[str, RunSpec], where: Path) -> RunSpec:
    if not isinstance(values, dict) or "method" not in values:
        raise ConfigError(f"{where}: {name} needs a 'method'")
    start = values.get("start")
    if start is not None and start not in shared:
        raise ConfigError(f"{where}: {name} starts from {start!r}, which is not under 'shared'")
    overrides = values.get("overrides") or []
    if not isinstance(overrides, list):
        raise ConfigError(f"{where}: {name}.overrides must be a list of key=value strings")
    return RunSpec(
        values["method"],
        tuple(str(o) for o in overrides),
        start,
        values.get("summary", ""),
        bool(values.get("supplementary", False)),
    )


def load_study(path: str | Path) -> Study:
    """The study of a YAML file; a ConfigError naming the file and the field when it is malformed."""
    path = Path(path)
    values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    for key in ("preset", "folds_file", "rows"):
        if key not in values:
            raise ConfigError(f"{path}: missing '{key}'")
    shared: dict[str, RunSpec] = {}
    for name, spec in (values.get("shared") or {}).items():
        shared[name] = _run_spec(f"shared.{name}", spec, {}, path)
    rows = {
        name: _run_spec(f"rows.{name}", spec, shared, path) for name, spec in values["rows"].items()
    }
    reference = values.get("reference") or next(iter(rows))
    if reference not in rows:
        raise ConfigError(f"{path}: reference {reference!r} is not a row")
    try:
        pairs = read_pairs(values.get("pairs"), list(rows), path)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    return Study(
        values.get("title", path.stem),
        ROOT / values["preset"],
        ROOT / values["folds_file"],
        reference,
        tuple(str(o) for o in values.get("overrides") or []),
        shared,
        rows,
        path,
        pairs,
    )


def machine_provenance() -> dict:
    """What a record says about where it ran: commit, CPU model and flags, torch, threads."""
    return {
        "commit": git_commit(),
        "cpu": cpu_model(),
        "cpu_family": cpu_family(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_flags": [flag for flag in CPU_FLAGS_NOTED if flag in cpu_flags()],
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),  # "AVX2" where capped
    }


def choose_names(text: str | None, known: list, what: str) -> list:
    """A runner's ``--rows`` / ``--folds`` / ``--arms`` / ``--seeds``: comma-separated names of
    ``known`` (all of them when empty); a ConfigError naming the unknown ones."""
    if not text:
        return list(known)
    chosen = [type(known[0])(name.strip()) for name in text.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in known]
    if unknown:
        raise ConfigError(
            f"--{what}: unknown {what} {unknown} (known: {', '.join(map(str, known))})"
        )
    return chosen


def fold_split_file(study: Study, fold: int, out_dir: Path) -> Path:
    """A split file (``data/splits.py`` format) in which ``fold`` validates and the others train."""
    folds = read_folds_file(study.folds_file)
    path = out_dir / "splits" / f"fold{fold}.csv"
    roles = fold_roles(folds, fold)
    if not any(role == "val" for role in roles.values()):
        raise DataError(f"{study.folds_file}: fold {fold} holds no image")
    write_split_file(path, "cv", roles, SplitSettings(seed=fold))
    return path


def folds_of(study: Study) -> list[int]:
    return sorted({fold for fold in read_folds_file(study.folds_file).values() if fold >= 0})


def run_config(
    study: Study,
    spec: RunSpec,
    name: str,
    fold: int,
    data_root: str,
    out_dir: Path,
    extra: tuple[str, ...] = (),
) -> Config:
    """The resolved config of one run of the study on one fold."""
    overrides = [
        f"data.root={data_root}",
        f"data.split_file={fold_split_file(study, fold, out_dir)}",
        f"run.out_dir={out_dir / f'fold{fold}'}",
        f"run.name={name}",
        *study.overrides,
        *spec.overrides,
        *extra,
    ]
    return load_config(study.preset, overrides, method=spec.method)


def config_hash(config: Config) -> str:
    """SHA-256 (16 hex digits) of what the run learns: the resolved config less NOT_HASHED."""
    values = config.to_dict()
    for dotted in NOT_HASHED:
        section, key = dotted.split(".")
        values[section].pop(key, None)
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:16]


def transferred_init(source: Path, config: Config, target: Path) -> Path:
    """A checkpoint holding ``config``'s model with every same-named, same-shaped tensor of
    ``source`` copied in (the rest: the row's own seeded initialisation)."""
    torch.manual_seed(config.run.seed)
    own = build_model(config).state_dict()
    shared = load_checkpoint(source)["model"]
    copied = [key for key in own if key in shared and shared[key].shape == own[key].shape]
    own.update({key: shared[key] for key in copied})
    log.info("%s: %d of %d tensors from %s", target.name, len(copied), len(own), source)
    save_checkpoint(
        {"model": own, "config": config.to_dict(), "transferred_from": str(source)}, target
    )
    return target


def final_checkpoint(run_dir: Path) -> Path:
    """The checkpoint a finished run hands on: best.pt where the run validated, else (the study's
    train.eval_every=0) last.pt, the last epoch of its last stage."""
    for name in ("best.pt", "last.pt"):
        path = run_dir / "checkpoints" / name
        if path.is_file():
            return path
    raise DataError(f"{run_dir}: no best.pt or last.pt; the run did not finish")


def record_paths(records: Path, row: str, fold: int, unit: str = "fold") -> tuple[Path, Path]:
    """``<records>/<row>/<unit><k>.csv|json`` (``unit``: fold here, seed in a seed sweep)."""
    return records / row / f"{unit}{fold}.csv", records / row / f"{unit}{fold}.json"


def is_recorded(records: Path, row: str, fold: int, unit: str = "fold") -> bool:
    return all(path.is_file() for path in record_paths(records, row, fold, unit))


def write_record(
    records: Path, row: str, fold: int, predictions: Path, provenance: dict, unit: str = "fold"
) -> None:
    """Copy the held-out predictions (test.py's columns: id, grade = reference, predicted, p0..;
    evaluation/prediction_csv.py), sorted by id, and write the provenance JSON, each atomically,
    the JSON last (a record counts only with both)."""
    table, meta = record_paths(records, row, fold, unit)
    write_predictions_record(predictions, table)
    write_atomic(meta, (json.dumps(provenance, indent=1, sort_keys=True) + "\n").encode())


def write_predictions_record(predictions: Path, table: Path) -> None:
    """test.py's per-image predictions, sorted by id, probabilities to 5 digits (small diffs in
    git), written atomically to ``table``."""
    table.parent.mkdir(parents=True, exist_ok=True)
    rows = read_graded(predictions)
    if not rows.keys:
        raise DataError(f"{predictions}: no predictions to record")
    classes = rows.probs.shape[1]
    with atomic_open(table, "w", encoding=None, newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([*TEST_COLUMNS, *(f"p{c}" for c in range(classes))])
        for index in sorted(range(len(rows.keys)), key=rows.keys.__getitem__):
            probs = [f"{p:.5f}" for p in rows.probs[index]]
            writer.writerow(
                [rows.keys[index], rows.reference[index], rows.predicted[index], *probs]
            )


def train_to_end(config: Config, progress=None) -> Path:
    """Train ``config``'s run to its end (resuming what a killed run left) and return its final
    checkpoint; a run another process is training (a shared one) is waited for, not touched."""
    run_dir = config.run_dir
    done = run_dir / "checkpoints" / "done"
    while not done.is_file():
        try:
            with FolderLock(run_dir.with_name(f"{run_dir.name}.lock"), f"shared run {run_dir}"):
                if done.is_file():
                    break
                checkpoints = run_dir / "checkpoints"
                resume = (checkpoints / "last.pt").is_file() or (
                    checkpoints / "recovery.pt"
                ).is_file()
                if not resume and run_dir.exists():
                    shutil.rmtree(run_dir)  # started but nothing saved: start again cleanly
                Trainer(config, progress=progress).fit(resume=resume)
                done.write_text("finished\n")
        except LockError as error:
            log.info("waiting %d s: %s", WAIT_SECONDS, error)
            time.sleep(WAIT_SECONDS)
    return final_checkpoint(run_dir)


@dataclass
class CVRunner:
    """Trains and grades each (row, fold) of ``study`` that has no record yet (see module doc)."""

    study: Study
    data_root: str
    out_dir: Path
    records: Path
    extra: tuple[str, ...] = ()  # overrides after the study's (e.g. a quick smoke size)
    progress: object = None
    done: list[str] = field(default_factory=list)

    def pending(self, rows: list[str], folds: list[int]) -> list[tuple[int, str]]:
        """(fold, row) pairs without a record, fold by fold."""
        return [
            (fold, row)
            for fold in folds
            for row in rows
            if not is_recorded(self.records, row, fold)
        ]

    def _train(self, config: Config) -> Path:
        return train_to_end(config, self.progress)

    def _start_checkpoint(self, spec: RunSpec, name: str, fold: int, config: Config) -> Path | None:
        if spec.start is None:
            return None
        shared = run_config(
            self.study,
            self.study.shared[spec.start],
            spec.start,
            fold,
            self.data_root,
            self.out_dir,
            self.extra,
        )
        source = self._train(shared)
        target = self.out_dir / f"fold{fold}" / f"init_{name}.pt"
        if not target.is_file():
            transferred_init(source, config, target)
        return target

    def run_one(self, row: str, fold: int) -> dict:
        """Train ``row`` on every fold but ``fold`` (resuming what a killed run left), grade ``fold``,
        write the record; returns its provenance."""
        spec = self.study.rows[row]
        config = run_config(self.study, spec, row, fold, self.data_root, self.out_dir, self.extra)
        started = time.time()
        init = self._start_checkpoint(spec, row, fold, config)
        shared_seconds, started = time.time() - started, time.time()
        if init is not None:
            config = run_config(
                self.study,
                spec,
                row,
                fold,
                self.data_root,
                self.out_dir,
                (*self.extra, f"train.init_from={init}"),
            )
        checkpoint = self._train(config)
        # fp32 evaluation, as every record of the study so far (test.py's default is run.amp).
        metrics, run_dir = run_test(
            checkpoint, "val", config.run.device, 0, self.out_dir / "figures", amp=False
        )
        predictions = sorted(run_dir.glob("predictions_val*.csv"), key=lambda p: p.stat().st_mtime)[
            -1
        ]
        provenance = {
            "study": str(self.study.path.relative_to(ROOT))
            if self.study.path.is_relative_to(ROOT)
            else str(self.study.path),
            "row": row,
            "fold": fold,
            "method": spec.method,
            "config_hash": config_hash(config),
            "overrides": [*self.study.overrides, *spec.overrides, *self.extra],
            "start": spec.start,
            **machine_provenance(),
            "wall_seconds": round(time.time() - started, 1),
            "shared_wall_seconds": round(
                shared_seconds, 1
            ),  # the shared run, when this call trained it
            "input": metrics.get("input"),
            "tta": metrics.get("tta"),
            "images": sum(1 for _ in open(predictions)) - 1,
            # The grader's training CE in its last epoch: near ln 5 it never fitted its images.
            "grader_train_ce": log_facts(config.run_dir)[1],
        }
        write_record(self.records, row, fold, predictions, provenance)
        self.done.append(f"{row}/fold{fold}")
        return provenance
