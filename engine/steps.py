"""The four stage steps of DeepMT-DR and their losses, top to bottom (what each stage trains:
engine/trainer.py's docstring and docs/ARCHITECTURE.md, "The path of a training batch").

Each step takes the :class:`~engine.trainer.Trainer` (its model, config, grad scaler and class
weights) and a batch already on the device, computes the stage's losses under the caller's
autocast, back-propagates every gradient of the step before any optimiser steps (upstream
stepped one optimiser and then back-propagated through its modified weights), and returns the
losses to log. ``Trainer.stage_step`` picks one by stage name.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn import functional as F

from models.cam import stage_cams, target_weights
from models.deepmt_dr import any_lesion_map
from models.losses import (
    grading_loss,
    ordinal_loss,
    pixel_loss,
    seg_aware_loss,
    segmentation_loss,
    task_aware_loss,
    tv_loss,
)

if TYPE_CHECKING:
    from engine.trainer import Trainer


# ----------------------------------------------------------------- isr: ISR + segmentation on HR crops
def step_isr(trainer: Trainer, batch: dict) -> dict[str, torch.Tensor]:
    """SR pixel + TV into the ISR net; with lesions, the segmentation loss (loss.isr_seg_loss, else
    loss.seg_loss) on the SR image's maps and the segmentation-aware loss (SR maps against the HR
    image's) into both nets."""
    weights, model = trainer.config.loss, trainer.model
    sr = model.isr(batch["lr"])
    losses = {"pixel": pixel_loss(sr, batch["hr"], weights.pixel), "tv": tv_loss(sr)}
    total = weights.pixel_weight * losses["pixel"] + weights.tv_weight * losses["tv"]
    if model.use_lesions:
        sr_lesions = model.seg(sr)
        with torch.no_grad():
            hr_lesions = model.seg(batch["hr"])
        losses["seg"] = segmentation_loss(
            sr_lesions,
            batch["masks"],
            batch["mask_valid"],
            weights.isr_seg_loss or weights.seg_loss,
            weights.seg_pos_weight,
        )
        losses["seg_aware"] = seg_aware_loss(sr_lesions, hr_lesions)
        total = (
            total
            + weights.seg_weight * losses["seg"]
            + weights.seg_aware_weight * losses["seg_aware"]
        )
    trainer.scaler.scale(total).backward()
    return {"loss": total, **losses}


# ----------------------------------------------------------------- seg: segmentation on HR crops
def stage_image(trainer: Trainer, batch: dict) -> torch.Tensor:
    """What the seg and cls stages learn from: HR, or the frozen ISR's output of LR (``train.input``)."""
    if trainer.config.train.input == "hr":
        return batch["hr"]
    if "stage_image" in batch:  # cached once for the stage (engine/frozen_cache.py)
        return batch["stage_image"]
    with torch.no_grad():
        return trainer.model.isr(batch["lr"])


def frozen_lesions(trainer: Trainer, batch: dict, image: torch.Tensor) -> torch.Tensor:
    """The frozen segmentation net's lesion logits of ``image``: cached, or computed without a graph."""
    if "lesion_logits" in batch:
        return batch["lesion_logits"]
    with torch.no_grad():
        return trainer.model.segment(image)


def step_seg(trainer: Trainer, batch: dict) -> dict[str, torch.Tensor]:
    """Dice + focal (or + weighted BCE: loss.seg_loss) of the segmentation net on the stage image."""
    weights = trainer.config.loss
    loss = segmentation_loss(
        trainer.model.seg(stage_image(trainer, batch)),
        batch["masks"],
        batch["mask_valid"],
        weights.seg_loss,
        weights.seg_pos_weight,
    )
    trainer.scaler.scale(loss).backward()
    return {"loss": loss, "seg": loss}


