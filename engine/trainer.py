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

import logging
import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from functools import cached_property
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader

from data.crop import random_crop, random_flip
from engine import distributed
from engine.builders import (
    build_dataset,
    build_loader,
    build_model,
    grade_counts,
    seed_everything,
    select_device,
    stage_subset,
)
from engine.checkpoint import (
    CheckpointError,
    link_checkpoint,
    load_checkpoint,
    load_model_state,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from engine.config import STAGES, Config, StageConfig, save_config
from engine.evaluator import evaluate, selection_metric, stage_eval_mode
from engine.logging import CSVLog, TensorBoardLog
from models.cam import stage_cams, target_weights
from models.deepmt_dr import any_lesion_map
from models.losses import (
    class_weights_from_counts,
    grading_loss,
    pixel_loss,
    seg_aware_loss,
    segmentation_loss,
    task_aware_loss,
    tv_loss,
)

log = logging.getLogger(__name__)

# Which sub-nets each stage trains; the others are frozen and kept in eval mode.
TRAINABLE = {"isr": ("isr", "seg"), "seg": ("seg",), "cls": ("grader", "cam_fusion"), "joint": ("isr", "grader")}
LR_FIELD = {"isr": "lr_isr", "seg": "lr_seg", "grader": "lr_cls", "cam_fusion": "lr_fusion"}


def _lr_lambda(settings: StageConfig) -> Callable[[int], float]:
    if settings.schedule == "step":
        return lambda epoch: settings.decay_gamma if settings.decay_epoch and epoch >= settings.decay_epoch else 1.0
    if settings.schedule == "cosine":
        return lambda epoch: 0.5 * (1 + math.cos(math.pi * min(epoch, settings.epochs) / max(1, settings.epochs)))
    return lambda epoch: 1.0


class Trainer:
    """Owns the model, data, optimisers and run folder of one training run."""

    def __init__(self, config: Config, progress: Callable | None = None) -> None:
        self.config = config
        self.progress = progress
        if config.run.threads:
            torch.set_num_threads(config.run.threads)
        seed_everything(config.run.seed, config.run.deterministic)
        self.world, self.device = distributed.setup(select_device(config.run.device))
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = config.run.cudnn_benchmark and not config.run.deterministic
        self.model = build_model(config).to(self.device)
        self._apply_fast_paths()
        self.run_dir = config.run_dir
        self.checkpoint_dir = self.run_dir / "checkpoints"
        self.amp_enabled = config.run.amp
        self.amp_dtype = torch.bfloat16 if config.run.amp_dtype == "bfloat16" else torch.float16
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_enabled and self.amp_dtype == torch.float16)
        self.global_step = 0
        self.crop_generator: torch.Generator | None = None  # reseeded per epoch (train_one_epoch)
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
        if run.channels_last:
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
            weights = class_weights_from_counts(grade_counts(self.train_set, self.config.data.num_classes))
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
        options = {"fused": {"fused": True}, "foreach": {"foreach": True}, "for_loop": {"foreach": False}}.get(impl, {})
        return torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999), weight_decay=self.config.train.weight_decay, **options)

    def _submodules(self, names: tuple[str, ...]) -> dict[str, nn.Module]:
        """The named sub-nets that exist and have parameters (an ablated or bicubic one has none)."""
        modules = {name: getattr(self.model, name) for name in names}
        return {name: module for name, module in modules.items() if module is not None and any(True for _ in module.parameters())}

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
        if reason is None and (len(stage_subset(self.train_set, stage)) == 0 or len(stage_subset(self.val_set, stage)) == 0):
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
        ``data.flip``, crop for isr/seg."""
        images_format = torch.channels_last if self.config.run.channels_last else torch.preserve_format
        batch = {
            key: value.to(self.device, non_blocking=True, memory_format=images_format if key in ("hr", "lr") else torch.preserve_format)
            if torch.is_tensor(value)
            else value
            for key, value in batch.items()
        }
        if self.config.data.flip:
            batch = random_flip(batch, self.crop_generator)
        if stage in ("isr", "seg"):
            crop = getattr(self.config.train, stage).crop_size
            crop = self.config.data.crop_size if crop is None else crop
            batch = random_crop(batch, crop, self.config.data.scale, self.crop_generator)
        return batch

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
            total = total + weights.seg_weight * losses["seg"] + weights.seg_aware_weight * losses["seg_aware"]
        self.scaler.scale(total).backward()
        return {"loss": total, **losses}

    def _stage_image(self, batch: dict) -> torch.Tensor:
        """What the seg and cls stages learn from: HR, or the frozen ISR's output of LR (``train.input``)."""
        if self.config.train.input == "hr":
            return batch["hr"]
        with torch.no_grad():
            return self.model.isr(batch["lr"])

    def step_seg(self, batch: dict) -> dict[str, torch.Tensor]:
        loss = segmentation_loss(self.model.seg(self._stage_image(batch)), batch["masks"], batch["mask_valid"])
        self.scaler.scale(loss).backward()
        return {"loss": loss, "seg": loss}

    def step_cls(self, batch: dict) -> dict[str, torch.Tensor]:
        weights, model, image = self.config.loss, self.model, self._stage_image(batch)
        with torch.no_grad():
            lesion_logits = model.segment(image)
        result = model.grade_with_lesions(image, lesion_logits)
        losses = {"ce": grading_loss(result.grade_logits, batch["grade"], self.class_weights)}
        total = weights.cls_weight * losses["ce"]
        fusion_used = model.cam_stages == "all" and weights.task_aware_weight > 0
        if model.use_lesions and fusion_used and weights.cam_fusion_weight > 0:
            # Train the CAM fusion towards the lesion map; the CAMs are constants here, so this
            # loss does not reach the grader.
            cams = stage_cams(result.grade_logits, result.features, target_weights(result.grade_logits, self.config.model.cam_target))
            attention = model.cam_fusion([cam.detach() for cam in cams], image.shape[-2:])
            losses["cam_fusion"] = F.mse_loss(attention, any_lesion_map(torch.sigmoid(lesion_logits)))
            total = total + weights.cam_fusion_weight * losses["cam_fusion"]
        self.scaler.scale(total).backward()
        return {"loss": total, **losses}

    def _hr_attention(self, hr: torch.Tensor, hr_lesions: torch.Tensor) -> torch.Tensor:
        """The grader's fused CAM on the HR image: the constant target of the task-aware loss.

        No graph beyond what Grad-CAM needs: the grader's weights are frozen for this pass and
        the graph starts at its first stage's output (nothing is kept for weight gradients).
        """
        grader = self.model.grader
        trainable = [p for p in grader.parameters() if p.requires_grad]
        start_graph = grader.stages()[0].register_forward_hook(_start_graph_here)
        grader.eval()
        try:
            for param in trainable:
                param.requires_grad_(False)
            result = self.model.grade_with_lesions(hr, hr_lesions)
            attention = self.model.attention_map(result, self.config.model.cam_target, retain_graph=False)
        finally:
            for param in trainable:
                param.requires_grad_(True)
            start_graph.remove()
            grader.train()
        return attention.detach()

    def step_joint(self, batch: dict) -> dict[str, torch.Tensor]:
        weights, model = self.config.loss, self.model
        lr, hr = batch["lr"], batch["hr"]
        sr = model.isr(lr)
        result = model.grade_image(sr)
        ce = grading_loss(result.grade_logits, batch["grade"], self.class_weights)
        isr_params = [p for p in model.isr.parameters() if p.requires_grad]
        if not isr_params:  # bicubic in place of the ISR net: the grader's CE is the whole step
            self.scaler.scale(weights.cls_weight * ce).backward()
            return {"loss": weights.cls_weight * ce, "ce": ce}
        grader_params = [p for p in model.grader.parameters() if p.requires_grad]
        losses = {"ce": ce, "pixel": pixel_loss(sr, hr, weights.pixel), "tv": tv_loss(sr)}
        isr_total = weights.pixel_weight * losses["pixel"] + weights.tv_weight * losses["tv"] + weights.cls_weight * losses["ce"]
        with torch.no_grad():
            hr_lesions = model.segment(hr)
        if model.use_lesions and weights.seg_aware_weight > 0:
            losses["seg_aware"] = seg_aware_loss(result.lesion_logits, hr_lesions)
            isr_total = isr_total + weights.seg_aware_weight * losses["seg_aware"]
        if weights.task_aware_weight > 0:
            sr_attention = model.attention_map(result, self.config.model.cam_target, retain_graph=True)
            losses["task_aware"] = task_aware_loss(sr_attention, self._hr_attention(hr, hr_lesions))
            isr_total = isr_total + weights.task_aware_weight * losses["task_aware"]
        # Two gradients, both computed before any step: the ISR net follows its whole loss, the
        # grader only the grading loss (the task-aware loss is feedback to the ISR net).
        isr_grads = torch.autograd.grad(self.scaler.scale(isr_total), isr_params, retain_graph=True)
        grader_grads = torch.autograd.grad(self.scaler.scale(weights.cls_weight * losses["ce"]), grader_params)
        for param, grad in zip(isr_params + grader_params, isr_grads + grader_grads):
            param.grad = grad
        return {"loss": isr_total, **losses}

    # ----------------------------------------------------------------- loops
    def _stage_seed(self, stage: str) -> int:
        return self.config.run.seed * 1000 + STAGES.index(stage) * 100

    def train_loader(self, stage: str) -> DataLoader:
        """The stage's training loader, built once (workers persist); its sampler is set per epoch."""
        data = self.config.data
        batch = distributed.local_batch_size(getattr(self.config.train, stage).batch_size, self.world, f"train.{stage}.batch_size")
        return build_loader(
            stage_subset(self.train_set, stage),
            batch,
            True,
            self._stage_seed(stage),
            data.num_workers,
            self.world,
            pin_memory=data.pin_memory and self.device.type == "cuda",
            persistent_workers=data.persistent_workers,
            prefetch_factor=data.prefetch_factor,
        )

    def train_one_epoch(
        self, stage: str, epoch: int, optimizers: dict[str, torch.optim.Optimizer], loader: DataLoader | None = None
    ) -> dict[str, float]:
        settings: StageConfig = getattr(self.config.train, stage)
        seed = self._stage_seed(stage) + epoch
        self.crop_generator = torch.Generator().manual_seed(seed)
        loader = loader if loader is not None else self.train_loader(stage)
        loader.sampler.set_epoch(epoch)
        max_steps = self.config.train.max_steps_per_epoch or len(loader)
        params = [p for opt in optimizers.values() for group in opt.param_groups for p in group["params"]]
        step_fn = getattr(self, f"step_{stage}")
        sums: dict[str, torch.Tensor] = {}
        steps = 0
        batches = self.progress(loader, total=min(max_steps, len(loader)), desc=f"{stage} {epoch + 1}/{settings.epochs}") if self.progress else loader
        for batch in batches:
            if steps >= max_steps:
                break
            with self.autocast():
                losses = step_fn(self._batch(batch, stage))
            distributed.average_gradients(params)
            if self.config.train.clip_grad > 0:
                for optimizer in optimizers.values():
                    self.scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(params, self.config.train.clip_grad)
            for optimizer in optimizers.values():
                self.scaler.step(optimizer)
                optimizer.zero_grad(set_to_none=True)
            self.scaler.update()
            for key, value in losses.items():
                sums[key] = sums.get(key, 0) + value.detach().float()
            steps += 1
            self.global_step += 1
        # Mean over the processes' steps (one all-reduce per epoch, not per step).
        totals = distributed.all_reduce_sum(torch.stack([sums[key] for key in sums] + [torch.tensor(float(steps), device=self.device)]))
        steps_all = float(totals[-1])
        return {f"train_{key}": float(value) / max(steps_all, 1) for key, value in zip(sums, totals[:-1])}

    def val_loader(self, stage: str) -> DataLoader:
        """The stage's validation images, each evaluated by exactly one process."""
        batch = max(getattr(self.config.train, stage).batch_size // self.world.size, 8)
        pin = self.config.data.pin_memory and self.device.type == "cuda"
        return build_loader(stage_subset(self.val_set, stage), batch, False, 0, self.config.data.num_workers, self.world, pin_memory=pin)

    def validate(self, stage: str) -> dict:
        mode = stage_eval_mode(stage, self.config.train.input)
        return evaluate(self.model, self.val_loader(stage), self.device, mode, self.autocast).metrics

    def _state(self, stage: str, epoch: int, optimizers, schedulers, best: float, best_epoch: int) -> dict:
        return {
            "config": self.config.to_dict(),
            "model": self.model.state_dict(),
            "optimizers": {name: opt.state_dict() for name, opt in optimizers.items()},
            "schedulers": {name: sched.state_dict() for name, sched in schedulers.items()},
            "scaler": self.scaler.state_dict(),
            "stage": stage,
            "epoch": epoch,
            "step": self.global_step,
            "rng": rng_state(),
            "best_metric": best,
            "best_epoch": best_epoch,
        }

    def train_stage(self, stage: str, resume: dict | None = None) -> None:
        settings: StageConfig = getattr(self.config.train, stage)
        optimizers = self._prepare_stage(stage)
        schedulers = {
            name: torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(settings)) for name, opt in optimizers.items()
        }
        start_epoch, best, best_epoch = 0, -math.inf, 0
        if resume is not None:
            for name, opt in optimizers.items():
                opt.load_state_dict(resume["optimizers"][name])
            for name, sched in schedulers.items():
                sched.load_state_dict(resume["schedulers"][name])
            self.scaler.load_state_dict(resume["scaler"])
            set_rng_state(resume["rng"])
            start_epoch, best, best_epoch = resume["epoch"], resume["best_metric"], resume["best_epoch"]
            self.global_step = resume["step"]
        loader = self.train_loader(stage)
        for epoch in range(start_epoch, settings.epochs):
            started = time.perf_counter()
            row = {"stage": stage, "epoch": epoch + 1, "lr": optimizers[next(iter(optimizers))].param_groups[0]["lr"]}
            row.update(self.train_one_epoch(stage, epoch, optimizers, loader))
            for scheduler in schedulers.values():
                scheduler.step()
            is_last = epoch + 1 == settings.epochs
            if (epoch + 1) % self.config.train.eval_every == 0 or is_last:
                metrics = self.validate(stage)
                metric = selection_metric(stage, metrics)
                row.update(_flat_val_metrics(metrics))
                row["val_selection"] = metric
                if not math.isnan(metric) and metric > best:
                    best, best_epoch = metric, epoch + 1
                    row["is_best"] = 1
                self._set_modes(stage)  # evaluate() left everything in eval mode
            row["seconds"] = round(time.perf_counter() - started, 2)
            if self.world.is_main:  # one writer; every process holds the same weights
                self._write_epoch(stage, row, self._state(stage, epoch + 1, optimizers, schedulers, best, best_epoch))
        distributed.barrier()  # rank 0's best checkpoint is on disk before anyone reads it
        best_path = self.checkpoint_dir / f"{stage}_best.pt"
        if best_path.is_file():
            # The next stage starts from this stage's best weights.
            load_model_state(self.model, load_checkpoint(best_path)["model"], best_path)

    def _write_epoch(self, stage: str, row: dict, state: dict) -> None:
        """Checkpoint (last, and best when it is), CSV row, TensorBoard scalars, log line."""
        stage_last = save_checkpoint(state, self.checkpoint_dir / f"{stage}_last.pt")
        link_checkpoint(stage_last, self.checkpoint_dir / "last.pt")
        if row.get("is_best"):
            link_checkpoint(stage_last, self.checkpoint_dir / f"{stage}_best.pt")
            link_checkpoint(stage_last, self.checkpoint_dir / "best.pt")
        self.csv.write(row)
        self.tensorboard.scalars({k: v for k, v in row.items() if k not in ("stage", "epoch")}, self.global_step, f"{stage}/")
        log.info("%s", " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))

    def _set_modes(self, stage: str) -> None:
        """Train mode for the sub-nets the stage trains, eval mode (frozen BN statistics) for the rest."""
        self.model.eval()
        for module in self._submodules(TRAINABLE[stage]).values():
            module.train()

    def fit(self, resume: bool = False) -> Path:
        """Run the configured stages (continuing ``last.pt`` when ``resume``); returns the run folder.

        Under torchrun every process trains; rank 0 alone builds a missing dataset cache and
        writes the run folder.
        """
        stages = self.config.stages_to_run()
        resume_state, first = None, 0
        if resume:
            resume_state = load_checkpoint(self.checkpoint_dir / "last.pt")
            if resume_state["stage"] not in stages:
                raise CheckpointError(
                    f"{self.checkpoint_dir / 'last.pt'} is from stage {resume_state['stage']!r}, "
                    f"not one of the requested stages {stages}"
                )
            load_model_state(self.model, resume_state["model"], self.checkpoint_dir / "last.pt")
            first = stages.index(resume_state["stage"])
        elif (self.checkpoint_dir / "last.pt").exists():
            raise CheckpointError(
                f"{self.run_dir} already holds a run; pass --resume to continue it or choose another --name"
            )
        elif self.config.train.init_from:
            source = Path(self.config.train.init_from)
            load_model_state(self.model, load_checkpoint(source)["model"], source)
            log.info("initialised every sub-net from %s", source)
        distributed.barrier()  # every process has checked the folder before rank 0 writes to it
        if self.world.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(self.config, self.run_dir / "config.yaml")
            self._load_datasets()  # a missing cache is built here, by rank 0 alone
        distributed.barrier()
        self._load_datasets()
        if self.world.is_main:
            self.csv = CSVLog(self.run_dir / "log.csv")
            self.tensorboard = TensorBoardLog(self.run_dir)
        try:
            for index, stage in enumerate(stages[first:], start=first):
                reason = self._skip_reason(stage)
                if reason is not None:
                    log.info("skipping stage %s: %s", stage, reason)
                    continue
                self.train_stage(stage, resume_state if index == first else None)
        finally:
            if self.tensorboard is not None:
                self.tensorboard.close()
        return self.run_dir

    def _load_datasets(self) -> None:
        for dataset in (self.train_set, self.val_set):
            if hasattr(dataset, "materialize"):  # render an in-memory dataset once, before timing epochs
                dataset.materialize(progress=self.progress is not None and self.world.is_main)


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
        row.update({f"val_{key}": grading[key] for key in ("accuracy", "qwk", "macro_f1", "macro_auc")})
    if "sr" in metrics:
        row["val_psnr"] = metrics["sr"]["sr"]["psnr"]
        row["val_psnr_bicubic"] = metrics["sr"]["bicubic"]["psnr"]
    if "segmentation" in metrics:
        row["val_mean_aupr"] = metrics["segmentation"]["mean"]["aupr"]
    return row
