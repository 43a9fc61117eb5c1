"""The published joint step, kept as a reference: one image at a time, Grad-CAM by a Python loop
over channels, the CAM target chosen on the host, min-max checks on the host, and the CAM fusion's
resizes done on the host (upstream used PIL; here ``F.interpolate`` on CPU copies, so the math
stays the project's and the gradients can be compared).

Only ``bench/train_step.py --naive`` (the speed ratio) and the tests (an oracle for the batched
Grad-CAM and the joint step) use it. The losses and the two gradients are those of
``Trainer.step_joint``: the ISR net follows its whole loss, the grader the grading loss alone; the
grading loss comes from the train-mode forward, the two CAMs of the task-aware loss from the
grader in eval mode, SR and HR alike (issue 25: with the SR CAM taken from the train-mode
forward, dropout and batch statistics made the loss non-zero at SR == HR).
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from models.losses import grading_loss, pixel_loss, seg_aware_loss, task_aware_loss, tv_loss


def naive_stage_cam(activation: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
    """Grad-CAM of one image ``[1,K,h,w]``: a loop over the K channels, then min-max checked on the host."""
    cam = torch.zeros_like(activation[0, 0])
    for channel in range(activation.shape[1]):
        cam = cam + gradient[0, channel].mean() * activation[0, channel]
    cam = F.relu(cam)
    cam = cam - cam.min()
    peak = cam.max()
    if peak.item() != 0:  # host synchronisation, as published
        cam = cam / (peak + 1e-7)
    return cam.view(1, 1, *cam.shape)


def _host_resize(image: torch.Tensor, size) -> torch.Tensor:
    """Resize through the host and back (upstream: PIL), keeping the autograd graph."""
    return F.interpolate(image.cpu(), size=tuple(size), mode="bilinear", align_corners=False).to(
        image.device
    )


def _minmax_on_host(image: torch.Tensor) -> torch.Tensor:
    image = image - image.min()
    peak = image.max()
    return image / (peak + 1e-7) if peak.item() != 0 else image


def naive_attention(
    model, logits: torch.Tensor, features: list[torch.Tensor], size, cam_target: str
) -> torch.Tensor:
    """The fused Grad-CAM of one image, per channel and through the host (see module docstring)."""
    index = int(logits.argmax().item())  # the target is chosen on the host
    if cam_target == "any_dr":
        weights = [1.0 if (c == 0) == (index == 0) else 0.0 for c in range(logits.shape[1])]
    else:
        weights = [1.0 if c == index else 0.0 for c in range(logits.shape[1])]
    score = (logits * torch.tensor([weights], device=logits.device, dtype=logits.dtype)).sum()
    chosen = features if model.cam_stages == "all" else features[-1:]
    gradients = torch.autograd.grad(score, chosen, retain_graph=True)
    cams = [naive_stage_cam(a, g) for a, g in zip(chosen, gradients)]
    if model.cam_stages == "last":
        return _minmax_on_host(_host_resize(cams[0], size))
    fused = cams[-1]
    for conv, cam in zip(model.cam_fusion.convs, reversed(cams[:-1])):
        fused = F.relu(conv(torch.cat([_host_resize(fused, cam.shape[-2:]), cam], dim=1)))
    return _minmax_on_host(_host_resize(fused, size))


def naive_eval_attentions(
    model, sr_pair, hr_pair, cam_target: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """The fused CAMs of one SR and one HR image (each given with its lesion logits), both from the
    grader in eval mode (dropout off, BatchNorm on running statistics), each by its own forward;
    every submodule's mode restored after."""
    modes = [(module, module.training) for module in model.grader.modules()]
    model.grader.eval()
    try:
        attentions = []
        for image, lesion_logits in (sr_pair, hr_pair):
            result = model.grade_with_lesions(image, lesion_logits)
            attentions.append(
                naive_attention(
                    model, result.grade_logits, result.features, image.shape[-2:], cam_target
                )
            )
    finally:
        for module, training in modes:
            module.training = training
    return attentions[0], attentions[1]


def naive_joint_step(
    model, batch: dict, loss_config, cam_target: str = "predicted", class_weights=None
) -> dict[str, float]:
    """Accumulate the joint step's gradients image by image into ``.grad``; returns the mean losses.

    ``model`` is a DeepMT-DR with the ISR net and grader trainable (``Trainer._prepare_stage("joint")``).
    """
    weights = loss_config
    isr_params = [p for p in model.isr.parameters() if p.requires_grad]
    grader_params = [p for p in model.grader.parameters() if p.requires_grad]
    n = batch["lr"].shape[0]
    totals: dict[str, float] = {}
    for index in range(n):
        lr, hr = batch["lr"][index : index + 1], batch["hr"][index : index + 1]
        grade = batch["grade"][index : index + 1]
        sr = model.isr(lr)
        sr_lesions = model.segment(sr)
        result = model.grade_with_lesions(sr, sr_lesions)
        with torch.no_grad():
            hr_lesions = model.segment(hr)
        losses = {
            "ce": grading_loss(result.grade_logits, grade, class_weights),
            "pixel": pixel_loss(sr, hr, weights.pixel),
            "tv": tv_loss(sr),
        }
        isr_total = (
            weights.pixel_weight * losses["pixel"]
            + weights.tv_weight * losses["tv"]
            + weights.cls_weight * losses["ce"]
        )
        if model.use_lesions and weights.seg_aware_weight > 0:
            losses["seg_aware"] = seg_aware_loss(sr_lesions, hr_lesions)
            isr_total = isr_total + weights.seg_aware_weight * losses["seg_aware"]
        if weights.task_aware_weight > 0:
            sr_attention, hr_attention = naive_eval_attentions(
                model, (sr, sr_lesions), (hr, hr_lesions), cam_target
            )
            losses["task_aware"] = task_aware_loss(sr_attention, hr_attention.detach())
            isr_total = isr_total + weights.task_aware_weight * losses["task_aware"]
        isr_grads = torch.autograd.grad(isr_total / n, isr_params, retain_graph=True)
        grader_grads = torch.autograd.grad(weights.cls_weight * losses["ce"] / n, grader_params)
        for param, grad in zip(isr_params + grader_params, isr_grads + grader_grads):
            param.grad = grad if param.grad is None else param.grad + grad
        losses["loss"] = isr_total
        for key, value in losses.items():
            totals[key] = (
                totals.get(key, 0.0) + value.item() / n
            )  # per-image host read-back, as published
    return totals