# ----------------------------------------------------------------- cls: the grader, segmentation frozen
def grading_losses(
    trainer: Trainer, logits: torch.Tensor, grades: torch.Tensor
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The grading loss the grader learns from and its logged parts: cross entropy ("ce", with
    loss.label_smoothing) plus loss.ordinal_weight times the ordinal loss ("ordinal", when on)."""
    weights = trainer.config.loss
    parts = {"ce": grading_loss(logits, grades, trainer.class_weights, weights.label_smoothing)}
    if weights.ordinal_weight <= 0:
        return parts["ce"], parts
    parts["ordinal"] = ordinal_loss(logits, grades)
    return parts["ce"] + weights.ordinal_weight * parts["ordinal"], parts


def step_cls(trainer: Trainer, batch: dict) -> dict[str, torch.Tensor]:
    """The grading loss into the grader; the CAM fusion learns to match the lesion map (the
    published MVI loss, which never trained upstream)."""
    weights, model, image = trainer.config.loss, trainer.model, stage_image(trainer, batch)
    lesion_logits = frozen_lesions(trainer, batch, image)
    result = model.grade_with_lesions(image, lesion_logits)
    grading, losses = grading_losses(trainer, result.grade_logits, batch["grade"])
    total = weights.cls_weight * grading
    fusion_used = model.cam_stages == "all" and weights.task_aware_weight > 0
    if model.use_lesions and fusion_used and weights.cam_fusion_weight > 0:
        # Train the CAM fusion towards the lesion map; the CAMs are constants here, so this
        # loss does not reach the grader.
        cams = stage_cams(
            result.grade_logits,
            result.features,
            target_weights(
                result.grade_logits, trainer.config.model.cam_target, model.decision_thresholds
            ),
        )
        attention = model.cam_fusion([cam.detach() for cam in cams], image.shape[-2:])
        losses["cam_fusion"] = F.mse_loss(attention, any_lesion_map(torch.sigmoid(lesion_logits)))
        total = total + weights.cam_fusion_weight * losses["cam_fusion"]
    trainer.scaler.scale(total).backward()
    return {"loss": total, **losses}


# ----------------------------------------------------------------- joint: everything from LR
@contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
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


def eval_attention(
    trainer: Trainer, image: torch.Tensor, lesion_logits: torch.Tensor, keep_graph: bool
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
    model = trainer.model
    grader = model.grader
    trainable = [p for p in grader.parameters() if p.requires_grad]
    start_graph = (
        None if keep_graph else grader.stages()[0].register_forward_hook(_start_graph_here)
    )
    try:
        with eval_mode(grader):
            for param in trainable:
                param.requires_grad_(False)
            result = model.grade_with_lesions(image, lesion_logits)
            attention = model.attention_map(
                result, trainer.config.model.cam_target, retain_graph=keep_graph
            )
    finally:
        for param in trainable:
            param.requires_grad_(True)
        if start_graph is not None:
            start_graph.remove()
    return attention if keep_graph else attention.detach()


def hr_attention(trainer: Trainer, hr: torch.Tensor, hr_lesions: torch.Tensor) -> torch.Tensor:
    """The grader's fused CAM on the HR image (eval mode): the constant target of the task-aware loss."""
    return eval_attention(trainer, hr, hr_lesions, keep_graph=False)


def sr_attention(trainer: Trainer, sr: torch.Tensor, sr_lesions: torch.Tensor) -> torch.Tensor:
    """The grader's fused CAM on the SR image, in eval mode like the HR target (not from the
    train-mode forward, whose dropout and batch statistics would make the loss non-zero at
    SR == HR), differentiable back to the ISR net through ``sr`` and ``sr_lesions``."""
    return eval_attention(trainer, sr, sr_lesions, keep_graph=True)


def joint_isr_terms(
    trainer: Trainer, batch: dict, sr: torch.Tensor, result, grading: torch.Tensor
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The ISR net's joint-stage loss as its weighted terms, and the unweighted losses to log.

    ``sr`` is the ISR net's output of ``batch["lr"]``, ``result`` the train-mode
    ``grade_image(sr)``, ``grading`` its grading loss. Terms: ``pixel`` (loss.pixel_weight x
    the pixel loss), ``tv``, ``grading`` (loss.cls_weight x grading), ``seg_aware`` and
    ``task_aware`` when on. The ISR net follows their sum; bench/gradient_shares.py measures
    each term's gradient.
    """
    weights, model, hr = trainer.config.loss, trainer.model, batch["hr"]
    losses = {"pixel": pixel_loss(sr, hr, weights.pixel), "tv": tv_loss(sr)}
    terms = {
        "pixel": weights.pixel_weight * losses["pixel"],
        "tv": weights.tv_weight * losses["tv"],
        "grading": weights.cls_weight * grading,
    }
    hr_lesions = frozen_lesions(trainer, batch, hr)
    if model.use_lesions and weights.seg_aware_weight > 0:
        losses["seg_aware"] = seg_aware_loss(result.lesion_logits, hr_lesions)
        terms["seg_aware"] = weights.seg_aware_weight * losses["seg_aware"]
    if weights.task_aware_weight > 0:
        # Both CAMs from an eval-mode grader (the grading loss keeps the train-mode forward).
        # The segmentation net is frozen and in eval mode in this stage, so the SR lesion maps
        # (the forward's, with their graph) and the HR ones are computed alike. The SR CAM goes
        # through the trainer's method, where a test plants a mode mismatch.
        sr_cam = trainer._sr_attention(sr, result.lesion_logits)
        losses["task_aware"] = task_aware_loss(sr_cam, hr_attention(trainer, hr, hr_lesions))
        terms["task_aware"] = weights.task_aware_weight * losses["task_aware"]
    return terms, losses


def step_joint(trainer: Trainer, batch: dict) -> dict[str, torch.Tensor]:
    """The ISR net follows its whole loss (:func:`joint_isr_terms`), the grader the grading loss
    alone (the task-aware loss is feedback to the ISR net); segmentation stays frozen."""
    weights, model, scaler = trainer.config.loss, trainer.model, trainer.scaler
    sr = model.isr(batch["lr"])
    result = model.grade_image(sr)
    grading, grading_parts = grading_losses(trainer, result.grade_logits, batch["grade"])
    isr_params = [p for p in model.isr.parameters() if p.requires_grad]
    if not isr_params:  # bicubic in place of the ISR net: the grading loss is the whole step
        scaler.scale(weights.cls_weight * grading).backward()
        return {"loss": weights.cls_weight * grading, **grading_parts}
    grader_params = [p for p in model.grader.parameters() if p.requires_grad]
    terms, isr_losses = joint_isr_terms(trainer, batch, sr, result, grading)
    losses = {**grading_parts, **isr_losses}
    isr_total = sum(terms.values())
    # One backward gives both gradients: of the ISR net's terms only ``grading`` reaches the
    # grader's weights (the task-aware CAMs run with those weights frozen, eval_attention; pixel,
    # tv and seg-aware never pass the grader), so d isr_total / d grader is d(cls_weight x grading)
    # / d grader, the grader's own loss. A second backward through the grader cost 3% of the
    # demo's step and 8-12% of idrid_small's (docs/BENCHMARKS.md, "The joint step's one backward");
    # tests/test_trainer_steps.py checks the grader's gradient against the grading loss alone.
    # (train.joint.lr_cls=0 freezes the grader: grader_params is then empty.)
    params = isr_params + grader_params
    for param, grad in zip(params, torch.autograd.grad(scaler.scale(isr_total), params)):
        param.grad = grad
    return {"loss": isr_total, **losses}
