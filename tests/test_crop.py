"""Batched random crops keep LR and HR aligned."""

import pytest
import torch

from data.crop import random_crop, random_flip
from data.records import DataError


def test_crops_are_aligned_and_per_sample():
    hr = torch.rand(4, 3, 64, 64)
    lr = torch.nn.functional.avg_pool2d(hr, 4)
    batch = {
        "hr": hr,
        "lr": lr,
        "masks": hr[:, :1].repeat(1, 4, 1, 1),
        "fov": hr[:, :1],
        "grade": torch.arange(4),
        "id": list("abcd"),
    }
    out = random_crop(batch, 32, 4, torch.Generator().manual_seed(0))
    assert out["hr"].shape == (4, 3, 32, 32) and out["lr"].shape == (4, 3, 8, 8)
    assert out["masks"].shape == (4, 4, 32, 32) and out["fov"].shape == (4, 1, 32, 32)
    torch.testing.assert_close(torch.nn.functional.avg_pool2d(out["hr"], 4), out["lr"])
    torch.testing.assert_close(out["masks"][:, 0], out["hr"][:, 0])
    assert out["id"] == list("abcd") and torch.equal(out["grade"], torch.arange(4))
    # Each sample gets its own offset: the crops are not all taken at one place.
    offsets = {
        tuple(torch.nonzero(hr[i, 0] == out["hr"][i, 0, 0, 0])[0].tolist()) for i in range(4)
    }
    assert len(offsets) > 1


def test_no_crop_when_size_is_zero_or_too_large():
    batch = {
        "hr": torch.rand(1, 3, 16, 16),
        "lr": torch.rand(1, 3, 4, 4),
        "masks": torch.rand(1, 4, 16, 16),
        "fov": torch.rand(1, 1, 16, 16),
    }
    assert random_crop(batch, 0, 4) is batch and random_crop(batch, 16, 4) is batch


def test_crop_must_divide_by_scale():
    batch = {
        "hr": torch.rand(1, 3, 64, 64),
        "lr": torch.rand(1, 3, 16, 16),
        "masks": torch.rand(1, 4, 64, 64),
        "fov": torch.rand(1, 1, 64, 64),
    }
    with pytest.raises(DataError, match="crop size 30"):
        random_crop(batch, 30, 4)


def _flip_batch(n: int = 64) -> dict:
    hr = torch.rand(n, 3, 8, 8)
    return {
        "hr": hr,
        "lr": hr[:, :, ::4, ::4].clone(),
        "masks": (torch.rand(n, 4, 8, 8) > 0.5).float(),
        "fov": (torch.rand(n, 1, 8, 8) > 0.5).float(),
        "grade": torch.arange(n),
    }


def test_flips_are_per_sample_and_keep_image_and_masks_together():
    batch = _flip_batch()
    out = random_flip(batch, torch.Generator().manual_seed(0))
    assert torch.equal(out["grade"], batch["grade"])
    seen = set()
    for i in range(len(batch["hr"])):
        matches = [
            (h, v)
            for h in (False, True)
            for v in (False, True)
            if torch.equal(out["hr"][i], _flipped(batch["hr"][i], h, v))
        ]
        assert len(matches) == 1, f"sample {i} is not a flip of its input"
        h, v = matches[0]
        seen.add((h, v))
        for key in ("lr", "masks", "fov"):
            assert torch.equal(out[key][i], _flipped(batch[key][i], h, v)), key
    assert seen == {(False, False), (False, True), (True, False), (True, True)}


def _flipped(image: torch.Tensor, horizontal: bool, vertical: bool) -> torch.Tensor:
    if horizontal:
        image = image.flip(-1)
    if vertical:
        image = image.flip(-2)
    return image


def test_flips_are_reproducible_from_the_generator():
    batch = _flip_batch()
    first = random_flip(batch, torch.Generator().manual_seed(3))
    second = random_flip(batch, torch.Generator().manual_seed(3))
    assert all(torch.equal(first[key], second[key]) for key in ("hr", "lr", "masks", "fov"))
