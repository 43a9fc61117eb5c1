"""Build the model, datasets, loaders and device a config asks for."""
from __future__ import annotations

import random

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from data.synthetic import SyntheticFundus
from engine.config import Config, ConfigError
from models import DeepMTDR, create_model

DATASETS = ("synthetic",)


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
    model = config.model
    return create_model(
        model.name,
        scale=config.data.scale,
        num_classes=config.data.num_classes,
        isr_channels=model.isr_channels,
        isr_blocks=model.isr_blocks,
        isr_bicubic_skip=model.isr_bicubic_skip,
        seg_width=model.seg_width,
        use_lesions=model.use_lesions,
        grader_hidden=model.grader_hidden,
        grader_dropout=model.grader_dropout,
        imagenet_weights=model.imagenet_weights,
    )


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
    raise ConfigError(f"unknown data.dataset {data.dataset!r} (available: {', '.join(DATASETS)})")


def build_loader(dataset: Dataset, batch_size: int, shuffle: bool, seed: int, num_workers: int = 0) -> DataLoader:
    """A loader whose order depends only on ``seed`` (pass seed + epoch), so resume replays it."""
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        generator=generator,
        num_workers=num_workers,
        drop_last=False,
        persistent_workers=False,
    )


def grade_counts(dataset: Dataset, num_classes: int) -> torch.Tensor:
    """Training-set count of each grade (unknown grades skipped), for class weights."""
    grades = torch.as_tensor(list(dataset.grades), dtype=torch.long)
    grades = grades[grades >= 0]
    return torch.bincount(grades, minlength=num_classes)[:num_classes]
