"""Outputs of frozen sub-nets, computed once per image instead of once per epoch (``train.cache_frozen``).

In the ``cls`` stage the segmentation net is frozen (and, with ``train.input=lr``, the ISR
net too), so the lesion logits of each training image are constants of the stage; the
``joint`` stage needs the same maps of the HR images as the target of its segmentation-aware
and task-aware losses. :class:`FrozenOutputs` computes them in one no-grad pass over the
images and hands each batch its rows by index, on the device, without a host round trip.
Random flips are applied to the looked-up maps with the batch (``data.crop.random_flip``), so a
flipped image gets the flipped map of the unflipped image: the same map up to the net's own
(small) lack of flip equivariance.

The trainer's side: which stages cache what (:func:`cache_plan`), within ``train.cache_max_gb``,
computed once per stage and reused while the frozen nets keep their weights.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from engine.builders import build_loader, stage_subset
from engine.config import Config

if TYPE_CHECKING:
    from engine.trainer import Trainer

log = logging.getLogger("engine.trainer")  # the training log, whichever file writes its lines


class IndexedDataset(Dataset):
    """A dataset whose samples carry their position (``"index"``), so a batch can find its rows."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        return {**self.dataset[index], "index": index}


def weights_fingerprint(modules: Iterable[nn.Module | None]) -> str:
    """SHA-256 of the modules' parameters and buffers: a cache is reused only for the same weights."""
    digest = hashlib.sha256()
    for module in modules:
        if module is None:
            continue
        for name, tensor in module.state_dict().items():
            digest.update(name.encode())
            digest.update(
                tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes()
            )
    return digest.hexdigest()


