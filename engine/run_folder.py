"""The run folder ``runs/<name>/`` of a training run: its lock, checkpoints and logs (docs/RELIABILITY.md).

One process writes it (``train.lock``); it holds ``config.yaml``, ``log.csv``, TensorBoard
scalars and ``checkpoints/`` (``<stage>_last.pt`` / ``<stage>_best.pt`` and their ``last.pt`` /
``best.pt`` links, run.keep's epoch snapshots and, inside an epoch, ``recovery.pt``). Here: what
a checkpoint holds, writing it, and which checkpoint a resumed run continues from.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from data.lock import FolderLock, LockError
from engine import distributed
from engine.checkpoint import (
    RESUME_MAY_CHANGE,
    CheckpointError,
    link_checkpoint,
    load_checkpoint,
    load_model_state,
    remove_stale_temporaries,
    rng_state,
    save_checkpoint,
    set_rng_state,
    without_optimizers,
)
from engine.config import STAGES, Config, config_differences, config_from_dict, save_config
from engine.logging import CSVLog, TensorBoardLog

if TYPE_CHECKING:
    from engine.trainer import Trainer

log = logging.getLogger("engine.trainer")  # the training log, whichever file writes its lines

RECOVERY_FILE = "recovery.pt"  # checkpoints/: the one checkpoint written inside an epoch
LOCK_FILE = "train.lock"  # runs/<name>/: held by the run folder's one writer (data/lock.py)


# ----------------------------------------------------------------- the lock
def lock_run_folder(trainer: Trainer) -> FolderLock | None:
    """Rank 0 locks the run folder and clears files half-written by killed runs; if it cannot lock,
    every process stops."""
    lock, error = None, None
    if trainer.world.is_main:
        try:
            lock = FolderLock(
                trainer.run_dir / LOCK_FILE, f"run folder {trainer.run_dir}"
            ).acquire()
        except LockError as caught:
            error = caught
    if distributed.any_rank(error is not None, trainer.device):
        raise error or LockError(
            f"run folder {trainer.run_dir} is in use by another run (rank 0 could not lock it)"
        )
    if trainer.world.is_main:
        for stale in remove_stale_temporaries(trainer.checkpoint_dir):
            log.info("removed %s, half-written by a run that was killed", stale)
    return lock


def open_run_folder(trainer: Trainer) -> None:
    """Rank 0 writes ``config.yaml`` and builds a missing dataset cache; then every process loads
    the data (an in-memory dataset is rendered once, before timing epochs)."""
    distributed.barrier()  # every process has checked the folder before rank 0 writes to it
    if trainer.world.is_main:
        trainer.run_dir.mkdir(parents=True, exist_ok=True)
        save_config(
            trainer.config,
            trainer.run_dir / "config.yaml",
            note=f"resolved here: {trainer.speed.describe(trainer.threads)}",
        )
        _load_datasets(trainer)  # a missing cache is built here, by rank 0 alone
    distributed.barrier()
    _load_datasets(trainer)


def _load_datasets(trainer: Trainer) -> None:
    for dataset in (trainer.train_set, trainer.val_set):
        if hasattr(dataset, "materialize"):
            dataset.materialize(progress=trainer.progress is not None and trainer.world.is_main)


# ----------------------------------------------------------------- what a checkpoint holds
def model_weights(trainer: Trainer) -> dict[str, dict]:
    """A checkpoint's weights: ``model``, the EMA of the trained sub-nets when train.ema_decay is on
    (what validation scored), and then ``raw_model``, the weights the optimisers step (for resume)."""
    raw = trainer.model.state_dict()
    if trainer.ema is None:
        return {"model": raw}
    return {"model": trainer.ema.weights(raw), "raw_model": raw}


@dataclass
class StageProgress:
    """A stage being trained: its optimisers and schedules, and its best epoch so far by the
    selection metric (0: the incoming weights or none yet); its checkpoints hold them."""

    name: str
    optimizers: dict[str, torch.optim.Optimizer]
    schedulers: dict[str, torch.optim.lr_scheduler.LRScheduler]
    final: bool = True  # no later stage follows: its last checkpoint keeps the optimiser state
    best: float = -math.inf
    best_epoch: int = 0

    @property
    def lr(self) -> float:
        """The learning rate of the stage's first optimiser, for its log row."""
        return self.optimizers[next(iter(self.optimizers))].param_groups[0]["lr"]


def stage_state(trainer: Trainer, stage: StageProgress, epoch: int) -> dict:
    """Everything a resumed run needs to continue the stage after ``epoch`` epochs bit for bit."""
    return {
        "config": trainer.config.to_dict(),
        **model_weights(trainer),
        "optimizers": {name: opt.state_dict() for name, opt in stage.optimizers.items()},
        "schedulers": {name: sched.state_dict() for name, sched in stage.schedulers.items()},
        "scaler": trainer.scaler.state_dict(),
        "stage": stage.name,
        "epoch": epoch,
        "step": trainer.global_step,
        "rng": rng_state(),
        "best_metric": stage.best,
        "best_epoch": stage.best_epoch,
        "psnr_floor": trainer.psnr_floor,
    }


