"""Which stages a run trains, and what each stage trains: its sub-nets (``TRAINABLE``) in train
mode with gradients, the others frozen in eval mode (their BatchNorm statistics kept). A sub-net
whose learning rate is 0 in a stage (e.g. ``train.joint.lr_cls=0``: the grader frozen in the joint
stage, so that its grades reflect the SR image alone) is frozen there like the others."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from torch import nn

from engine.builders import stage_subset
from engine.config import Config
from engine.optim import LR_FIELD

if TYPE_CHECKING:
    from engine.trainer import Trainer

log = logging.getLogger("engine.trainer")  # the training log, whichever file writes its lines

# Which sub-nets each stage trains; the others are frozen and kept in eval mode.
TRAINABLE = {
    "isr": ("isr", "seg"),
    "seg": ("seg",),
    "cls": ("grader", "cam_fusion"),
    "joint": ("isr", "grader"),
}


def stage_trainables(config: Config | None, stage: str) -> tuple[str, ...]:
    """The sub-nets ``stage`` trains: ``TRAINABLE[stage]`` less those with learning rate 0."""
    if config is None:
        return TRAINABLE[stage]
    settings = getattr(config.train, stage)
    return tuple(name for name in TRAINABLE[stage] if getattr(settings, LR_FIELD[name]) > 0)


def trained_modules(model: nn.Module, names: tuple[str, ...]) -> dict[str, nn.Module]:
    """The named sub-nets that exist and have parameters (an ablated or bicubic one has none)."""
    modules = {name: getattr(model, name) for name in names}
    return {
        name: module
        for name, module in modules.items()
        if module is not None and any(True for _ in module.parameters())
    }


def set_modes(model: nn.Module, stage: str, config: Config | None = None) -> None:
    """Train mode for the sub-nets the stage trains, eval mode (frozen BN statistics) for the rest."""
    model.eval()
    for module in trained_modules(model, stage_trainables(config, stage)).values():
        module.train()


def freeze_for(model: nn.Module, stage: str, config: Config | None = None) -> dict[str, nn.Module]:
    """Set the stage's modes and freeze every weight; returns the sub-nets the stage trains (their
    optimisers unfreeze them, engine/optim.py)."""
    set_modes(model, stage, config)
    model.requires_grad_(False)
    return trained_modules(model, stage_trainables(config, stage))


def untrainable(config: Config, model: nn.Module, stage: str) -> str | None:
    """Why the model gives ``stage`` nothing to train (no epochs, no such sub-net), or None."""
    if getattr(config.train, stage).epochs == 0:
        return "no epochs"
    if stage == "isr" and not trained_modules(model, ("isr",)):
        return "no ISR net to train (model.isr=bicubic)"
    if not trained_modules(model, stage_trainables(config, stage)):
        return "nothing to train"
    return None


def planned_stages(trainer: Trainer, stages: list[str]) -> list[str]:
    """The stages that run; each skipped one (nothing to train, or no training or validation image
    with its labels) is named in the log with why."""
    planned = []
    for stage in stages:
        reason = untrainable(trainer.config, trainer.model, stage)
        if reason is None and (
            len(stage_subset(trainer.train_set, stage)) == 0
            or len(stage_subset(trainer.val_set, stage)) == 0
        ):
            reason = "no training or validation image carries its labels"
        if reason is None:
            planned.append(stage)
        else:
            log.info("skipping stage %s: %s", stage, reason)
    return planned
