"""Optimisers, learning-rate schedules and the applying of one step's gradients.

One Adam per trained sub-net (each with its stage's learning rate, ``train.<stage>.lr_*``) and
one schedule per optimiser (``train.<stage>.schedule``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from engine import distributed
from engine.config import StageConfig
from engine.reliability import NonFiniteGuard

# The StageConfig field of each trained sub-net's learning rate.
LR_FIELD = {"isr": "lr_isr", "seg": "lr_seg", "grader": "lr_cls", "cam_fusion": "lr_fusion"}


def lr_lambda(settings: StageConfig) -> Callable[[int], float]:
    """The factor on the learning rate after ``epoch`` epochs: step, cosine or constant."""
    if settings.schedule == "step":
        return lambda epoch: (
            settings.decay_gamma if settings.decay_epoch and epoch >= settings.decay_epoch else 1.0
        )
    if settings.schedule == "cosine":
        return lambda epoch: (
            0.5 * (1 + math.cos(math.pi * min(epoch, settings.epochs) / max(1, settings.epochs)))
        )
    return lambda epoch: 1.0


def adam(
    params, lr: float, impl: str, device: torch.device, weight_decay: float
) -> torch.optim.Adam:
    """Adam in the configured implementation (``run.optimizer_impl``; auto: fused on CUDA)."""
    if impl == "auto":
        impl = "fused" if device.type == "cuda" else "default"
    options = {
        "fused": {"fused": True},
        "foreach": {"foreach": True},
        "for_loop": {"foreach": False},
    }.get(impl, {})
    return torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999), weight_decay=weight_decay, **options)


def build_optimizers(
    modules: dict[str, nn.Module],
    settings: StageConfig,
    impl: str,
    device: torch.device,
    weight_decay: float,
) -> dict[str, torch.optim.Optimizer]:
    """Unfreeze each trained sub-net and give it its Adam, at its learning rate in ``settings``."""
    optimizers = {}
    for name, module in modules.items():
        module.requires_grad_(True)
        lr = getattr(settings, LR_FIELD[name])
        optimizers[name] = adam(module.parameters(), lr, impl, device, weight_decay)
    return optimizers


def build_schedulers(
    optimizers: dict[str, torch.optim.Optimizer], settings: StageConfig
) -> dict[str, torch.optim.lr_scheduler.LambdaLR]:
    return {
        name: torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(settings))
        for name, opt in optimizers.items()
    }


def apply_gradients(
    optimizers: dict[str, torch.optim.Optimizer],
    params: list,
    losses: dict,
    guard: NonFiniteGuard,
    scaler: torch.amp.GradScaler,
    clip_grad: float,
) -> torch.Tensor:
    """Average, check, clip and apply one step's gradients; returns the step's 0/1 non-finite flag.

    A step with a non-finite loss or gradient changes no weight and no optimiser state. Adam
    ``fused`` (run.optimizer_impl=auto on CUDA) and the float16 GradScaler skip it on the device;
    the other implementations need the flag on the host, which on the CPU is a memory read.
    """
    distributed.average_gradients(params)
    for optimizer in optimizers.values():
        scaler.unscale_(optimizer)  # a no-op without float16 autocast
    found_inf = guard.check(losses.values(), (p.grad for p in params if p.grad is not None))
    if clip_grad > 0:
        nn.utils.clip_grad_norm_(params, clip_grad)
    skip_on_host = None
    for optimizer in optimizers.values():
        if scaler.is_enabled():
            scaler.step(optimizer)  # skips on its own found-inf
        elif getattr(optimizer, "_step_supports_amp_scaling", False):
            optimizer.found_inf = found_inf  # read by fused Adam on the device (as GradScaler does)
            optimizer.step()
            del optimizer.found_inf
        else:
            if skip_on_host is None:
                skip_on_host = bool(found_inf.item())
            if not skip_on_host:
                optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    scaler.update()
    return found_inf
