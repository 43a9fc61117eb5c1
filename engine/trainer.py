"""Staged training of DeepMT-DR (DESIGN.md section 4).

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

Every gradient of a step is computed before any optimiser steps (upstream stepped one optimiser
and then back-propagated through its modified weights).
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from functools import cached_property, partial
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader

from data.augment import AugmentSettings, augment
from data.crop import random_crop, random_flip
from data.lock import FolderLock, LockError
from engine import distributed
from engine.builders import (
    build_dataset,
    build_loader,
    build_model,
    dataset_grades,
    grade_counts,
    seed_everything,
    select_device,
    stage_subset,
)
from engine.checkpoint import (
    RESUME_MAY_CHANGE,
    CheckpointError,
    config_differences,
    link_checkpoint,
    load_checkpoint,
    load_model_state,
    remove_stale_temporaries,
    rng_state,
    save_checkpoint,
    set_rng_state,
    without_optimizers,
)
from engine.config import STAGES, Config, StageConfig, config_from_dict, save_config
from engine.ema import WeightEMA
from engine.evaluator import (
    below_psnr_floor,
    evaluate,
    is_new_best,
    selection_metric,
    stage_eval_mode,
)
from engine.frozen_cache import FrozenOutputs, IndexedDataset, weights_fingerprint
from engine.logging import CSVLog, TensorBoardLog
from engine.pretrain import SYNTHETIC, pretraining_config
from engine.reliability import (
    SYNC_EVERY_STEPS,
    NonFiniteGuard,
    Preempted,
    StopSignals,
    TrainingError,
)
from engine.runtime import configure_threads, resolve_speed
from engine.sampling import balanced_weights
from evaluation.thresholds import fit_thresholds
from models.cam import stage_cams, target_weights
from models.deepmt_dr import any_lesion_map
from models.losses import (
    class_weights_from_counts,
    grading_loss,
    ordinal_loss,
    pixel_loss,
    seg_aware_loss,
    segmentation_loss,
    task_aware_loss,
    tv_loss,
)

log = logging.getLogger(__name__)

# Which sub-nets each stage trains; the others are frozen and kept in eval mode.
TRAINABLE = {
    "isr": ("isr", "seg"),
    "seg": ("seg",),
    "cls": ("grader", "cam_fusion"),
    "joint": ("isr", "grader"),
}
LR_FIELD = {"isr": "lr_isr", "seg": "lr_seg", "grader": "lr_cls", "cam_fusion": "lr_fusion"}
RECOVERY_FILE = "recovery.pt"  # checkpoints/: the one checkpoint written inside an epoch
LOCK_FILE = "train.lock"  # runs/<name>/: held by the run folder's one writer (data/lock.py)
LOCK_POLL_SECONDS = (
    30  # train.init_from=synthetic: how often to look again at a pre-training another run holds
)


def _lr_lambda(settings: StageConfig) -> Callable[[int], float]:
    if settings.schedule == "step":
        return lambda epoch: (
            settings.decay_gamma if settings.decay_epoch and epoch >= settings.decay_epoch else 1.0
        )
    if settings.schedule == "cosine":
        return lambda epoch: (
            0.5 * (1 + math.cos(math.pi * min(epoch, settings.epochs) / max(1, settings.epochs)))
        )
    return lambda epoch: 1.0


class Trainer:
    """Owns the model, data, optimisers and run folder of one training run."""

    # Set by fit() and train_stage(); train_one_epoch also runs without them (tests, benchmarks).
    signals: StopSignals | None = None
    guard: NonFiniteGuard | None = None
    latest_checkpoint: Path | None = None
    ema: WeightEMA | None = (
        None  # train.ema_decay: the stage's average of its trained sub-nets (train_stage)
    )
    saved_at: float = 0.0  # time.monotonic() of the last checkpoint written (recovery timer)
    # The joint stage's val_psnr floor (train.joint_max_psnr_drop_db), kept in its checkpoints for --resume.
    psnr_floor: float | None = None

    def __init__(self, config: Config, progress: Callable | None = None) -> None:
        self.config = config
        self.progress = progress
        self.threads = configure_threads(config.run.threads)
        seed_everything(config.run.seed, config.run.deterministic)
        self.world, self.device = distributed.setup(select_device(config.run.device))
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = (
                config.run.cudnn_benchmark and not config.run.deterministic
            )
        # run.amp / run.channels_last "auto" resolved for this device (engine/runtime.py).
        self.speed = resolve_speed(
            config.run.amp, config.run.channels_last, self.device, config.run.amp_dtype
        )
        self.channels_last = self.speed.channels_last
        self.model = build_model(config).to(self.device)
        self._apply_fast_paths()
        self.run_dir = config.run_dir
        self.checkpoint_dir = self.run_dir / "checkpoints"
        self.amp_enabled = self.speed.amp
        log.info("speed: %s", self.speed.describe(self.threads))
        self.amp_dtype = torch.bfloat16 if config.run.amp_dtype == "bfloat16" else torch.float16
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

    # ----------------------------------------------------------------- setup helpers
    def _apply_fast_paths(self) -> None:
        """The model-side speed switches of ``config.run`` (each off by default, docs/BENCHMARKS.md)."""
        run, model = self.config.run, self.model
        if run.sync_batchnorm and self.world.distributed:
            if self.device.type == "cuda":
                self.model = model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            else:
                log.warning("run.sync_batchnorm needs CUDA; BatchNorm statistics stay per process")
        if model.seg is not None:
            model.seg.checkpoint = self.config.model.seg_checkpoint
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        distributed.broadcast_module(model)  # every process starts from rank 0's weights
        if run.compile:
            # The grader stays eager: Grad-CAM takes gradients w.r.t. its stage outputs, which a
            # compiled module does not allow (autograd.grad reports them unused).
            options = {"backend": run.compile_backend}
            if run.compile_backend == "inductor":
                options["mode"] = run.compile_mode
            for sub_net in (model.isr, model.seg):
                if sub_net is not None:
                    sub_net.compile(**options)

    @cached_property
    def train_set(self):
        return build_dataset(self.config, "train")

    @cached_property
    def val_set(self):
        return build_dataset(self.config, "val")

    @cached_property
    def class_weights(self) -> torch.Tensor | None:
        """CE class weights: inverse training frequency ("auto"), none, or the configured list."""
        setting = self.config.loss.class_weights
        if setting == "none":
            return None
        if setting == "auto":
            weights = class_weights_from_counts(
                grade_counts(self.train_set, self.config.data.num_classes)
            )
        else:
            weights = torch.tensor(setting, dtype=torch.float32)
        return weights.to(self.device)

    def autocast(self):
        if not self.amp_enabled:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _adam(self, params, lr: float) -> torch.optim.Adam:
        """Adam in the configured implementation (``run.optimizer_impl``; auto: fused on CUDA)."""
        impl = self.config.run.optimizer_impl
        if impl == "auto":
            impl = "fused" if self.device.type == "cuda" else "default"
        options = {
            "fused": {"fused": True},
            "foreach": {"foreach": True},
            "for_loop": {"foreach": False},
        }.get(impl, {})
        return torch.optim.Adam(
            params,
            lr=lr,
            betas=(0.9, 0.999),
            weight_decay=self.config.train.weight_decay,
            **options,
        )

    def _submodules(self, names: tuple[str, ...]) -> dict[str, nn.Module]:
        """The named sub-nets that exist and have parameters (an ablated or bicubic one has none)."""
        modules = {name: getattr(self.model, name) for name in names}
        return {
            name: module
            for name, module in modules.items()
            if module is not None and any(True for _ in module.parameters())
        }

    def untrainable(self, stage: str) -> str | None:
        """Why the model gives ``stage`` nothing to train (no epochs, no such sub-net), or None."""
        if getattr(self.config.train, stage).epochs == 0:
            return "no epochs"
        if stage == "isr" and not self._submodules(("isr",)):
            return "no ISR net to train (model.isr=bicubic)"
        if not self._submodules(TRAINABLE[stage]):
            return "nothing to train"
        return None

    def _skip_reason(self, stage: str) -> str | None:
        """Why ``stage`` is skipped: nothing to train, or no image with its labels; None to run it."""
        reason = self.untrainable(stage)
        if reason is None and (
            len(stage_subset(self.train_set, stage)) == 0
            or len(stage_subset(self.val_set, stage)) == 0
        ):
            reason = "no training or validation image carries its labels"
        return reason

    def _prepare_stage(self, stage: str) -> dict[str, torch.optim.Optimizer]:
        """Freeze what the stage does not train and build one Adam per trained sub-net."""
        self._set_modes(stage)
        self.model.requires_grad_(False)
        settings: StageConfig = getattr(self.config.train, stage)
        optimizers = {}
        for name, module in self._submodules(TRAINABLE[stage]).items():
            module.requires_grad_(True)
            optimizers[name] = self._adam(module.parameters(), getattr(settings, LR_FIELD[name]))
        return optimizers

    # ----------------------------------------------------------------- the steps
    def _batch(self, batch: dict, stage: str) -> dict:
        """Move a training batch to the device (images channels-last when the model is), flip if
        ``data.flip``, augment if ``data.augment``, crop for isr/seg (lesion-centred for a share,
        ``data.lesion_crop_share``)."""
        images_format = torch.channels_last if self.channels_last else torch.preserve_format
        batch = {
            key: value.to(
                self.device,
                non_blocking=True,
                memory_format=images_format if key in ("hr", "lr") else torch.preserve_format,
            )
            if torch.is_tensor(value)
            else value
            for key, value in batch.items()
        }
        if self.frozen_train is not None and "index" in batch and stage in ("cls", "joint"):
            batch.update(self.frozen_train.lookup(batch["index"]))  # flipped below with the images
        if self.config.data.flip:
            batch = random_flip(batch, self.crop_generator)
        if self.config.data.augment:
            batch = self._augment(batch)
        if stage in ("isr", "seg"):
            crop = getattr(self.config.train, stage).crop_size
            crop = self.config.data.crop_size if crop is None else crop
            batch = random_crop(
                batch,
                crop,
                self.config.data.scale,
                self.crop_generator,
                self.config.data.lesion_crop_share,
            )
        return batch

    def _augment(self, batch: dict) -> dict:
        """``data.augment``: the batch's random geometry and photometry, its LR image made again
        from the augmented HR with the dataset's degradation (data/augment.py)."""
        data = self.config.data
        settings = AugmentSettings(
            rotation=data.aug_rotation,
            scale=data.aug_scale,
            brightness=data.aug_brightness,
            contrast=data.aug_contrast,
            gamma=data.aug_gamma,
            hue=data.aug_hue,
            blur_sigma=data.aug_blur_sigma,
            blur_prob=data.aug_blur_prob,
        )
        return augment(
            batch,
            settings,
            data.scale,
            self.crop_generator,
            data.blur_kernel,
            data.blur_sigma,
            data.noise_var,
        )

    def step_isr(self, batch: dict) -> dict[str, torch.Tensor]:
        weights, model = self.config.loss, self.model
        sr = model.isr(batch["lr"])
        losses = {"pixel": pixel_loss(sr, batch["hr"], weights.pixel), "tv": tv_loss(sr)}
        total = weights.pixel_weight * losses["pixel"] + weights.tv_weight * losses["tv"]
        if model.use_lesions:
            sr_lesions = model.seg(sr)
            with torch.no_grad():
                hr_lesions = model.seg(batch["hr"])
            losses["seg"] = segmentation_loss(sr_lesions, batch["masks"], batch["mask_valid"])
            losses["seg_aware"] = seg_aware_loss(sr_lesions, hr_lesions)
            total = (
                total
                + weights.seg_weight * losses["seg"]
                + weights.seg_aware_weight * losses["seg_aware"]
            )
        self.scaler.scale(total).backward()
        return {"loss": total, **losses}

    def _stage_image(self, batch: dict) -> torch.Tensor:
        """What the seg and cls stages learn from: HR, or the frozen ISR's output of LR (``train.input``)."""
        if self.config.train.input == "hr":
            return batch["hr"]
        if "stage_image" in batch:  # cached once for the stage (engine/frozen_cache.py)
            return batch["stage_image"]
        with torch.no_grad():
            return self.model.isr(batch["lr"])

    def _frozen_lesions(self, batch: dict, image: torch.Tensor) -> torch.Tensor:
        """The frozen segmentation net's lesion logits of ``image``: cached, or computed without a graph."""
        if "lesion_logits" in batch:
            return batch["lesion_logits"]
        with torch.no_grad():
            return self.model.segment(image)

    def step_seg(self, batch: dict) -> dict[str, torch.Tensor]:
        loss = segmentation_loss(
            self.model.seg(self._stage_image(batch)), batch["masks"], batch["mask_valid"]
        )
        self.scaler.scale(loss).backward()
        return {"loss": loss, "seg": loss}

    def _grading_losses(
        self, logits: torch.Tensor, grades: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The grading loss the grader learns from and its logged parts: cross entropy ("ce", with
        loss.label_smoothing) plus loss.ordinal_weight times the ordinal loss ("ordinal", when on)."""
        weights = self.config.loss
        parts = {"ce": grading_loss(logits, grades, self.class_weights, weights.label_smoothing)}
        if weights.ordinal_weight <= 0:
            return parts["ce"], parts
        parts["ordinal"] = ordinal_loss(logits, grades)
        return parts["ce"] + weights.ordinal_weight * parts["ordinal"], parts

    def step_cls(self, batch: dict) -> dict[str, torch.Tensor]:
        weights, model, image = self.config.loss, self.model, self._stage_image(batch)
        lesion_logits = self._frozen_lesions(batch, image)
        result = model.grade_with_lesions(image, lesion_logits)
        grading, losses = self._grading_losses(result.grade_logits, batch["grade"])
        total = weights.cls_weight * grading
        fusion_used = model.cam_stages == "all" and weights.task_aware_weight > 0
        if model.use_lesions and fusion_used and weights.cam_fusion_weight > 0:
            # Train the CAM fusion towards the lesion map; the CAMs are constants here, so this
            # loss does not reach the grader.
            cams = stage_cams(
                result.grade_logits,
                result.features,
                target_weights(
                    result.grade_logits, self.config.model.cam_target, model.decision_thresholds
                ),
            )
            attention = model.cam_fusion([cam.detach() for cam in cams], image.shape[-2:])
            losses["cam_fusion"] = F.mse_loss(
                attention, any_lesion_map(torch.sigmoid(lesion_logits))
            )
            total = total + weights.cam_fusion_weight * losses["cam_fusion"]
        self.scaler.scale(total).backward()
        return {"loss": total, **losses}

    def _eval_attention(
        self, image: torch.Tensor, lesion_logits: torch.Tensor, keep_graph: bool
    ) -> torch.Tensor:
        """The grader's fused CAM ``[N,1,H,W]`` of ``image`` + its lesion logits, in eval mode.

        Both CAMs of the task-aware loss come from here, so SR and HR are explained by the same
        function: dropout off, BatchNorm on its running statistics (samples independent, nothing
        updated), the grader's weights frozen for the pass (no weight gradient from it). The
        grader's and its submodules' modes and ``requires_grad`` flags are restored as they were.
        ``keep_graph``: the CAM stays differentiable w.r.t. ``image`` and ``lesion_logits`` (the SR
        path, back to the ISR net); else the graph starts at the grader's first stage output
        (what Grad-CAM alone needs) and the CAM comes back detached (the HR target).
        """
        grader = self.model.grader
        trainable = [p for p in grader.parameters() if p.requires_grad]
        start_graph = (
            None if keep_graph else grader.stages()[0].register_forward_hook(_start_graph_here)
        )
        try:
            with _eval_mode(grader):
                for param in trainable:
                    param.requires_grad_(False)
                result = self.model.grade_with_lesions(image, lesion_logits)
                attention = self.model.attention_map(
                    result, self.config.model.cam_target, retain_graph=keep_graph
                )
        finally:
            for param in trainable:
                param.requires_grad_(True)
            if start_graph is not None:
                start_graph.remove()
        return attention if keep_graph else attention.detach()

    def _hr_attention(self, hr: torch.Tensor, hr_lesions: torch.Tensor) -> torch.Tensor:
        """The grader's fused CAM on the HR image (eval mode): the constant target of the task-aware loss."""
        return self._eval_attention(hr, hr_lesions, keep_graph=False)

    def _sr_attention(self, sr: torch.Tensor, sr_lesions: torch.Tensor) -> torch.Tensor:
        """The grader's fused CAM on the SR image, in eval mode like the HR target (not from the
        train-mode forward, whose dropout and batch statistics would make the loss non-zero at
        SR == HR), differentiable back to the ISR net through ``sr`` and ``sr_lesions``."""
        return self._eval_attention(sr, sr_lesions, keep_graph=True)

    def joint_isr_terms(
        self, batch: dict, sr: torch.Tensor, result, grading: torch.Tensor
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """The ISR net's joint-stage loss as its weighted terms, and the unweighted losses to log.

        ``sr`` is the ISR net's output of ``batch["lr"]``, ``result`` the train-mode
        ``grade_image(sr)``, ``grading`` its grading loss. Terms: ``pixel`` (loss.pixel_weight x
        the pixel loss), ``tv``, ``grading`` (loss.cls_weight x grading), ``seg_aware`` and
        ``task_aware`` when on. The ISR net follows their sum; bench/gradient_shares.py measures
        each term's gradient.
        """
        weights, model, hr = self.config.loss, self.model, batch["hr"]
        losses = {"pixel": pixel_loss(sr, hr, weights.pixel), "tv": tv_loss(sr)}
        terms = {
            "pixel": weights.pixel_weight * losses["pixel"],
            "tv": weights.tv_weight * losses["tv"],
            "grading": weights.cls_weight * grading,
        }
        hr_lesions = self._frozen_lesions(batch, hr)
        if model.use_lesions and weights.seg_aware_weight > 0:
            losses["seg_aware"] = seg_aware_loss(result.lesion_logits, hr_lesions)
            terms["seg_aware"] = weights.seg_aware_weight * losses["seg_aware"]
        if weights.task_aware_weight > 0:
            # Both CAMs from an eval-mode grader (the grading loss keeps the train-mode forward).
            # The segmentation net is frozen and in eval mode in this stage, so the SR lesion maps
            # (the forward's, with their graph) and the HR ones are computed alike.
            sr_attention = self._sr_attention(sr, result.lesion_logits)
            losses["task_aware"] = task_aware_loss(sr_attention, self._hr_attention(hr, hr_lesions))
            terms["task_aware"] = weights.task_aware_weight * losses["task_aware"]
        return terms, losses

    def step_joint(self, batch: dict) -> dict[str, torch.Tensor]:
        weights, model = self.config.loss, self.model
        sr = model.isr(batch["lr"])
        result = model.grade_image(sr)
        grading, grading_parts = self._grading_losses(result.grade_logits, batch["grade"])
        isr_params = [p for p in model.isr.parameters() if p.requires_grad]
        if not isr_params:  # bicubic in place of the ISR net: the grading loss is the whole step
            self.scaler.scale(weights.cls_weight * grading).backward()
            return {"loss": weights.cls_weight * grading, **grading_parts}
        grader_params = [p for p in model.grader.parameters() if p.requires_grad]
        terms, isr_losses = self.joint_isr_terms(batch, sr, result, grading)
        losses = {**grading_parts, **isr_losses}
        isr_total = sum(terms.values())
        # Two gradients, both computed before any step: the ISR net follows its whole loss, the
        # grader only the grading loss (the task-aware loss is feedback to the ISR net).
        isr_grads = torch.autograd.grad(self.scaler.scale(isr_total), isr_params, retain_graph=True)
        grader_grads = torch.autograd.grad(
            self.scaler.scale(weights.cls_weight * grading), grader_params
        )
        for param, grad in zip(isr_params + grader_params, isr_grads + grader_grads):
            param.grad = grad
        return {"loss": isr_total, **losses}

    # ----------------------------------------------------------------- loops
    def _stage_seed(self, stage: str) -> int:
        return self.config.run.seed * 1000 + STAGES.index(stage) * 100

    def train_loader(self, stage: str) -> DataLoader:
        """The stage's training loader, built once (workers persist); its sampler is set per epoch."""
        data = self.config.data
        batch = distributed.local_batch_size(
            getattr(self.config.train, stage).batch_size, self.world, f"train.{stage}.batch_size"
        )
        subset = stage_subset(self.train_set, stage)
        return build_loader(
            IndexedDataset(subset),  # "index": the row of the frozen-output cache
            batch,
            True,
            self._stage_seed(stage),
            data.num_workers,
            self.world,
            pin_memory=data.pin_memory and self.device.type == "cuda",
            persistent_workers=data.persistent_workers,
            prefetch_factor=data.prefetch_factor,
            weights=self._sampling_weights(stage, subset),
        )

    def _sampling_weights(self, stage: str, subset) -> torch.Tensor | None:
        """``data.balanced_sampling``: per-image draw weights of the cls and joint stages, else None (a shuffle)."""
        if not self.config.data.balanced_sampling or stage not in ("cls", "joint"):
            return None
        if self.config.loss.class_weights == "auto":
            log.warning(
                "data.balanced_sampling with loss.class_weights=auto corrects the grade imbalance twice "
                "(rare grades then outweigh common ones); loss.class_weights=none balances it once"
            )
        return balanced_weights(dataset_grades(subset))

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
        self.crop_generator = torch.Generator().manual_seed(self._stage_seed(stage) + epoch)
        loader = loader if loader is not None else self.train_loader(stage)
        loader.sampler.set_epoch(epoch)
        total = min(
            settings.max_steps or self.config.train.max_steps_per_epoch or len(loader), len(loader)
        )
        guard = self.guard if self.guard is not None else NonFiniteGuard(self.device)
        guard.new_epoch()
        done, since_save, sums, good = 0, 0, {}, torch.zeros((), device=self.device)
        if position is not None:
            done = position["batches"]
            loader.sampler.set_epoch(epoch, start=done * loader.batch_size)
            self.crop_generator.set_state(position["crop_generator"])
            sums = {key: value.to(self.device) for key, value in position["sums"].items()}
            good = position["good_steps"].to(self.device)
            guard.load_state_dict(position["guard"])
        params = [
            p for opt in optimizers.values() for group in opt.param_groups for p in group["params"]
        ]
        step_fn = getattr(self, f"step_{stage}")
        resumed = {"initial": done} if done else {}
        batches = (
            self.progress(
                loader, total=total, desc=f"{stage} {epoch + 1}/{settings.epochs}", **resumed
            )
            if self.progress
            else loader
        )
        for batch in batches:
            if done >= total:
                break
            try:
                with self.autocast():
                    losses = step_fn(self._batch(batch, stage))
            except torch.OutOfMemoryError:
                raise TrainingError(
                    self._out_of_memory_message(stage, first=self.global_step == 0)
                ) from None
            found_inf = self._apply_gradients(optimizers, params, losses, guard)
            if self.ema is not None:
                self.ema.update(found_inf)  # a skipped step leaves the average as it is
            for (
                key,
                value,
            ) in losses.items():  # a skipped step's losses stay out of the epoch's means
                sums[key] = sums.get(key, 0) + torch.where(
                    found_inf > 0, 0.0, value.detach().float()
                )
            good = good + (1 - found_inf)
            done, since_save = done + 1, since_save + 1
            self.global_step += 1
            if done % SYNC_EVERY_STEPS == 0:
                self._check_guard(guard, stage, epoch)
            stop = self._stop_requested(done)
            due = (
                done < total and self.world.is_main and self._recovery_due(since_save)
            )  # rank 0 alone writes
            if save_recovery is not None and (stop or due):
                save_recovery(
                    {
                        "batches": done,
                        "crop_generator": self.crop_generator.get_state(),
                        "sums": {key: value.cpu() for key, value in sums.items()},
                        "good_steps": good.cpu(),
                        "guard": guard.state_dict(),
                    }
                )
                since_save = 0
            if stop:
                distributed.barrier()  # rank 0's recovery checkpoint is on disk before any process exits
                raise Preempted(
                    f"stopped by {self._signal_name()} in stage {stage}, epoch {epoch + 1}, after batch {done}; "
                    f"{self._where_saved()}"
                )
        skipped = self._check_guard(guard, stage, epoch)
        # Mean over the processes' applied steps (one all-reduce per epoch, not per step).
        totals = distributed.all_reduce_sum(torch.stack([sums[key] for key in sums] + [good]))
        steps_all = float(totals[-1])
        row = {
            f"train_{key}": float(value) / steps_all if steps_all else math.nan
            for key, value in zip(sums, totals[:-1])
        }
        return {**row, "skipped_steps": skipped}

    def _apply_gradients(
        self,
        optimizers: dict[str, torch.optim.Optimizer],
        params: list,
        losses: dict,
        guard: NonFiniteGuard,
    ) -> torch.Tensor:
        """Average, check, clip and apply one step's gradients; returns the step's 0/1 non-finite flag.

        A step with a non-finite loss or gradient changes no weight and no optimiser state. Adam
        ``fused`` (run.optimizer_impl=auto on CUDA) and the float16 GradScaler skip it on the device;
        the other implementations need the flag on the host, which on the CPU is a memory read.
        """
        distributed.average_gradients(params)
        for optimizer in optimizers.values():
            self.scaler.unscale_(optimizer)  # a no-op without float16 autocast
        found_inf = guard.check(losses.values(), (p.grad for p in params if p.grad is not None))
        if self.config.train.clip_grad > 0:
            nn.utils.clip_grad_norm_(params, self.config.train.clip_grad)
        skip_on_host = None
        for optimizer in optimizers.values():
            if self.scaler.is_enabled():
                self.scaler.step(optimizer)  # skips on its own found-inf
            elif getattr(optimizer, "_step_supports_amp_scaling", False):
                optimizer.found_inf = (
                    found_inf  # read by fused Adam on the device (as GradScaler does)
                )
                optimizer.step()
                del optimizer.found_inf
            else:
                if skip_on_host is None:
                    skip_on_host = bool(found_inf.item())
                if not skip_on_host:
                    optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        self.scaler.update()
        return found_inf

    def _check_guard(self, guard: NonFiniteGuard, stage: str, epoch: int) -> int:
        """Read the guard (a host read, every few steps); stop after more than train.max_bad_steps bad steps in a row."""
        skipped, longest = guard.read()
        limit = self.config.train.max_bad_steps
        if longest > limit:
            raise TrainingError(
                f"stopped in stage {stage}, epoch {epoch + 1}: {longest} steps in a row had a non-finite loss or gradient "
                f"(train.max_bad_steps={limit}); none was applied, so {self._where_saved()} with the last good weights; "
                "lower the learning rates or check the data"
            )
        return skipped

    def _stop_requested(self, step: int | None = None) -> bool:
        """Whether SIGTERM/SIGINT asked to stop. Under torchrun every process must stop at the same
        step: they agree by an all-reduce every SYNC_EVERY_STEPS steps (``step``) or when asked (None)."""
        received = self.signals is not None and self.signals.received is not None
        if not self.world.distributed:
            return received
        if step is not None and step % SYNC_EVERY_STEPS:
            return False
        return distributed.any_rank(received, self.device)

    def _signal_name(self) -> str:
        return (
            self.signals.name if self.signals is not None else ""
        ) or "a signal to another process"

    def _where_saved(self) -> str:
        if self.latest_checkpoint is None:
            return "no checkpoint was written yet"
        return f"{self.latest_checkpoint} holds the run (rerun the same command with --resume to continue)"

    def _recovery_due(self, steps_since_save: int) -> bool:
        train = self.config.train
        if train.checkpoint_every_steps and steps_since_save >= train.checkpoint_every_steps:
            return True
        return (
            train.checkpoint_every_minutes > 0
            and time.monotonic() - self.saved_at >= 60 * train.checkpoint_every_minutes
        )

    def _out_of_memory_message(self, stage: str, first: bool) -> str:
        """What ran out, and the switches that cut memory which are not on yet."""
        batch = getattr(self.config.train, stage).batch_size
        switches = (
            []
            if self.config.model.seg_checkpoint
            else ["model.seg_checkpoint=true (recomputes the segmentation net's activations)"]
        )
        if not self.amp_enabled:
            switches.append("run.amp=true (bf16 autocast)")
        switches.append(f"a smaller train.{stage}.batch_size")
        return (
            f"out of memory on {self.device} in {'the first' if first else 'a'} {stage} step (train.{stage}.batch_size={batch}, "
            f"{batch // self.world.size} per process, data.hr_size={self.config.data.hr_size}); to cut memory try "
            + ", ".join(switches)
        )

    def val_loader(self, stage: str) -> DataLoader:
        """The stage's validation images, each evaluated by exactly one process."""
        batch = max(getattr(self.config.train, stage).batch_size // self.world.size, 8)
        pin = self.config.data.pin_memory and self.device.type == "cuda"
        return build_loader(
            stage_subset(self.val_set, stage),
            batch,
            False,
            0,
            self.config.data.num_workers,
            self.world,
            pin_memory=pin,
        )

    def validate(self, stage: str) -> dict:
        """The stage's validation metrics, of the EMA weights when train.ema_decay is on, with test.tta;
        with model.grade_decoding=thresholds the cls and joint stages first fit the thresholds on the
        training images (:meth:`_fit_grade_thresholds`)."""
        mode = stage_eval_mode(stage, self.config.train.input)
        loader = self.val_loader(stage)
        with self.ema.swapped_in() if self.ema is not None else nullcontext():
            if self.config.model.grade_decoding == "thresholds" and stage in ("cls", "joint"):
                self._fit_grade_thresholds(stage, mode)
            frozen = self._frozen_val_lesions(stage, mode, loader)
            return evaluate(
                self.model,
                loader,
                self.device,
                mode,
                self.autocast,
                frozen=frozen,
                tta=self.config.test.tta,
            ).metrics

    def _fit_stage_thresholds(self, stage: str) -> None:
        """train.eval_every=0: the grade thresholds a validation would have fitted (training images only)."""
        if self.config.model.grade_decoding == "thresholds" and stage in ("cls", "joint"):
            with self.ema.swapped_in() if self.ema is not None else nullcontext():
                self._fit_grade_thresholds(stage, stage_eval_mode(stage, self.config.train.input))
            self._set_modes(stage)

    def _fit_grade_thresholds(self, stage: str, mode: str) -> None:
        """Set ``model.grade_thresholds`` to those maximising QWK on the stage's TRAINING images
        (evaluation/thresholds.py), graded as validation grades (``mode``, test.tta), without
        augmentation or gradients; no validation label reaches them."""
        batch = max(getattr(self.config.train, stage).batch_size // self.world.size, 8)
        pin = self.config.data.pin_memory and self.device.type == "cuda"
        loader = build_loader(
            stage_subset(self.train_set, stage),
            batch,
            False,
            0,
            self.config.data.num_workers,
            self.world,
            pin_memory=pin,
        )
        # The cls stage's cached lesion maps of these images are in this loader's order when one process reads them all.
        frozen = self.frozen_train if stage == "cls" and not self.world.distributed else None
        result = evaluate(
            self.model,
            loader,
            self.device,
            mode,
            self.autocast,
            frozen=frozen,
            tta=self.config.test.tta,
        )
        thresholds = fit_thresholds(result.probs, result.grades)
        self.model.grade_thresholds.copy_(thresholds)
        log.info(
            "grade thresholds fitted on %d training images: %s",
            int((result.grades >= 0).sum()),
            ", ".join(f"{value:.3f}" for value in thresholds.tolist()),
        )

    # ----------------------------------------------------------------- frozen outputs, once per stage
    def _cache_plan(self, stage: str) -> tuple[str, list[nn.Module | None]] | None:
        """What the stage's frozen nets compute from each training image ("hr" or "lr": its
        lesion maps, plus the SR image for "lr") and which nets that depends on; None: no cache."""
        if (
            not self.config.train.cache_frozen
            or not self.model.use_lesions
            or stage not in ("cls", "joint")
        ):
            return None
        if stage == "cls" and self.config.train.input == "lr":
            return "lr", [self.model.isr, self.model.seg]
        return "hr", [self.model.seg]

    def _fits_cache(self, count: int, shapes: dict[str, tuple[int, ...]], what: str) -> bool:
        dtype = self.amp_dtype if self.amp_enabled else torch.float32
        needed = FrozenOutputs.bytes_needed(count, shapes, dtype)
        if needed > self.config.train.cache_max_gb * 2**30:
            log.info(
                "not caching %s: %.2f GB > train.cache_max_gb=%g; computing them every step",
                what,
                needed / 2**30,
                self.config.train.cache_max_gb,
            )
            return False
        return True

    def _cache_frozen_outputs(self, stage: str) -> None:
        """Compute the stage's frozen outputs of every training image once (reused by a later stage
        whose frozen nets have the same weights), or drop the cache when the stage has none."""
        plan = self._cache_plan(stage)
        if plan is None:
            self.frozen_train = None
            return
        kind, nets = plan
        subset = stage_subset(self.train_set, stage)  # cls: graded images only; joint: all
        images = getattr(subset, "indices", range(len(subset)))
        key = f"{kind}:{hashlib.sha256(str(list(images)).encode()).hexdigest()}:{weights_fingerprint(nets)}"
        if self.frozen_train is not None and self.frozen_train.fingerprint == key:
            return
        self.frozen_train = None
        dataset = IndexedDataset(subset)
        size, lesions = self.config.data.hr_size, self.model.seg.num_lesions
        shapes = {
            "lesion_logits": (lesions, size, size),
            **({"stage_image": (3, size, size)} if kind == "lr" else {}),
        }
        if not self._fits_cache(len(dataset), shapes, f"the {stage} stage's frozen outputs"):
            return
        batch = getattr(self.config.train, stage).batch_size
        loader = build_loader(
            dataset, batch, False, 0, self.config.data.num_workers
        )  # every process: every image
        memory_format = torch.channels_last if self.channels_last else torch.preserve_format

        def outputs(batch: dict) -> dict[str, torch.Tensor]:
            with self.autocast():
                if kind == "hr":
                    return {
                        "lesion_logits": self.model.segment(
                            batch["hr"].contiguous(memory_format=memory_format)
                        )
                    }
                image = self.model.isr(batch["lr"].contiguous(memory_format=memory_format))
                return {"lesion_logits": self.model.segment(image), "stage_image": image}

        started = time.perf_counter()
        self.frozen_train = FrozenOutputs.compute(loader, outputs, self.device, key, self.progress)
        log.info(
            "cached the frozen nets' outputs of %d %s images in %.1f s",
            len(dataset),
            kind.upper(),
            time.perf_counter() - started,
        )

    def _frozen_val_lesions(
        self, stage: str, mode: str, loader: DataLoader
    ) -> FrozenOutputs | None:
        """The validation images' lesion logits while the segmentation net (and, in LR mode, the
        ISR net) is frozen: the cls stage. Computed at the stage's first validation."""
        if stage != "cls" or not self.config.train.cache_frozen or not self.model.use_lesions:
            return None
        nets = [self.model.seg] + ([self.model.isr] if mode == "lr" else [])
        key = f"{mode}:{weights_fingerprint(nets)}"
        if self.frozen_val is not None and self.frozen_val.fingerprint == key:
            return self.frozen_val
        self.frozen_val = None
        size = self.config.data.hr_size
        if not self._fits_cache(
            len(loader.sampler),
            {"lesion_logits": (self.model.seg.num_lesions, size, size)},
            "validation lesion maps",
        ):
            return None
        self.model.eval()

        def outputs(batch: dict) -> dict[str, torch.Tensor]:
            with self.autocast():  # what evaluate() computes from the same images
                image = self.model.isr(batch["lr"]).float() if mode == "lr" else batch["hr"]
                return {"lesion_logits": self.model.segment(image)}

        self.frozen_val = FrozenOutputs.compute(loader, outputs, self.device, key)
        return self.frozen_val

    def _model_weights(self) -> dict[str, dict[str, torch.Tensor]]:
        """A checkpoint's weights: ``model``, the EMA of the trained sub-nets when train.ema_decay is on
        (what validation scored), and then ``raw_model``, the weights the optimisers step (for resume)."""
        raw = self.model.state_dict()
        if self.ema is None:
            return {"model": raw}
        return {"model": self.ema.weights(raw), "raw_model": raw}

    def _state(
        self, stage: str, epoch: int, optimizers, schedulers, best: float, best_epoch: int
    ) -> dict:
        return {
            "config": self.config.to_dict(),
            **self._model_weights(),
            "optimizers": {name: opt.state_dict() for name, opt in optimizers.items()},
            "schedulers": {name: sched.state_dict() for name, sched in schedulers.items()},
            "scaler": self.scaler.state_dict(),
            "stage": stage,
            "epoch": epoch,
            "step": self.global_step,
            "rng": rng_state(),
            "best_metric": best,
            "best_epoch": best_epoch,
            "psnr_floor": self.psnr_floor,
        }

    def train_stage(self, stage: str, resume: dict | None = None, final: bool = True) -> None:
        """Train ``stage`` from its start, or from ``resume`` (an epoch-end or a recovery checkpoint).

        ``final``: no later stage follows, so the stage's last checkpoint keeps the optimiser state
        that training it for more epochs needs; a finished earlier stage's does not (run.keep).
        """
        settings: StageConfig = getattr(self.config.train, stage)
        optimizers = self._prepare_stage(stage)
        self._cache_frozen_outputs(stage)
        schedulers = {
            name: torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(settings))
            for name, opt in optimizers.items()
        }
        start_epoch, best, best_epoch, position = 0, -math.inf, 0, None
        self.guard = NonFiniteGuard(self.device)
        # The stage's EMA starts at its incoming weights (on resume: the checkpoint's average).
        decay = self.config.train.ema_decay
        self.ema = (
            WeightEMA(self.model, self._submodules(TRAINABLE[stage]), decay) if decay > 0 else None
        )
        if resume is not None:
            start_epoch, best, best_epoch = (
                resume["epoch"],
                resume["best_metric"],
                resume["best_epoch"],
            )
            position = resume.get("position")
            if "optimizers" in resume:
                for name, opt in optimizers.items():
                    opt.load_state_dict(resume["optimizers"][name])
            elif start_epoch < settings.epochs:
                raise CheckpointError(
                    f"the last checkpoint of stage {stage} holds no optimiser state (a finished stage followed by another), "
                    f"so it cannot train train.{stage}.epochs={settings.epochs} > {start_epoch}"
                )
            for name, sched in schedulers.items():
                sched.load_state_dict(resume["schedulers"][name])
            self.scaler.load_state_dict(resume["scaler"])
            set_rng_state(resume["rng"])
            self.global_step = resume["step"]
            if self.ema is not None and "raw_model" in resume:
                load_model_state(
                    self.model, resume["raw_model"], "the checkpoint's raw weights (raw_model)"
                )
        self.psnr_floor = resume.get("psnr_floor") if resume is not None else None
        if (
            resume is None
            and stage == "joint"
            and self.config.train.joint_max_psnr_drop_db is not None
        ):
            best = self._validate_incoming(stage, optimizers, schedulers)
        self.saved_at = time.monotonic()
        loader = self.train_loader(stage)
        for epoch in range(start_epoch, settings.epochs):
            started = time.perf_counter()
            row = {
                "stage": stage,
                "epoch": epoch + 1,
                "lr": optimizers[next(iter(optimizers))].param_groups[0]["lr"],
            }
            save_recovery = partial(
                self._write_recovery, stage, epoch, optimizers, schedulers, best, best_epoch
            )
            row.update(
                self.train_one_epoch(
                    stage,
                    epoch,
                    optimizers,
                    loader,
                    position if epoch == start_epoch else None,
                    save_recovery,
                )
            )
            for scheduler in schedulers.values():
                scheduler.step()
            is_last = epoch + 1 == settings.epochs
            every = self.config.train.eval_every
            if every == 0 and is_last:  # no validation at all: the stage's last weights go on
                self._fit_stage_thresholds(stage)
            elif every > 0 and ((epoch + 1) % every == 0 or is_last):
                metrics = self.validate(stage)
                metric = selection_metric(stage, metrics)
                row.update(_flat_val_metrics(metrics))
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
                if is_new_best(metric, best, metrics, self.psnr_floor):
                    best, best_epoch = metric, epoch + 1
                    row["is_best"] = 1
                self._set_modes(stage)  # evaluate() left everything in eval mode
            row["seconds"] = round(time.perf_counter() - started, 2)
            if self.world.is_main:  # one writer; every process holds the same weights
                state = self._state(stage, epoch + 1, optimizers, schedulers, best, best_epoch)
                self._write_epoch(stage, row, state, keep_optimizers=final or not is_last)
            if not (final and is_last) and self._stop_requested():
                raise Preempted(
                    f"stopped by {self._signal_name()} after stage {stage}, epoch {epoch + 1}; {self._where_saved()}"
                )
        if self.psnr_floor is not None and best_epoch == 0:
            log.info(
                "%s stage: no epoch at or above the PSNR floor %.3f dB graded better than the incoming weights: "
                "its best checkpoint is the incoming weights (epoch 0)",
                stage,
                self.psnr_floor,
            )
        distributed.barrier()  # rank 0's best checkpoint is on disk before anyone reads it
        best_path = self.checkpoint_dir / f"{stage}_best.pt"
        if best_path.is_file():
            # The next stage starts from this stage's best weights.
            load_model_state(self.model, load_checkpoint(best_path)["model"], best_path)

    def _validate_incoming(self, stage: str, optimizers, schedulers) -> float:
        """train.joint_max_psnr_drop_db: validate the weights the stage starts from once (the PSNR the
        ISR stage reached), set the floor to their val_psnr minus the drop, and make them epoch 0 of
        log.csv and the stage's best checkpoint until a better-grading epoch at or above the floor.
        Returns their selection metric (-inf when not finite)."""
        started = time.perf_counter()
        metrics = self.validate(stage)
        self._set_modes(stage)  # evaluate() left everything in eval mode
        drop = self.config.train.joint_max_psnr_drop_db
        psnr = metrics.get("sr", {}).get("sr", {}).get("psnr", math.nan)
        self.psnr_floor = psnr - drop
        metric = selection_metric(stage, metrics)
        log.info(
            "%s stage: the incoming weights validate at val_psnr %.3f dB, val_selection %.4g; PSNR floor %.3f dB "
            "(train.joint_max_psnr_drop_db=%g)",
            stage,
            psnr,
            metric,
            self.psnr_floor,
            drop,
        )
        best = metric if math.isfinite(metric) else -math.inf
        row = {
            "stage": stage,
            "epoch": 0,
            "lr": optimizers[next(iter(optimizers))].param_groups[0]["lr"],
            **_flat_val_metrics(metrics),
            "val_selection": metric,
            "val_psnr_floor": self.psnr_floor,
            "is_best": 1,
            "seconds": round(time.perf_counter() - started, 2),
        }
        if self.world.is_main:
            self._write_epoch(stage, row, self._state(stage, 0, optimizers, schedulers, best, 0))
        return best

    def _write_recovery(
        self,
        stage: str,
        epoch: int,
        optimizers,
        schedulers,
        best: float,
        best_epoch: int,
        position: dict,
    ) -> None:
        """The recovery checkpoint (rank 0): the stage's state inside epoch ``epoch`` at ``position``;
        one file, replaced each time, removed at the epoch's end."""
        if not self.world.is_main:
            return
        state = {
            **self._state(stage, epoch, optimizers, schedulers, best, best_epoch),
            "position": position,
        }
        self.latest_checkpoint = save_checkpoint(state, self.checkpoint_dir / RECOVERY_FILE)
        self.saved_at = time.monotonic()
        log.info(
            "recovery checkpoint: stage %s, epoch %d, batch %d",
            stage,
            epoch + 1,
            position["batches"],
        )

    def _write_epoch(
        self, stage: str, row: dict, state: dict, keep_optimizers: bool = True
    ) -> None:
        """CSV row, TensorBoard scalars and log line, then the checkpoints (docs/RELIABILITY.md).

        The row comes first: a resumed run drops rows past its checkpoint and writes them again.
        ``<stage>_best.pt`` (no optimiser state) when the epoch is the best; ``<stage>_last.pt``,
        with optimiser state when ``keep_optimizers``; the ``best.pt``/``last.pt`` links; run.keep's
        epoch snapshots. The recovery file is stale after that and goes.
        """
        self.csv.write(row)
        self.tensorboard.scalars(
            {k: v for k, v in row.items() if k not in ("stage", "epoch")},
            self.global_step,
            f"{stage}/",
        )
        log.info(
            "%s",
            " ".join(
                f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()
            ),
        )
        folder = self.checkpoint_dir
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
        if self.config.run.keep:
            snapshot = folder / f"{stage}_epoch{state['epoch']:03d}.pt"
            if row.get("is_best"):
                link_checkpoint(best, snapshot)
            else:
                save_checkpoint(weights, snapshot)
            snapshots = sorted(
                folder.glob(f"{stage}_epoch*.pt"),
                key=lambda path: int(path.stem.rsplit("epoch", 1)[1]),
            )
            for old in snapshots[: -self.config.run.keep]:
                old.unlink()
        (folder / RECOVERY_FILE).unlink(missing_ok=True)
        self.latest_checkpoint, self.saved_at = folder / "last.pt", time.monotonic()

    def _set_modes(self, stage: str) -> None:
        """Train mode for the sub-nets the stage trains, eval mode (frozen BN statistics) for the rest."""
        self.model.eval()
        for module in self._submodules(TRAINABLE[stage]).values():
            module.train()

    def fit(self, resume: bool = False, verify: bool = True) -> Path:
        """Run the configured stages; returns the run folder.

        ``resume``: continue the newest checkpoint (``recovery.pt`` inside an epoch, else
        ``last.pt``) when the run has one, else start the run, so a requeued job can always pass
        it; ``verify=False`` skips the SHA-256 check of that checkpoint. One process writes a run
        folder (``train.lock``). SIGTERM and SIGINT save a recovery checkpoint at the next step
        boundary and raise :class:`Preempted`. Under torchrun every process trains; rank 0 alone
        builds a missing dataset cache and writes the run folder.
        """
        lock = self._lock_run_folder()
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

    def _lock_run_folder(self) -> FolderLock | None:
        """Rank 0 locks the run folder and clears files half-written by killed runs; if it cannot lock,
        every process stops."""
        lock, error = None, None
        if self.world.is_main:
            try:
                lock = FolderLock(self.run_dir / LOCK_FILE, f"run folder {self.run_dir}").acquire()
            except LockError as caught:
                error = caught
        if distributed.any_rank(error is not None, self.device):
            raise error or LockError(
                f"run folder {self.run_dir} is in use by another run (rank 0 could not lock it)"
            )
        if self.world.is_main:
            for stale in remove_stale_temporaries(self.checkpoint_dir):
                log.info("removed %s, half-written by a run that was killed", stale)
        return lock

    def _fit(self, resume: bool, verify: bool) -> None:
        stages = self.config.stages_to_run()
        resume_state, source, first = None, None, 0
        if resume:
            latest = self._latest_checkpoint(verify)
            if latest is not None:
                resume_state, source = latest
                self._check_resumable(resume_state, source, stages)
                load_model_state(self.model, resume_state["model"], source)
                first = stages.index(resume_state["stage"])
        elif any((self.checkpoint_dir / name).is_file() for name in ("last.pt", RECOVERY_FILE)):
            raise CheckpointError(
                f"{self.run_dir} already holds a run; pass --resume to continue it or choose another --name"
            )
        if resume_state is None and self.config.train.init_from:
            init = self._init_checkpoint()
            load_model_state(self.model, load_checkpoint(init)["model"], init)
            log.info("initialised every sub-net from %s", init)
        distributed.barrier()  # every process has checked the folder before rank 0 writes to it
        if self.world.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(
                self.config,
                self.run_dir / "config.yaml",
                note=f"resolved here: {self.speed.describe(self.threads)}",
            )
            self._load_datasets()  # a missing cache is built here, by rank 0 alone
        distributed.barrier()
        self._load_datasets()
        if self.world.is_main:
            self.csv = CSVLog(self.run_dir / "log.csv")
            # Rows past the checkpoint (written just before a kill) are trained and written again.
            reached = (
                (STAGES.index(resume_state["stage"]), resume_state["epoch"])
                if resume_state is not None
                else (-1, 0)
            )
            self.csv.keep_rows(
                lambda row: (STAGES.index(row["stage"]), int(row["epoch"])) <= reached
            )
            self.tensorboard = TensorBoardLog(self.run_dir)
        if resume_state is not None:
            position = resume_state.get("position")
            where = (
                f"inside epoch {resume_state['epoch'] + 1} after batch {position['batches']}"
                if position
                else f"after epoch {resume_state['epoch']}"
            )
            log.info(
                "resuming from %s: stage %s, %s (step %d)",
                source,
                resume_state["stage"],
                where,
                resume_state["step"],
            )
        else:
            log.info(
                "%sstarting the run in %s",
                f"no checkpoint in {self.checkpoint_dir}: " if resume else "",
                self.run_dir,
            )
        planned = []
        for stage in stages[first:]:
            reason = self._skip_reason(stage)
            if reason is None:
                planned.append(stage)
            else:
                log.info("skipping stage %s: %s", stage, reason)
        for stage in planned:
            self.train_stage(
                stage, resume_state if stage == stages[first] else None, final=stage == planned[-1]
            )

    def _init_checkpoint(self) -> Path:
        """The checkpoint train.init_from names: a file, or the synthetic pre-training's best.pt."""
        value = self.config.train.init_from
        if value == SYNTHETIC:
            return self._synthetic_init()
        if not Path(value).is_file():
            raise CheckpointError(
                f"train.init_from={value}: no such checkpoint file; pass a checkpoint .pt or "
                f"{SYNTHETIC} (pre-train this model on the embedded dataset first)"
            )
        return Path(value)

    def _synthetic_init(self) -> Path:
        """train.init_from=synthetic: the best.pt of this config's pre-training run (engine/pretrain.py),
        reused when finished, else trained or resumed here by a nested Trainer (after waiting while
        another run trains it). The global RNG state is restored after it, so this run trains the
        same whether its pre-training ran now or before."""
        pre = pretraining_config(self.config)
        rng = rng_state()
        while True:
            status = run_status(pre)
            if status == "finished":
                log.info(
                    "train.init_from=%s: reusing the finished pre-training run %s",
                    SYNTHETIC,
                    pre.run_dir,
                )
                break
            log.info(
                "train.init_from=%s: %s pre-training run %s",
                SYNTHETIC,
                "resuming the interrupted" if status == "interrupted" else "starting the",
                pre.run_dir,
            )
            try:
                Trainer(pre, self.progress).fit(resume=True)
                break
            except LockError as busy:
                log.info("%s; looking again in %d s", busy, LOCK_POLL_SECONDS)
                time.sleep(LOCK_POLL_SECONDS)
        set_rng_state(rng)
        best = pre.run_dir / "checkpoints" / "best.pt"
        if not best.is_file():
            raise CheckpointError(
                f"train.init_from={SYNTHETIC}: the pre-training run {pre.run_dir} wrote no best.pt"
            )
        return best

    def _latest_checkpoint(self, verify: bool) -> tuple[dict, Path] | None:
        """The newest of ``recovery.pt`` and ``last.pt`` (by stage, then step; an epoch end beats a
        recovery checkpoint of the same step), loaded; None when the run has no checkpoint."""
        found = []
        for path in (self.checkpoint_dir / RECOVERY_FILE, self.checkpoint_dir / "last.pt"):
            if path.is_file():
                state = load_checkpoint(path, verify)
                found.append(
                    (
                        (STAGES.index(state["stage"]), state["step"], "position" not in state),
                        state,
                        path,
                    )
                )
        if not found:
            return None
        _, state, path = max(found, key=lambda item: item[0])
        return state, path

    def _check_resumable(self, state: dict, source: Path, stages: list[str]) -> None:
        """A resumed run must be the checkpoint's run: its stage requested, its config unchanged
        except for the keys of RESUME_MAY_CHANGE (run-time switches, epochs, checkpoint cadence)."""
        if state["stage"] not in stages:
            raise CheckpointError(
                f"{source} is from stage {state['stage']!r}, not one of the requested stages {stages}"
            )
        differences = config_differences(
            config_from_dict(state["config"]).to_dict(), self.config.to_dict()
        )
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

    def _load_datasets(self) -> None:
        for dataset in (self.train_set, self.val_set):
            if hasattr(
                dataset, "materialize"
            ):  # render an in-memory dataset once, before timing epochs
                dataset.materialize(progress=self.progress is not None and self.world.is_main)


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


@contextmanager
def _eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """``module`` in eval mode inside the block; every submodule's ``training`` flag restored after,
    exactly as it was (a frozen BatchNorm inside a training grader stays frozen)."""
    modes = [(sub, sub.training) for sub in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for sub, training in modes:
            sub.training = training


def _start_graph_here(_module: nn.Module, _inputs, output: torch.Tensor) -> torch.Tensor:
    """Forward hook: autograd records from this stage output on (returned as a view of a leaf that
    requires grad, so it is not itself a leaf, which module hooks such as FlopCounterMode's reject)."""
    if output.requires_grad:
        return output
    return output.detach().requires_grad_(True).view_as(output)


def _flat_val_metrics(metrics: dict) -> dict[str, float]:
    """The few validation numbers worth a CSV column."""
    row = {}
    grading = metrics.get("grading")
    if grading:
        row.update(
            {f"val_{key}": grading[key] for key in ("accuracy", "qwk", "macro_f1", "macro_auc")}
        )
    if "sr" in metrics:
        row["val_psnr"] = metrics["sr"]["sr"]["psnr"]
        row["val_psnr_bicubic"] = metrics["sr"]["bicubic"]["psnr"]
    if "segmentation" in metrics:
        row["val_mean_aupr"] = metrics["segmentation"]["mean"]["aupr"]
    return row
