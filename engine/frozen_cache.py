"""Outputs of frozen sub-nets, computed once per image instead of once per epoch (``train.cache_frozen``).

In the ``cls`` stage the segmentation net is frozen (and, with ``train.input=lr``, the ISR
net too), so the lesion logits of each training image are constants of the stage; the
``joint`` stage needs the same maps of the HR images as the target of its segmentation-aware
and task-aware losses. :class:`FrozenOutputs` computes them in one no-grad pass over the
images and hands each batch its rows by index, on the device, without a host round trip.
Random flips are applied to the looked-up maps with the batch (``data.crop.random_flip``), so a
flipped image gets the flipped map of the unflipped image: the same map up to the net's own
(small) lack of flip equivariance.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset


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
