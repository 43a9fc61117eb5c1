"""Build the model, datasets, loaders and device a config asks for."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from data.cache import MANIFEST, CachedFundus, read_manifest, read_settings
from data.prepare import prepare
from data.records import DataError
from data.splits import SplitSettings, assign_roles, keep_in_train, load_groups, split_name
from data.synthetic import SyntheticFundus
from engine.config import Config, ConfigError
from engine.distributed import (
    SINGLE_PROCESS,
    EpochShuffleSampler,
    ShardSampler,
    World,
    broadcast_module,
)
from engine.sampling import BalancedSampler
from models import DeepMTDR, create_model
from models.grading import ImageNetWeightsError
from models.losses import class_weights_from_counts

log = logging.getLogger(__name__)


def select_device(name: str = "auto") -> torch.device:
    """``auto`` picks cuda > mps > cpu; an explicit name must be available."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ConfigError(f"run.device {name!r} is not a device name") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"run.device {name!r} requested but CUDA is not available")
    return device


def seed_everything(seed: int, deterministic: bool = False) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True, warn_only=True)


def build_model(config: Config) -> DeepMTDR:
    """The composite of ``config.model``: which ISR (net or bicubic), segmentation and grading nets.

    ImageNet weights that cannot be had or do not check out stop it with a :class:`ConfigError`.
    """
    model = config.model
    try:
        net = create_model(
            model.name,
            scale=config.data.scale,
            num_classes=config.data.num_classes,
            isr=model.isr,
            isr_channels=model.isr_channels,
            isr_blocks=model.isr_blocks,
            isr_bicubic_skip=model.isr_bicubic_skip,
            seg_width=model.seg_width,
            use_lesions=model.use_lesions,
            grader=model.grader,
            grader_hidden=model.grader_hidden,
            grader_dropout=model.grader_dropout,
            grader_head_activation=model.grader_head_activation,
            grader_width=model.grader_width,
            imagenet_weights=model.imagenet_weights,
            cam_stages=model.cam_stages,
            grade_decoding=model.grade_decoding,
            grader_input_size=model.grader_input_size,
        )
    except ImageNetWeightsError as error:
        raise ConfigError(str(error)) from None
    if model.seg_prior is not None and net.seg is not None:
        net.seg.init_prior(model.seg_prior)
    return net


def apply_fast_paths(
    model: DeepMTDR, config: Config, world: World, device: torch.device, channels_last: bool
) -> DeepMTDR:
    """The model-side speed switches of ``config.run`` (each off by default, docs/BENCHMARKS.md);
    returns the model (converted to SyncBatchNorm under torchrun on CUDA with run.sync_batchnorm)."""
    run = config.run
    if run.sync_batchnorm and world.distributed:
        if device.type == "cuda":
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        else:
            log.warning("run.sync_batchnorm needs CUDA; BatchNorm statistics stay per process")
    if model.seg is not None:
        model.seg.checkpoint = config.model.seg_checkpoint
    if channels_last:
        model.to(memory_format=torch.channels_last)
    broadcast_module(model)  # every process starts from rank 0's weights
    if run.compile:
        # The grader stays eager: Grad-CAM takes gradients w.r.t. its stage outputs, which a
        # compiled module does not allow (autograd.grad reports them unused).
        options = {"backend": run.compile_backend}
        if run.compile_backend == "inductor":
            options["mode"] = run.compile_mode
        for sub_net in (model.isr, model.seg):
            if sub_net is not None:
                sub_net.compile(**options)
    return model


def cache_path(config: Config) -> Path:
    """Where the preprocessing cache of a public dataset lives: ``<cache_dir>/<dataset>-<hr_size>``."""
    data = config.data
    lossless = "-png" if data.cache_image_format == "png" else ""
    return Path(data.cache_dir) / f"{split_name(data.dataset, data.root)}-{data.hr_size}{lossless}"


def ensure_cache(config: Config, progress: bool = False) -> Path:
    """Build the cache of ``config.data`` unless a finished one is there; returns its folder."""
    data = config.data
    path = cache_path(config)
    if not (path / MANIFEST).is_file():
        log.info("no cache at %s: preparing %s from %s", path, data.dataset, data.root)
        prepare(
            data.dataset,
            data.root,
            path,
            data.hr_size,
            data.prepare_workers,
            data.skip_bad,
            data.jpeg_quality,
            progress,
            data.cache_image_format,
        )
    return path


def split_roles(config: Config, entries) -> dict[str, str]:
    """``{id: train|val|test}`` for the cache entries, from the (committed) split file."""
    data = config.data
    settings = SplitSettings(
        data.val_fraction, data.test_fraction, data.seed, keep_in_train(data.dataset)
    )
    name = split_name(data.dataset, data.root)
    return assign_roles(entries, name, data.split_file, settings, load_groups(name))