# ----------------------------------------------------------------- writing
def write_recovery(trainer: Trainer, stage: StageProgress, epoch: int, position: dict) -> None:
    """The recovery checkpoint (rank 0): the stage's state inside epoch ``epoch`` at ``position``;
    one file, replaced each time, removed at the epoch's end."""
    if not trainer.world.is_main:
        return
    state = {**stage_state(trainer, stage, epoch), "position": position}
    trainer.latest_checkpoint = save_checkpoint(state, trainer.checkpoint_dir / RECOVERY_FILE)
    trainer.saved_at = time.monotonic()
    log.info(
        "recovery checkpoint: stage %s, epoch %d, batch %d",
        stage.name,
        epoch + 1,
        position["batches"],
    )


def write_epoch(
    trainer: Trainer, stage: str, row: dict, state: dict, keep_optimizers: bool = True
) -> None:
    """CSV row, TensorBoard scalars and log line, then the checkpoints (docs/RELIABILITY.md).

    The row comes first: a resumed run drops rows past its checkpoint and writes them again.
    ``<stage>_best.pt`` (no optimiser state) when the epoch is the best; ``<stage>_last.pt``,
    with optimiser state when ``keep_optimizers``; the ``best.pt``/``last.pt`` links; run.keep's
    epoch snapshots. The recovery file is stale after that and goes.
    """
    trainer.csv.write(row)
    trainer.tensorboard.scalars(
        {k: v for k, v in row.items() if k not in ("stage", "epoch")},
        trainer.global_step,
        f"{stage}/",
    )
    log.info(
        "%s",
        " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()),
    )
    folder = trainer.checkpoint_dir
    weights = without_optimizers(state)
    best, last = folder / f"{stage}_best.pt", folder / f"{stage}_last.pt"
    if row.get("is_best"):
        link_checkpoint(save_checkpoint(weights, best), folder / "best.pt")
    if keep_optimizers:
        save_checkpoint(state, last)
    elif row.get("is_best"):
        link_checkpoint(best, last)  # the same weights: one file
    else:
        save_checkpoint(weights, last)
    link_checkpoint(last, folder / "last.pt")
    if trainer.config.run.keep:
        _keep_snapshot(folder, stage, state["epoch"], row, weights, trainer.config.run.keep)
    (folder / RECOVERY_FILE).unlink(missing_ok=True)
    trainer.latest_checkpoint, trainer.saved_at = folder / "last.pt", time.monotonic()


def _keep_snapshot(folder: Path, stage: str, epoch: int, row: dict, weights: dict, keep: int):
    """run.keep: this epoch's weights as ``<stage>_epochNNN.pt``, only the newest ``keep`` kept."""
    snapshot = folder / f"{stage}_epoch{epoch:03d}.pt"
    if row.get("is_best"):
        link_checkpoint(folder / f"{stage}_best.pt", snapshot)
    else:
        save_checkpoint(weights, snapshot)
    snapshots = sorted(
        folder.glob(f"{stage}_epoch*.pt"),
        key=lambda path: int(path.stem.rsplit("epoch", 1)[1]),
    )
    for old in snapshots[:-keep]:
        old.unlink()


def open_logs(trainer: Trainer, resume_state: dict | None) -> None:
    """Rank 0's ``log.csv`` and TensorBoard writer. Rows past the checkpoint (written just before a
    kill) are dropped: they are trained and written again."""
    trainer.csv = CSVLog(trainer.run_dir / "log.csv")
    reached = (
        (STAGES.index(resume_state["stage"]), resume_state["epoch"])
        if resume_state is not None
        else (-1, 0)
    )
    trainer.csv.keep_rows(lambda row: (STAGES.index(row["stage"]), int(row["epoch"])) <= reached)
    trainer.tensorboard = TensorBoardLog(trainer.run_dir)


# ----------------------------------------------------------------- resuming
def resume_from(
    trainer: Trainer, resume: bool, verify: bool, stages: list[str]
) -> tuple[dict, Path] | tuple[None, None]:
    """The checkpoint a run continues from (its weights loaded into the model), or ``(None, None)``
    to start; a folder that holds a run is refused without ``resume``."""
    if not resume:
        if any((trainer.checkpoint_dir / name).is_file() for name in ("last.pt", RECOVERY_FILE)):
            raise CheckpointError(
                f"{trainer.run_dir} already holds a run; pass --resume to continue it or choose another --name"
            )
        return None, None
    latest = latest_checkpoint(trainer.checkpoint_dir, verify)
    if latest is None:
        return None, None
    state, source = latest
    check_resumable(state, source, stages, trainer.config)
    load_model_state(trainer.model, state["model"], source)
    return state, source


