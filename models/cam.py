"""Grad-CAM: the figure API and the batched, differentiable training path of the task-aware loss.

Grad-CAM (Selvaraju et al. 2017) weights a layer's activations ``A_k`` by the spatial mean of
``d score / d A_k`` and keeps the positive part of the sum. Two uses:

- :func:`gradcam` for figures and saliency, following pytorch-grad-cam's convention exactly:
  ReLU, bilinear resize (``align_corners=False``) to the input size, then per-image min-max
  with eps 1e-7. A map that is all non-positive comes out as zeros.
- :func:`stage_cams` + :class:`CAMFusion` for training: gradients from ``torch.autograd.grad``
  with respect to the grader's four stage outputs only (no parameter gradients, no Python loop
  over samples or channels, no host synchronisation), CAMs fused coarse to fine by learned
  1x1 convolutions with interpolation on the device. The channel weights are treated as
  constants (as in the published code), so the CAM stays differentiable through the
  activations, which is the path the task-aware loss needs to reach the ISR net.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

from models.ordinal import decode_grades

EPS = 1e-7
CamTarget = Literal["predicted", "any_dr"]
CAM_TARGETS = ("predicted", "any_dr")


def minmax_normalise(maps: torch.Tensor) -> torch.Tensor:
    """Per-image ``(x - min) / (max - min + 1e-7)`` over all but the batch dim; differentiable."""
    flat = maps.flatten(1)
    low = flat.amin(dim=1).view(-1, *[1] * (maps.ndim - 1))
    high = flat.amax(dim=1).view(-1, *[1] * (maps.ndim - 1))
    return (maps - low) / (high - low + EPS)


def weighted_activation_map(activation: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
    """ReLU(sum_k mean(dS/dA_k) * A_k): ``[N,K,h,w]`` x2 -> ``[N,1,h,w]``, one fused reduction."""
    weights = gradient.mean(dim=(2, 3), keepdim=True)
    return F.relu((weights * activation).sum(dim=1, keepdim=True))


def target_weights(
    logits: torch.Tensor, mode: CamTarget = "predicted", thresholds: torch.Tensor | None = None
) -> torch.Tensor:
    """``[N,C]`` weights whose dot product with the logits is each sample's Grad-CAM score.

    ``predicted``: one-hot of the predicted grade (``models/ordinal.py``: argmax, or the expected
    grade cut at ``thresholds``). ``any_dr``: the published code's target, grade 0's logit when
    grade 0 is predicted, else the sum of the logits of grades 1..C-1. Built with ``torch.where``
    on the device: no host synchronisation.
    """
    predicted = decode_grades(torch.softmax(logits.detach().float(), dim=1), thresholds)
    one_hot = F.one_hot(predicted, logits.shape[1]).to(logits.dtype)
    if mode == "predicted":
        return one_hot
    if mode == "any_dr":
        grade0 = torch.zeros_like(one_hot)
        grade0[:, 0] = 1
        return torch.where((predicted == 0).unsqueeze(1), grade0, 1 - grade0)
    raise ValueError(f"CAM target must be one of {CAM_TARGETS}, got {mode!r}")


def stage_cams(
    logits: torch.Tensor,
    activations: list[torch.Tensor],
    weights: torch.Tensor,
    retain_graph: bool = True,
) -> list[torch.Tensor]:
    """Min-max normalised Grad-CAMs ``[N,1,h_i,w_i]`` of every activation, in one autograd call.

    The score summed over the batch has per-sample gradients (samples are independent), so one
    ``autograd.grad`` gives every sample's CAM. Keep ``retain_graph`` when the same forward is
    later back-propagated (the SR path); the result is differentiable w.r.t. the activations.
    """
    score = (logits * weights).sum()
    gradients = torch.autograd.grad(score, activations, retain_graph=retain_graph)
    return [minmax_normalise(weighted_activation_map(a, g)) for a, g in zip(activations, gradients)]


class CAMFusion(nn.Module):
    """Fuses CAMs of several stages coarse to fine into one map (the published Multi_Intergrate).

    At each finer stage: upsample the running map to that stage's size, concatenate
    ``[upsampled, cam]``, 1x1 conv + ReLU. The result is resized to ``size`` and min-max
    normalised. Convs start as the plain average of their two inputs, so an untrained fusion
    already gives a sensible map (random init can leave a dead ReLU and a zero loss).
    """

    def __init__(self, num_stages: int = 4) -> None:
        super().__init__()
        self.convs = nn.ModuleList([nn.Conv2d(2, 1, kernel_size=1) for _ in range(num_stages - 1)])
        for conv in self.convs:
            nn.init.constant_(conv.weight, 0.5)
            nn.init.zeros_(conv.bias)

    def forward(self, cams: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        """cams fine-to-coarse ``[N,1,h_i,w_i]`` (the grader's stage order) -> ``[N,1,*size]`` in [0,1]."""
        if len(cams) != len(self.convs) + 1:
            raise ValueError(f"CAMFusion expects {len(self.convs) + 1} maps, got {len(cams)}")
        fused = cams[-1]
        for conv, cam in zip(self.convs, reversed(cams[:-1])):
            fused = F.interpolate(fused, size=cam.shape[-2:], mode="bilinear", align_corners=False)
            fused = F.relu(conv(torch.cat([fused, cam], dim=1)))
        fused = F.interpolate(fused, size=size, mode="bilinear", align_corners=False)
        return minmax_normalise(fused)


def gradcam(
    model: nn.Module,
    layer: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor | int | list[int] | None = None,
    size: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Grad-CAM of ``layer`` for ``model(x)``: ``[N,1,H,W]`` in [0,1], detached.

    ``target``: one class per sample (tensor, list or a single int for all); None uses each
    sample's predicted class. ``size`` defaults to the input's. pytorch-grad-cam's convention
    (see module docstring). The model's train/eval mode is left as the caller set it.
    """
    captured: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda _module, _inputs, output: captured.append(output))
    try:
        with torch.enable_grad():
            logits = model(x.detach().requires_grad_(True))
            if target is None:
                target_index = logits.argmax(dim=1)
            else:
                target_index = (
                    torch.as_tensor(target, device=logits.device).long().expand(logits.shape[0])
                )
            score = logits.gather(1, target_index.view(-1, 1)).sum()
            (gradient,) = torch.autograd.grad(score, captured[-1])
    finally:
        handle.remove()
    return cam_at_size(captured[-1].detach(), gradient, size or tuple(x.shape[-2:]))


def cam_at_size(
    activation: torch.Tensor, gradient: torch.Tensor, size: tuple[int, int]
) -> torch.Tensor:
    """Grad-CAM ``[N,1,*size]`` in [0,1] from a layer's activation and the score's gradient there:
    ReLU of the weighted sum, bilinear resize, per-image min-max (pytorch-grad-cam's convention)."""
    cam = weighted_activation_map(activation, gradient)
    cam = F.interpolate(cam, size=size, mode="bilinear", align_corners=False)
    return minmax_normalise(cam)


def gradcam_in_forward(
    forward: Callable[[], torch.Tensor],
    layer: nn.Module,
    size: tuple[int, int],
    weights_of: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of one forward pass and their Grad-CAM at ``layer``: ``([N,C], [N,1,*size])``, detached.

    What :func:`gradcam` computes, without a second forward: ``layer``'s output is swapped for a
    leaf that requires grad, so with the model's parameters frozen nothing before ``layer`` records
    a graph, and the explanation costs the backward of what follows it (for a grader's last stage:
    the head). ``weights_of(logits)`` gives the ``[N,C]`` weights of each sample's score; default
    one-hot of its predicted class. Call it under ``torch.no_grad()`` or not; not in inference mode.
    """
    captured: list[torch.Tensor] = []

    def swap(_module: nn.Module, _inputs, output: torch.Tensor) -> torch.Tensor:
        leaf = output.detach().requires_grad_(True)
        captured.append(leaf)
        return leaf

    handle = layer.register_forward_hook(swap)
    try:
        with torch.enable_grad():
            logits = forward()
            weights = (
                target_weights(logits, "predicted")
                if weights_of is None
                else weights_of(logits.detach())
            )
            (gradient,) = torch.autograd.grad((logits * weights).sum(), captured[-1])
    finally:
        handle.remove()
    return logits.detach(), cam_at_size(captured[-1].detach(), gradient, size)
