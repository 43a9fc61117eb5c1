"""What the trainer does around a validation: the log columns of its metrics, the grade thresholds
fitted on the training images (``model.grade_decoding=thresholds``) and the joint stage's PSNR
floor from its incoming weights (``train.joint_max_psnr_drop_db``). ``Trainer.validate`` runs the
validation itself (engine/evaluator.py)."""

from __future__ import annotations

import logging
import math
import time
from contextlib import nullcontext
from typing import TYPE_CHECKING

from engine import loaders, run_folder, stage_plan
from engine.builders import stage_subset
from engine.evaluator import evaluate, selection_metric, stage_eval_mode
from evaluation.thresholds import fit_thresholds

if TYPE_CHECKING:
    from engine.trainer import Trainer

log = logging.getLogger("engine.trainer")  # the training log, whichever file writes its lines


def val_columns(metrics: dict) -> dict[str, float]:
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


def eval_every(train, stage: str) -> int:
    """How many epochs of ``stage`` between validations: ``train.<stage>.eval_every``, else
    ``train.eval_every`` (0: never)."""
    own = getattr(train, stage).eval_every
    return train.eval_every if own is None else own


def fits_thresholds(trainer: Trainer, stage: str) -> bool:
    return trainer.config.model.grade_decoding == "thresholds" and stage in ("cls", "joint")


def fit_stage_thresholds(trainer: Trainer, stage: str) -> None:
    """train.eval_every=0: the grade thresholds a validation would have fitted (training images only)."""
    if fits_thresholds(trainer, stage):
        with trainer.ema.swapped_in() if trainer.ema is not None else nullcontext():
            fit_grade_thresholds(trainer, stage, stage_eval_mode(stage, trainer.config.train.input))
        stage_plan.set_modes(trainer.model, stage, trainer.config)


def fit_grade_thresholds(trainer: Trainer, stage: str, mode: str) -> None:
    """Set ``model.grade_thresholds`` to those maximising QWK on the stage's TRAINING images
    (evaluation/thresholds.py), graded as validation grades (``mode``, test.tta), without
    augmentation or gradients; no validation label reaches them."""
    loader = loaders.eval_loader(
        trainer, trainer.train_set, stage, limit=trainer.config.train.threshold_images
    )
    spread = len(loader.dataset) < len(stage_subset(trainer.train_set, stage))
    # The cls stage's cached lesion maps are in the order of all its training images when one
    # process reads them all; a spread subset computes its own.
    whole = stage == "cls" and not trainer.world.distributed and not spread
    frozen = trainer.frozen_train if whole else None
    result = evaluate(
        trainer.model,
        loader,
        trainer.device,
        mode,
        trainer.autocast,
        frozen=frozen,
        tta=trainer.config.test.tta,
    )
    thresholds = fit_thresholds(result.probs, result.grades)
    trainer.model.grade_thresholds.copy_(thresholds)
    log.info(
        "grade thresholds fitted on %d training images: %s",
        int((result.grades >= 0).sum()),
        ", ".join(f"{value:.3f}" for value in thresholds.tolist()),
    )


def validate_incoming(trainer: Trainer, stage: run_folder.StageProgress) -> None:
    """train.joint_max_psnr_drop_db: validate the weights the stage starts from once (the PSNR the
    ISR stage reached), set the floor to their val_psnr minus the drop, and make them epoch 0 of
    log.csv and the stage's best checkpoint until a better-grading epoch at or above the floor
    (``stage.best``: their selection metric, -inf when not finite)."""
    started = time.perf_counter()
    metrics = trainer.validate(stage.name)
    stage_plan.set_modes(
        trainer.model, stage.name, trainer.config
    )  # evaluate() left everything in eval mode
    drop = trainer.config.train.joint_max_psnr_drop_db
    psnr = metrics.get("sr", {}).get("sr", {}).get("psnr", math.nan)
    trainer.psnr_floor = psnr - drop
    metric = selection_metric(stage.name, metrics)
    log.info(
        "%s stage: the incoming weights validate at val_psnr %.3f dB, val_selection %.4g; PSNR floor %.3f dB "
        "(train.joint_max_psnr_drop_db=%g)",
        stage.name,
        psnr,
        metric,
        trainer.psnr_floor,
        drop,
    )
    stage.best = metric if math.isfinite(metric) else -math.inf
    row = {
        "stage": stage.name,
        "epoch": 0,
        "lr": stage.lr,
        **val_columns(metrics),
        "val_selection": metric,
        "val_psnr_floor": trainer.psnr_floor,
        "is_best": 1,
        "seconds": round(time.perf_counter() - started, 2),
    }
    if trainer.world.is_main:
        state = run_folder.stage_state(trainer, stage, 0)
        run_folder.write_epoch(trainer, stage.name, row, state)


def log_incoming_kept(stage: str, floor: float) -> None:
    """The joint stage ends on its incoming weights: no epoch above the floor graded better."""
    log.info(
        "%s stage: no epoch at or above the PSNR floor %.3f dB graded better than the incoming weights: "
        "its best checkpoint is the incoming weights (epoch 0)",
        stage,
        floor,
    )