def log_start(trainer: Trainer, resume: bool, state: dict | None, source: Path | None) -> None:
    """One line: where the run resumes, or that it starts."""
    if state is None:
        log.info(
            "%sstarting the run in %s",
            f"no checkpoint in {trainer.checkpoint_dir}: " if resume else "",
            trainer.run_dir,
        )
        return
    position = state.get("position")
    where = (
        f"inside epoch {state['epoch'] + 1} after batch {position['batches']}"
        if position
        else f"after epoch {state['epoch']}"
    )
    log.info(
        "resuming from %s: stage %s, %s (step %d)", source, state["stage"], where, state["step"]
    )


def latest_checkpoint(checkpoint_dir: Path, verify: bool) -> tuple[dict, Path] | None:
    """The newest of ``recovery.pt`` and ``last.pt`` (by stage, then step; an epoch end beats a
    recovery checkpoint of the same step), loaded; None when the run has no checkpoint."""
    found = []
    for path in (checkpoint_dir / RECOVERY_FILE, checkpoint_dir / "last.pt"):
        if path.is_file():
            state = load_checkpoint(path, verify)
            order = (STAGES.index(state["stage"]), state["step"], "position" not in state)
            found.append((order, state, path))
    if not found:
        return None
    _, state, path = max(found, key=lambda item: item[0])
    return state, path


def check_resumable(state: dict, source: Path, stages: list[str], config: Config) -> None:
    """A resumed run must be the checkpoint's run: its stage requested, its config unchanged
    except for the keys of RESUME_MAY_CHANGE (run-time switches, epochs, checkpoint cadence)."""
    if state["stage"] not in stages:
        raise CheckpointError(
            f"{source} is from stage {state['stage']!r}, not one of the requested stages {stages}"
        )
    saved = config_from_dict(state["config"]).to_dict()
    differences = [
        f"{key} ({old!r} -> {new!r})"
        for key, old, new in config_differences(saved, config.to_dict(), RESUME_MAY_CHANGE)
    ]
    if differences:
        allowed = ", ".join(
            sorted(
                key
                for key in RESUME_MAY_CHANGE
                if not key.startswith("train.") or key.count(".") == 1
            )
        )
        raise CheckpointError(
            f"{source} was trained with another config: {'; '.join(differences)}; resume with the checkpoint's "
            f"values (only {allowed} and train.<stage>.epochs may change) or start a new --name"
        )


def restore_stage(trainer: Trainer, stage: StageProgress, resume: dict) -> tuple[int, dict | None]:
    """Put back a stage's state from its checkpoint ``resume``: optimisers, schedules, best epoch,
    grad scaler, RNG, step count and (EMA on) the raw weights. Returns the epochs done and the
    place inside the next epoch (a recovery checkpoint's) or None."""
    name, epochs = stage.name, getattr(trainer.config.train, stage.name).epochs
    start_epoch, stage.best, stage.best_epoch = (
        resume["epoch"],
        resume["best_metric"],
        resume["best_epoch"],
    )
    if "optimizers" in resume:
        for key, opt in stage.optimizers.items():
            opt.load_state_dict(resume["optimizers"][key])
    elif start_epoch < epochs:
        raise CheckpointError(
            f"the last checkpoint of stage {name} holds no optimiser state (a finished stage followed by another), "
            f"so it cannot train train.{name}.epochs={epochs} > {start_epoch}"
        )
    for key, sched in stage.schedulers.items():
        sched.load_state_dict(resume["schedulers"][key])
    trainer.scaler.load_state_dict(resume["scaler"])
    set_rng_state(resume["rng"])
    trainer.global_step = resume["step"]
    if trainer.ema is not None and "raw_model" in resume:
        load_model_state(
            trainer.model, resume["raw_model"], "the checkpoint's raw weights (raw_model)"
        )
    return start_epoch, resume.get("position")


def load_stage_best(trainer: Trainer, stage: str) -> None:
    """Load ``<stage>_best.pt``'s weights into the model, when the stage wrote one."""
    best_path = trainer.checkpoint_dir / f"{stage}_best.pt"
    if best_path.is_file():
        load_model_state(trainer.model, load_checkpoint(best_path)["model"], best_path)


def run_status(config: Config) -> str:
    """``"finished"`` (its last.pt ends the last stage that has epochs), ``"interrupted"`` (a checkpoint
    short of that) or ``"new"`` (none): what ``fit(resume=True)`` would find in ``config``'s run folder."""
    folder = config.run_dir / "checkpoints"
    last, recovery = folder / "last.pt", folder / RECOVERY_FILE
    if recovery.is_file():
        return "interrupted"
    if not last.is_file():
        return "new"
    state = load_checkpoint(last)
    stages = [stage for stage in config.stages_to_run() if getattr(config.train, stage).epochs > 0]
    finished = (
        bool(stages)
        and state["stage"] == stages[-1]
        and state["epoch"] >= getattr(config.train, stages[-1]).epochs
    )
    return "finished" if finished else "interrupted"