class FrozenOutputs:
    """Per-image tensors (e.g. ``lesion_logits [N,L,H,W]``) in dataset order, looked up by index."""

    def __init__(self, tensors: dict[str, torch.Tensor], fingerprint: str = "") -> None:
        self.tensors = tensors
        self.fingerprint = fingerprint

    def __len__(self) -> int:
        return len(next(iter(self.tensors.values())))

    def lookup(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        """The rows of ``index`` (a device tensor), on the cache's device."""
        return {
            key: values.index_select(0, index.to(values.device, non_blocking=True))
            for key, values in self.tensors.items()
        }

    def rows(self, start: int, stop: int) -> dict[str, torch.Tensor]:
        """Rows ``start:stop`` (evaluation batches come in dataset order)."""
        return {key: values[start:stop] for key, values in self.tensors.items()}

    @staticmethod
    def bytes_needed(count: int, shapes: dict[str, tuple[int, ...]], dtype: torch.dtype) -> int:
        """Memory of ``count`` images' outputs of the given per-image shapes."""
        item = torch.empty((), dtype=dtype).element_size()
        return sum(count * item * int(torch.Size(shape).numel()) for shape in shapes.values())

    @classmethod
    @torch.no_grad()
    def compute(
        cls,
        loader: DataLoader,
        outputs: Callable[[dict], dict[str, torch.Tensor]],
        device: torch.device,
        fingerprint: str = "",
        progress: Callable | None = None,
    ) -> FrozenOutputs:
        """Run ``outputs(batch)`` (batch already on ``device``) over an unshuffled ``loader`` and
        keep the results in loader order, on ``device``."""
        chunks: dict[str, list[torch.Tensor]] = {}
        batches = progress(loader, desc="caching frozen outputs") if progress else loader
        for batch in batches:
            batch = {
                key: value.to(device, non_blocking=True) if torch.is_tensor(value) else value
                for key, value in batch.items()
            }
            for key, value in outputs(batch).items():
                chunks.setdefault(key, []).append(value.detach())
        return cls({key: torch.cat(values) for key, values in chunks.items()}, fingerprint)


# ----------------------------------------------------------------- the trainer's caches
def cache_plan(config: Config, model: nn.Module, stage: str) -> tuple[str, list] | None:
    """What the stage's frozen nets compute from each training image ("hr" or "lr": its
    lesion maps, plus the SR image for "lr") and which nets that depends on; None: no cache."""
    if not config.train.cache_frozen or not model.use_lesions or stage not in ("cls", "joint"):
        return None
    if stage == "cls" and config.train.input == "lr":
        return "lr", [model.isr, model.seg]
    return "hr", [model.seg]


def fits_cache(trainer: Trainer, count: int, shapes: dict[str, tuple[int, ...]], what: str) -> bool:
    """Whether ``count`` images' outputs fit train.cache_max_gb (at the autocast dtype); logs why not."""
    dtype = trainer.amp_dtype if trainer.amp_enabled else torch.float32
    needed = FrozenOutputs.bytes_needed(count, shapes, dtype)
    if needed > trainer.config.train.cache_max_gb * 2**30:
        log.info(
            "not caching %s: %.2f GB > train.cache_max_gb=%g; computing them every step",
            what,
            needed / 2**30,
            trainer.config.train.cache_max_gb,
        )
        return False
    return True


def cache_frozen_outputs(trainer: Trainer, stage: str) -> None:
    """Compute the stage's frozen outputs of every training image once into ``trainer.frozen_train``
    (kept for a later stage whose frozen nets have the same weights), or drop the cache when the
    stage has none."""
    plan = cache_plan(trainer.config, trainer.model, stage)
    if plan is None:
        trainer.frozen_train = None
        return
    kind, nets = plan
    subset = stage_subset(trainer.train_set, stage)  # cls: graded images only; joint: all
    images = getattr(subset, "indices", range(len(subset)))
    key = f"{kind}:{hashlib.sha256(str(list(images)).encode()).hexdigest()}:{weights_fingerprint(nets)}"
    if trainer.frozen_train is not None and trainer.frozen_train.fingerprint == key:
        return
    trainer.frozen_train = None
    dataset = IndexedDataset(subset)
    size, model = trainer.config.data.hr_size, trainer.model
    shapes = {
        "lesion_logits": (model.seg.num_lesions, size, size),
        **({"stage_image": (3, size, size)} if kind == "lr" else {}),
    }
    if not fits_cache(trainer, len(dataset), shapes, f"the {stage} stage's frozen outputs"):
        return
    batch = getattr(trainer.config.train, stage).batch_size
    # Every process computes every image.
    loader = build_loader(dataset, batch, False, 0, trainer.config.data.num_workers)
    memory_format = torch.channels_last if trainer.channels_last else torch.preserve_format

    def outputs(batch: dict) -> dict[str, torch.Tensor]:
        with trainer.autocast():
            if kind == "hr":
                hr = batch["hr"].contiguous(memory_format=memory_format)
                return {"lesion_logits": model.segment(hr)}
            image = model.isr(batch["lr"].contiguous(memory_format=memory_format))
            return {"lesion_logits": model.segment(image), "stage_image": image}

    started = time.perf_counter()
    trainer.frozen_train = FrozenOutputs.compute(
        loader, outputs, trainer.device, key, trainer.progress
    )
    log.info(
        "cached the frozen nets' outputs of %d %s images in %.1f s",
        len(dataset),
        kind.upper(),
        time.perf_counter() - started,
    )


def frozen_val_lesions(
    trainer: Trainer, stage: str, mode: str, loader: DataLoader
) -> FrozenOutputs | None:
    """The validation images' lesion logits while the segmentation net (and, in LR mode, the
    ISR net) is frozen: the cls stage. Computed at the stage's first validation, kept in
    ``trainer.frozen_val``."""
    model = trainer.model
    if stage != "cls" or not trainer.config.train.cache_frozen or not model.use_lesions:
        return None
    nets = [model.seg] + ([model.isr] if mode == "lr" else [])
    key = f"{mode}:{weights_fingerprint(nets)}"
    if trainer.frozen_val is not None and trainer.frozen_val.fingerprint == key:
        return trainer.frozen_val
    trainer.frozen_val = None
    size = trainer.config.data.hr_size
    shapes = {"lesion_logits": (model.seg.num_lesions, size, size)}
    if not fits_cache(trainer, len(loader.sampler), shapes, "validation lesion maps"):
        return None
    model.eval()

    def outputs(batch: dict) -> dict[str, torch.Tensor]:
        with trainer.autocast():  # what evaluate() computes from the same images
            image = model.isr(batch["lr"]).float() if mode == "lr" else batch["hr"]
            return {"lesion_logits": model.segment(image)}

    trainer.frozen_val = FrozenOutputs.compute(loader, outputs, trainer.device, key)
    return trainer.frozen_val
