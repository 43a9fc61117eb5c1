"""Staged training of DeepMT-DR (a batch's path: docs/ARCHITECTURE.md, "The path of a training batch").

Stages, in the order ``--stage all`` runs them, each resumable and each keeping its own
``<stage>_last.pt`` / ``<stage>_best.pt``:

- ``isr``: ISR + segmentation on HR crops: SR pixel + TV + segmentation-aware loss into the ISR
  net, Dice + focal on the lesion maps of the SR image into both.
- ``seg``: segmentation on HR crops.
- ``cls``: grader on HR + lesion maps (segmentation frozen); the CAM fusion learns to match the
  lesion map (the published MVI loss, which never trained upstream).
- ``joint``: everything from LR: the ISR net gets pixel + TV + segmentation-aware + task-aware
  + grading losses, the grader gets the grading loss; segmentation stays frozen, as published.

``train.input=lr`` makes the seg and cls stages learn from the frozen ISR's output of the LR image
instead of HR (the two-stage baselines of engine/methods.py); with ``model.isr=bicubic`` the ISR
is a parameter-free bicubic upsampler, so the isr stage is skipped and joint trains the grader only.

The :class:`Trainer` runs the stages, their epochs and steps; every other job is in its own file
of engine/: steps.py (the steps and their losses), stage_plan.py (what a stage trains), optim.py
(optimisers, schedules, applying gradients), loaders.py (the batch a step gets), run_folder.py
(lock, checkpoints, logs, resume), reliability.py (signals, non-finite guard), validation.py,
frozen_cache.py, pretrain.py (``train.init_from``); the augmentation is in data/augment.py.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from functools import cached_property, partial
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from engine import (
    distributed,
    frozen_cache,
    loaders,
    optim,
    run_folder,
    stage_plan,
    steps,
    validation,
)
from engine.builders import (
    apply_fast_paths,
    build_dataset,
    build_model,
    grading_class_weights,
    seed_everything,
    select_device,
)
from engine.checkpoint import load_checkpoint, load_model_state
from engine.config import Config, StageConfig
from engine.ema import WeightEMA
from engine.evaluator import (
    below_psnr_floor,
    evaluate,
    is_new_best,
    selection_metric,
    stage_eval_mode,
)
from engine.frozen_cache import FrozenOutputs
from engine.logging import CSVLog, TensorBoardLog
from engine.pretrain import init_checkpoint
from engine.reliability import (
    SYNC_EVERY_STEPS,
    EpochTally,
    NonFiniteGuard,
    Preempted,
    StopSignals,
    TrainingError,
    check_guard,
    out_of_memory_message,
    recovery_due,
    stop_requested,
)
from engine.run_folder import StageProgress, run_status  # noqa: F401 (re-exported)
from engine.runtime import autocast_dtype, autocast_factory, configure_threads, resolve_speed
from engine.stage_plan import TRAINABLE  # noqa: F401 (re-exported)
from engine.steps import eval_mode as _eval_mode  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)


class Trainer:
    """Owns the model, data, optimisers and run folder of one training run."""

    # Set by fit() and train_stage(); train_one_epoch also runs without them (tests, benchmarks).
    signals: StopSignals | None = None
    guard: NonFiniteGuard | None = None
    latest_checkpoint: Path | None = None
    # train.ema_decay: the stage's average of its trained sub-nets (train_stage).
    ema: WeightEMA | None = None
    saved_at: float = 0.0  # time.monotonic() of the last checkpoint written (recovery timer)
    # The joint stage's val_psnr floor (train.joint_max_psnr_drop_db), kept in its checkpoints for --resume.
    psnr_floor: float | None = None

    def __init__(
        self,
        config: Config,
        progress: Callable | None = None,
        datasets: tuple[Dataset, Dataset] | None = None,
    ) -> None:
        """``datasets``: (train, val) when the caller has built them; else built when first used."""
        self.config = config
        self.progress = progress
        self.given_datasets = datasets
        self.threads = configure_threads(config.run.threads)
        seed_everything(config.run.seed, config.run.deterministic)
        self.world, self.device = distributed.setup(select_device(config.run.device))
        if self.device.type == "cuda":
            benchmark = config.run.cudnn_benchmark and not config.run.deterministic
            torch.backends.cudnn.benchmark = benchmark
        # run.amp / run.channels_last "auto" resolved for this device (engine/runtime.py).
        self.speed = resolve_speed(
            config.run.amp, config.run.channels_last, self.device, config.run.amp_dtype
        )
        self.channels_last = self.speed.channels_last
        self.model = apply_fast_paths(
            build_model(config).to(self.device), config, self.world, self.device, self.channels_last
        )
        self.run_dir = config.run_dir
        self.checkpoint_dir = self.run_dir / "checkpoints"
        self.amp_enabled = self.speed.amp
        log.info("speed: %s", self.speed.describe(self.threads))
        self.amp_dtype = autocast_dtype(config.run.amp_dtype)
        self._autocast = autocast_factory(self.device, self.amp_enabled, config.run.amp_dtype)
        self.scaler = torch.amp.GradScaler(
            self.device.type, enabled=self.amp_enabled and self.amp_dtype == torch.float16
        )
        self.global_step = 0
        self.crop_generator: torch.Generator | None = None  # reseeded per epoch (train_one_epoch)
        # Frozen nets' outputs of the training / validation images (train.cache_frozen).
        self.frozen_train: FrozenOutputs | None = None
        self.frozen_val: FrozenOutputs | None = None
        self.csv: CSVLog | None = None
        self.tensorboard: TensorBoardLog | None = None

    @cached_property
    def train_set(self) -> Dataset:
        given = self.given_datasets
        return given[0] if given is not None else build_dataset(self.config, "train")

    @cached_property
    def val_set(self) -> Dataset:
        given = self.given_datasets
        return given[1] if given is not None else build_dataset(self.config, "val")

    @cached_property
    def class_weights(self) -> torch.Tensor | None:
        """CE class weights (``loss.class_weights``, engine/builders.py) on the device."""
        weights = grading_class_weights(self.config, self.train_set)
        return None if weights is None else weights.to(self.device)

    def autocast(self):
        """The run's autocast context (engine/runtime.py's one rule)."""
        return self._autocast()

    def _submodules(self, names: tuple[str, ...]) -> dict[str, nn.Module]:
        """The named sub-nets that exist and have parameters (engine/stage_plan.py)."""
        return stage_plan.trained_modules(self.model, names)

    def untrainable(self, stage: str) -> str | None:
        """Why the model gives ``stage`` nothing to train, or None (engine/stage_plan.py)."""
        return stage_plan.untrainable(self.config, self.model, stage)

    def _prepare_stage(self, stage: str) -> dict[str, torch.optim.Optimizer]:
        """Freeze what the stage does not train and build one Adam per trained sub-net."""
        modules = stage_plan.freeze_for(self.model, stage, self.config)
        run, train = self.config.run, self.config.train
        return optim.build_optimizers(
            modules, getattr(train, stage), run.optimizer_impl, self.device, train.weight_decay
        )

    def _batch(self, batch: dict, stage: str) -> dict:
        """A training batch as the step gets it (engine/loaders.py)."""
        return loaders.device_batch(self, batch, stage)

    # ----------------------------------------------------------------- the steps (engine/steps.py)
    step_isr = steps.step_isr
    step_seg = steps.step_seg
    step_cls = steps.step_cls
    step_joint = steps.step_joint
    # Parts of the joint step that benchmarks call and tests replace.
    _grading_losses = steps.grading_losses
    joint_isr_terms = steps.joint_isr_terms
    _sr_attention = steps.sr_attention

    def stage_step(self, stage: str) -> Callable[[dict], dict[str, torch.Tensor]]:
        """The stage's step, through an explicit table of the methods above (a method a test or a
        benchmark wraps, on the class or on the instance, is the one called)."""
        return {
            "isr": self.step_isr,
            "seg": self.step_seg,
            "cls": self.step_cls,
            "joint": self.step_joint,
        }[stage]

    # ----------------------------------------------------------------- loaders (engine/loaders.py)
    def train_loader(self, stage: str) -> DataLoader:
        """The stage's training loader, built once (workers persist); its sampler is set per epoch."""
        return loaders.train_loader(self, stage)

    def val_loader(self, stage: str) -> DataLoader:
        """The stage's validation images, each evaluated by exactly one process."""
        return loaders.eval_loader(self, self.val_set, stage)

    # ----------------------------------------------------------------- an epoch
    def train_one_epoch(
        self,
        stage: str,
        epoch: int,
        optimizers: dict[str, torch.optim.Optimizer],
        loader: DataLoader | None = None,
        position: dict | None = None,
        save_recovery: Callable[[dict], None] | None = None,
    ) -> dict[str, float]:
        """One epoch of ``stage``; from ``position`` (a recovery checkpoint's place in it) when resumed.

        ``save_recovery(position)`` writes a recovery checkpoint: every ``train.checkpoint_every_steps``
        steps / ``checkpoint_every_minutes`` minutes, and at the step boundary after SIGTERM or
        SIGINT, which then raises :class:`Preempted`. A position holds what the epoch's remaining
        steps depend on beyond the stage's state: batches done (the sampler skips them unloaded),
        the crop/flip generator, the running loss sums.
        """
        settings: StageConfig = getattr(self.config.train, stage)
        self.crop_generator = torch.Generator().manual_seed(
            loaders.stage_seed(self.config, stage) + epoch
        )
        loader = loader if loader is not None else self.train_loader(stage)
        loader.sampler.set_epoch(epoch)
        total = min(
            settings.max_steps or self.config.train.max_steps_per_epoch or len(loader), len(loader)
        )
        tally = self._start_epoch(epoch, loader, position)
        params = [
            p for opt in optimizers.values() for group in opt.param_groups for p in group["params"]
        ]
        step = self.stage_step(stage)
        desc = f"{stage} {epoch + 1}/{settings.epochs}"
        for batch in self._progress_bar(loader, total, tally.done, desc):
            if tally.done >= total:
                break
            losses = self._run_step(step, batch, stage)
            found_inf = self._apply_gradients(optimizers, params, losses, tally.guard)
            self._update_ema(found_inf)
            tally.add(losses, found_inf)
            self.global_step += 1
            if tally.done % SYNC_EVERY_STEPS == 0:
                self._check_guard(tally.guard, stage, epoch)
            self._save_or_stop(stage, epoch, tally, total, save_recovery)
        skipped = self._check_guard(tally.guard, stage, epoch)
        return {**tally.means(), "skipped_steps": skipped}

    def _start_epoch(self, epoch: int, loader: DataLoader, position: dict | None) -> EpochTally:
        """The epoch's tally and guard, at ``position`` when resumed inside the epoch."""
        guard = self.guard if self.guard is not None else NonFiniteGuard(self.device)
        guard.new_epoch()
        tally = EpochTally(guard, torch.zeros((), device=self.device))
        if position is not None:
            loader.sampler.set_epoch(epoch, start=position["batches"] * loader.batch_size)
            self.crop_generator.set_state(position["crop_generator"])
            tally.load(position, self.device)
        return tally

    def _progress_bar(self, loader: DataLoader, total: int, done: int, desc: str):
        if not self.progress:
            return loader
        resumed = {"initial": done} if done else {}
        return self.progress(loader, total=total, desc=desc, **resumed)

    def _run_step(self, step: Callable, batch: dict, stage: str) -> dict[str, torch.Tensor]:
        """The batch onto the device and the stage's step, under autocast; out of memory ends the
        run with the switches that cut memory."""
        try:
            with self.autocast():
                return step(self._batch(batch, stage))
        except torch.OutOfMemoryError:
            first = self.global_step == 0
            raise TrainingError(
                out_of_memory_message(
                    self.config, stage, self.device, self.world.size, self.amp_enabled, first
                )
            ) from None

    def _apply_gradients(
        self, optimizers: dict, params: list, losses: dict, guard: NonFiniteGuard
    ) -> torch.Tensor:
        """Average, check, clip and apply one step's gradients (engine/optim.py); returns the step's
        0/1 non-finite flag."""
        return optim.apply_gradients(
            optimizers, params, losses, guard, self.scaler, self.config.train.clip_grad
        )

    def _update_ema(self, found_inf: torch.Tensor) -> None:
        if self.ema is not None:
            self.ema.update(found_inf)  # a skipped step leaves the average as it is

    def _save_or_stop(
        self,
        stage: str,
        epoch: int,
        tally: EpochTally,
        total: int,
        save_recovery: Callable[[dict], None] | None,
    ) -> None:
        """After a step: a recovery checkpoint when one is due or a stop was asked for, then the stop."""
        stop = self._stop_requested(tally.done)
        due = (
            tally.done < total
            and self.world.is_main
            and recovery_due(self.config.train, tally.since_save, self.saved_at)
        )  # rank 0 alone writes
        if save_recovery is not None and (stop or due):
            save_recovery(tally.position(self.crop_generator))
            tally.since_save = 0
        if stop:
            distributed.barrier()  # rank 0's recovery checkpoint is on disk before any process exits
            raise Preempted(
                f"stopped by {self._signal_name()} in stage {stage}, epoch {epoch + 1}, after batch {tally.done}; "
                f"{self._where_saved()}"
            )

    def _check_guard(self, guard: NonFiniteGuard, stage: str, epoch: int) -> int:
        limit = self.config.train.max_bad_steps
        return check_guard(guard, stage, epoch, limit, self._where_saved())

    def _stop_requested(self, step: int | None = None) -> bool:
        """Whether SIGTERM/SIGINT asked to stop; under torchrun agreed every SYNC_EVERY_STEPS steps."""
        return stop_requested(self.signals, self.world, self.device, step, SYNC_EVERY_STEPS)

    def _signal_name(self) -> str:
        name = self.signals.name if self.signals is not None else ""
        return name or "a signal to another process"

    def _where_saved(self) -> str:
        if self.latest_checkpoint is None:
            return "no checkpoint was written yet"
        return f"{self.latest_checkpoint} holds the run (rerun the same command with --resume to continue)"

    # ----------------------------------------------------------------- validation
    def validate(self, stage: str) -> dict:
        """The stage's validation metrics, of the EMA weights when train.ema_decay is on, with test.tta;
        with model.grade_decoding=thresholds the cls and joint stages first fit the thresholds on the
        training images (engine/validation.py)."""
        mode = stage_eval_mode(stage, self.config.train.input)
        loader = self.val_loader(stage)
        with self.ema.swapped_in() if self.ema is not None else nullcontext():
            if validation.fits_thresholds(self, stage):
                validation.fit_grade_thresholds(self, stage, mode)
            frozen = frozen_cache.frozen_val_lesions(self, stage, mode, loader)
            return evaluate(
                self.model,
                loader,
                self.device,
                mode,
                self.autocast,
                frozen=frozen,
                tta=self.config.test.tta,
            ).metrics

    def _cache_frozen_outputs(self, stage: str) -> None:
        """The stage's frozen outputs of every training image, once (engine/frozen_cache.py)."""
        frozen_cache.cache_frozen_outputs(self, stage)

    # ----------------------------------------------------------------- a stage
    def train_stage(self, stage: str, resume: dict | None = None, final: bool = True) -> None:
        """Train ``stage`` from its start, or from ``resume`` (an epoch-end or a recovery checkpoint).

        ``final``: no later stage follows, so the stage's last checkpoint keeps the optimiser state
        that training it for more epochs needs; a finished earlier stage's does not (run.keep).
        """
        settings: StageConfig = getattr(self.config.train, stage)
        optimizers = self._prepare_stage(stage)
        self._cache_frozen_outputs(stage)
        schedulers = optim.build_schedulers(optimizers, settings)
        progress = StageProgress(stage, optimizers, schedulers, final)
        start_epoch, position = 0, None
        self.guard = NonFiniteGuard(self.device)
        # The stage's EMA starts at its incoming weights (on resume: the checkpoint's average).
        decay = self.config.train.ema_decay
        trained = self._submodules(stage_plan.stage_trainables(self.config, stage))
        self.ema = WeightEMA(self.model, trained, decay) if decay > 0 else None
        if resume is not None:
            start_epoch, position = run_folder.restore_stage(self, progress, resume)
        self.psnr_floor = resume.get("psnr_floor") if resume is not None else None
        has_floor = self.config.train.joint_max_psnr_drop_db is not None
        if resume is None and stage == "joint" and has_floor:
            validation.validate_incoming(self, progress)
        self.saved_at = time.monotonic()
        loader = self.train_loader(stage)
        for epoch in range(start_epoch, settings.epochs):
            self._stage_epoch(progress, epoch, loader, position if epoch == start_epoch else None)
        if self.psnr_floor is not None and progress.best_epoch == 0:
            validation.log_incoming_kept(stage, self.psnr_floor)
        distributed.barrier()  # rank 0's best checkpoint is on disk before anyone reads it
        run_folder.load_stage_best(self, stage)  # the next stage starts from these weights

    def _stage_epoch(
        self, progress: StageProgress, epoch: int, loader: DataLoader, position: dict | None
    ) -> None:
        """One epoch of the stage: train, step the schedules, validate when due, write the row and
        the checkpoints, stop here if asked."""
        stage, started = progress.name, time.perf_counter()
        row = {"stage": stage, "epoch": epoch + 1, "lr": progress.lr}
        save_recovery = partial(run_folder.write_recovery, self, progress, epoch)
        optimizers = progress.optimizers
        row.update(self.train_one_epoch(stage, epoch, optimizers, loader, position, save_recovery))
        for scheduler in progress.schedulers.values():
            scheduler.step()
        is_last = epoch + 1 == getattr(self.config.train, stage).epochs
        every = validation.eval_every(self.config.train, stage)
        if every == 0 and is_last:  # no validation at all: the stage's last weights go on
            validation.fit_stage_thresholds(self, stage)
        elif every > 0 and ((epoch + 1) % every == 0 or is_last):
            self._validate_epoch(progress, epoch, row)
        row["seconds"] = round(time.perf_counter() - started, 2)
        if self.world.is_main:  # one writer; every process holds the same weights
            state = run_folder.stage_state(self, progress, epoch + 1)
            keep_optimizers = progress.final or not is_last
            run_folder.write_epoch(self, stage, row, state, keep_optimizers=keep_optimizers)
        if not (progress.final and is_last) and self._stop_requested():
            raise Preempted(
                f"stopped by {self._signal_name()} after stage {stage}, epoch {epoch + 1}; {self._where_saved()}"
            )

    def _validate_epoch(self, progress: StageProgress, epoch: int, row: dict) -> None:
        """Validate into ``row`` (timed); mark it as the stage's new best (never under the PSNR floor)."""
        stage, started = progress.name, time.perf_counter()
        metrics = self.validate(stage)
        row["val_seconds"] = round(time.perf_counter() - started, 2)
        metric = selection_metric(stage, metrics)
        row.update(validation.val_columns(metrics))
        row["val_selection"] = metric
        if self.psnr_floor is not None:
            row["val_psnr_floor"] = self.psnr_floor
            if below_psnr_floor(metrics, self.psnr_floor):
                log.info(
                    "%s epoch %d cannot be the best checkpoint: val_psnr %.3f dB is under the floor %.3f dB "
                    "(val_selection %.4g)",
                    stage,
                    epoch + 1,
                    row.get("val_psnr", math.nan),
                    self.psnr_floor,
                    metric,
                )
        if is_new_best(metric, progress.best, metrics, self.psnr_floor):
            progress.best, progress.best_epoch = metric, epoch + 1
            row["is_best"] = 1
        stage_plan.set_modes(self.model, stage, self.config)  # evaluate() left all in eval mode

    def fit(self, resume: bool = False, verify: bool = True) -> Path:
        """Run the configured stages; returns the run folder.

        ``resume``: continue the newest checkpoint (``recovery.pt`` inside an epoch, else
        ``last.pt``) when the run has one, else start the run, so a requeued job can always pass
        it; ``verify=False`` skips the SHA-256 check of that checkpoint. One process writes a run
        folder (``train.lock``). SIGTERM and SIGINT save a recovery checkpoint at the next step
        boundary and raise :class:`Preempted`. Under torchrun every process trains; rank 0 alone
        builds a missing dataset cache and writes the run folder.
        """
        lock = run_folder.lock_run_folder(self)
        self.signals = StopSignals()
        try:
            with self.signals:
                self._fit(resume, verify)
        finally:
            self.signals = None
            if self.tensorboard is not None:
                self.tensorboard.close()
            if lock is not None:
                lock.release()
        return self.run_dir

    def _fit(self, resume: bool, verify: bool) -> None:
        stages = self.config.stages_to_run()
        resume_state, source = run_folder.resume_from(self, resume, verify, stages)
        if resume_state is None and self.config.train.init_from:
            init = init_checkpoint(self.config, self._pretrain)
            load_model_state(self.model, load_checkpoint(init)["model"], init)
            log.info("initialised every sub-net from %s", init)
        run_folder.open_run_folder(self)
        if self.world.is_main:
            run_folder.open_logs(self, resume_state)
        run_folder.log_start(self, resume, resume_state, source)
        first = stages.index(resume_state["stage"]) if resume_state is not None else 0
        planned = stage_plan.planned_stages(self, stages[first:])
        for stage in planned:
            self.train_stage(
                stage, resume_state if stage == stages[first] else None, final=stage == planned[-1]
            )

    def _pretrain(self, pre: Config) -> None:
        """train.init_from=synthetic: train or resume the pre-training run ``pre`` (engine/pretrain.py)."""
        Trainer(pre, self.progress).fit(resume=True)
