"""A stage's loaders, and the batch its step gets: on the device, with the cached frozen outputs,
random flips, augmentation (``data.augment``) and, for isr and seg, random crops."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import torch
from torch.utils.data import DataLoader, Subset

from data.augment import augment_batch
from data.crop import random_crop, random_flip
from engine import distributed
from engine.builders import build_loader, dataset_grades, stage_subset
from engine.config import STAGES, Config
from engine.frozen_cache import IndexedDataset
from engine.sampling import balanced_weights

if TYPE_CHECKING:
    from engine.trainer import Trainer

log = logging.getLogger("engine.trainer")  # the training log, whichever file writes its lines


def stage_seed(config: Config, stage: str) -> int:
    """The seed of the stage's shuffle and, plus the epoch, of its crops and flips."""
    return config.run.seed * 1000 + STAGES.index(stage) * 100


def train_loader(trainer: Trainer, stage: str) -> DataLoader:
    """The stage's training loader (workers persist); its sampler is set per epoch."""
    config = trainer.config
    data = config.data
    batch = distributed.local_batch_size(
        getattr(config.train, stage).batch_size, trainer.world, f"train.{stage}.batch_size"
    )
    subset = stage_subset(trainer.train_set, stage)
    return build_loader(
        IndexedDataset(subset),  # "index": the row of the frozen-output cache
        batch,
        True,
        stage_seed(config, stage),
        data.num_workers,
        trainer.world,
        pin_memory=data.pin_memory and trainer.device.type == "cuda",
        persistent_workers=data.persistent_workers,
        prefetch_factor=data.prefetch_factor,
        weights=sampling_weights(config, stage, subset),
    )


def sampling_weights(config: Config, stage: str, subset) -> torch.Tensor | None:
    """``data.balanced_sampling``: per-image draw weights of the cls and joint stages, else None (a shuffle)."""
    if not config.data.balanced_sampling or stage not in ("cls", "joint"):
        return None
    if config.loss.class_weights == "auto":
        log.warning(
            "data.balanced_sampling with loss.class_weights=auto corrects the grade imbalance twice "
            "(rare grades then outweigh common ones); loss.class_weights=none balances it once"
        )
    return balanced_weights(dataset_grades(subset))


def eval_loader(trainer: Trainer, dataset, stage: str, limit: int = 0) -> DataLoader:
    """The stage's images of ``dataset`` in order, each evaluated by exactly one process;
    ``limit`` > 0 keeps that many of them, evenly spaced (every part of an ordered set counts)."""
    config = trainer.config
    batch = max(getattr(config.train, stage).batch_size // trainer.world.size, 8)
    pin = config.data.pin_memory and trainer.device.type == "cuda"
    images = stage_subset(dataset, stage)
    if 0 < limit < len(images):
        images = Subset(images, torch.linspace(0, len(images) - 1, limit).round().long().tolist())
    return build_loader(
        images,
        batch,
        False,
        0,
        config.data.num_workers,
        trainer.world,
        pin_memory=pin,
    )


def device_batch(trainer: Trainer, batch: dict, stage: str) -> dict:
    """Move a training batch to the device (images channels-last when the model is), flip if
    ``data.flip``, augment if ``data.augment``, crop for isr/seg (lesion-centred for a share,
    ``data.lesion_crop_share``), all drawn from ``trainer.crop_generator``."""
    data, generator = trainer.config.data, trainer.crop_generator
    images_format = torch.channels_last if trainer.channels_last else torch.preserve_format
    batch = {
        key: value.to(
            trainer.device,
            non_blocking=True,
            memory_format=images_format if key in ("hr", "lr") else torch.preserve_format,
        )
        if torch.is_tensor(value)
        else value
        for key, value in batch.items()
    }
    if trainer.frozen_train is not None and "index" in batch and stage in ("cls", "joint"):
        batch.update(trainer.frozen_train.lookup(batch["index"]))  # flipped below with the images
    if data.flip:
        batch = random_flip(batch, generator)
    if data.augment:
        batch = augment_batch(batch, data, generator)
    if stage in ("isr", "seg"):
        crop = getattr(trainer.config.train, stage).crop_size
        crop = data.crop_size if crop is None else crop
        batch = random_crop(batch, crop, data.scale, generator, data.lesion_crop_share)
    return batch