def build_dataset(config: Config, split: str) -> Dataset:
    """The dataset of ``config.data`` for ``split`` (train, val or test)."""
    data = config.data
    if data.dataset == "synthetic":
        sizes = {"train": data.n_train, "val": data.n_val, "test": data.n_test}
        return SyntheticFundus(
            split=split,
            n=sizes[split],
            hr_size=data.hr_size,
            scale=data.scale,
            seed=data.seed,
            class_mix=data.class_mix,
            backgrounds=data.backgrounds,
            blur_kernel=data.blur_kernel,
            blur_sigma=data.blur_sigma,
            noise_var=data.noise_var,
            cache=True,
        )
    path = ensure_cache(config)
    classes = (read_settings(path) or {}).get("num_classes", data.num_classes)
    if classes != data.num_classes:
        raise ConfigError(
            f"dataset {data.dataset} has {classes} classes: set data.num_classes={classes}"
        )
    entries = read_manifest(path)
    roles = split_roles(config, entries)
    chosen = [entry for entry in entries if roles[entry.id] == split]
    if not chosen:
        raise DataError(
            f"{data.dataset}: the {split} split is empty (cache {path}): this copy of the dataset has no "
            f"{split} images (test.py --split val evaluates the validation split)"
        )
    return CachedFundus(
        path, chosen, data.scale, data.blur_kernel, data.blur_sigma, data.noise_var, data.seed
    )


def stage_subset(dataset: Dataset, stage: str) -> Dataset:
    """The images a stage learns from: lesion masks for ``seg``, a known grade for ``cls``, all otherwise.

    A public dataset mixes images with masks and grade-only images; the losses mask the missing
    labels, but a stage need not read images that carry none of its labels.
    """
    if stage == "seg":
        keep = getattr(dataset, "has_masks", None)
    elif stage == "cls":
        keep = [grade >= 0 for grade in dataset.grades]
    else:
        keep = None
    if keep is None or all(keep):
        return dataset
    return Subset(dataset, [index for index, flag in enumerate(keep) if flag])


def build_loader(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool,
    seed: int,
    num_workers: int = 0,
    world: World = SINGLE_PROCESS,
    pin_memory: bool = False,
    persistent_workers: bool = False,
    prefetch_factor: int = 2,
    weights: torch.Tensor | None = None,
) -> DataLoader:
    """A loader whose order depends only on ``seed`` and the epoch, so resume replays it.

    Shuffled (training): :class:`EpochShuffleSampler`, one loader per stage whose sampler gets
    ``set_epoch`` (so persistent workers live across epochs), each process taking its share of
    every epoch's permutation; with per-sample ``weights``, :class:`BalancedSampler` instead
    (draws with replacement, probability proportional to the weight; data.balanced_sampling).
    Not shuffled (evaluation): :class:`ShardSampler`, each sample seen by exactly one process.
    ``batch_size`` is per process.
    """
    if not shuffle:
        sampler = ShardSampler(len(dataset), world)
    elif weights is not None:
        sampler = BalancedSampler(weights, seed, world)
    else:
        sampler = EpochShuffleSampler(len(dataset), seed, world)
    workers = num_workers > 0
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        # Workers' base seeds come from this generator, not the global RNG (which seeds dropout).
        generator=torch.Generator().manual_seed(seed),
        num_workers=num_workers,
        drop_last=False,
        pin_memory=pin_memory,
        persistent_workers=persistent_workers and workers,
        prefetch_factor=prefetch_factor if workers else None,
    )


def dataset_grades(dataset: Dataset) -> list[int]:
    """Every image's grade (-1: unknown) from the dataset's label list, through a stage's Subset; no image is read."""
    if isinstance(dataset, Subset):
        grades = dataset_grades(dataset.dataset)
        return [grades[index] for index in dataset.indices]
    return list(dataset.grades)


def grade_counts(dataset: Dataset, num_classes: int) -> torch.Tensor:
    """Training-set count of each grade (unknown grades skipped), for class weights."""
    grades = torch.as_tensor(list(dataset.grades), dtype=torch.long)
    grades = grades[grades >= 0]
    return torch.bincount(grades, minlength=num_classes)[:num_classes]


def grading_class_weights(config: Config, dataset: Dataset) -> torch.Tensor | None:
    """``loss.class_weights`` for the cross entropy: inverse training frequency ("auto"), none,
    or the configured list."""
    setting = config.loss.class_weights
    if setting == "none":
        return None
    if setting == "auto":
        return class_weights_from_counts(grade_counts(dataset, config.data.num_classes))
    return torch.tensor(setting, dtype=torch.float32)
