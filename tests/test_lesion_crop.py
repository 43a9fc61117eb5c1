"""Lesion-centred crops (data.lesion_crop_share): the share of crops centred on a lesion, the
lesion type drawn among those present, fallback without lesions, and share 0 unchanged."""

import math

import pytest
import torch

from data.crop import _gather_crops, lesion_offsets, random_crop
from engine.config import ConfigError, load_config

SIZE, CROP, SCALE = 64, 16, 4
MAX_OFFSET = (SIZE - CROP) // SCALE  # LR units
LESION = (12, 40)  # HR pixel whose centred crop (top 4, left 32) needs no clamping


def _batch(
    n: int, lesions: list[tuple[int, int, int]] = ((1, *LESION),), valid: bool = True
) -> dict:
    """``n`` copies (views: memory stays small) of one image with single-pixel lesions ``(type, row, col)``."""
    masks = torch.zeros(1, 4, SIZE, SIZE)
    for kind, row, col in lesions:
        masks[0, kind, row, col] = 1.0
    hr = torch.rand(1, 3, SIZE, SIZE)
    return {
        "hr": hr.expand(n, -1, -1, -1),
        "lr": torch.nn.functional.avg_pool2d(hr, SCALE).expand(n, -1, -1, -1),
        "masks": masks.expand(n, -1, -1, -1),
        "mask_valid": torch.full((n, 4), valid),
        "fov": torch.ones(1, 1, SIZE, SIZE).expand(n, -1, -1, -1),
    }


def _uniform(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, MAX_OFFSET + 1, (2, n), generator=generator)


def _within(count: int, n: int, p: float) -> bool:
    """``count`` successes in ``n`` draws is within 4 binomial standard deviations of ``n * p``."""
    return abs(count - n * p) <= 4 * math.sqrt(n * p * (1 - p))


@pytest.mark.parametrize("share", [0.3, 0.8])
def test_the_share_of_crops_centred_on_the_lesion(share):
    n = 2000
    top, left = _uniform(n, 0)
    new_top, new_left = lesion_offsets(
        _batch(n), top, left, CROP, SCALE, share, torch.Generator().manual_seed(1)
    )
    centred = (new_top * SCALE == LESION[0] - CROP // 2) & (
        new_left * SCALE == LESION[1] - CROP // 2
    )
    # A uniform crop is centred there by chance too: one offset pair of (MAX_OFFSET + 1) ** 2.
    expected = share + (1 - share) / (MAX_OFFSET + 1) ** 2
    assert _within(int(centred.sum()), n, expected), (int(centred.sum()), n * expected)
    # The others keep their uniform offsets.
    assert torch.equal(new_top[~centred], top[~centred]) and torch.equal(
        new_left[~centred], left[~centred]
    )


def test_every_crop_holds_the_lesion_at_share_one_even_at_the_border():
    corner = (1, SIZE - 2)  # clamped: the crop stays inside the image and still holds the pixel
    for row, col in (LESION, corner):
        batch = _batch(32, [(2, row, col)])
        out = random_crop(batch, CROP, SCALE, torch.Generator().manual_seed(2), lesion_share=1.0)
        assert out["masks"].shape == (32, 4, CROP, CROP)
        assert torch.all(out["masks"][:, 2].sum((-2, -1)) == 1)
        torch.testing.assert_close(torch.nn.functional.avg_pool2d(out["hr"], SCALE), out["lr"])
    centre = torch.nonzero(out["masks"][0, 2])[0].tolist()
    assert centre == [1, CROP - 2]


def test_the_lesion_type_is_drawn_among_those_present():
    n = 2000
    batch = _batch(n, [(0, 12, 12), (0, 13, 12), (3, 50, 50)])  # two MA pixels, one SE pixel
    top, left = _uniform(n, 3)
    new_top, new_left = lesion_offsets(
        batch, top, left, CROP, SCALE, 1.0, torch.Generator().manual_seed(4)
    )
    on_se = int(
        ((new_top == (50 - CROP // 2) // SCALE) & (new_left == (50 - CROP // 2) // SCALE)).sum()
    )
    on_ma = int(
        ((new_top == (12 - CROP // 2) // SCALE) & (new_left == (12 - CROP // 2) // SCALE)).sum()
    )  # rows 12 and 13 alike
    assert on_ma + on_se == n
    assert _within(
        on_se, n, 0.5
    )  # a type first (each present type alike), not a pixel among all types' (1/3)


def test_images_without_lesions_or_valid_masks_crop_uniformly():
    n = 64
    top, left = _uniform(n, 5)
    for batch in (_batch(n, []), _batch(n, valid=False)):
        new_top, new_left = lesion_offsets(
            batch, top, left, CROP, SCALE, 1.0, torch.Generator().manual_seed(6)
        )
        assert torch.equal(new_top, top) and torch.equal(new_left, left)


def test_share_zero_draws_what_it_drew_before():
    batch = _batch(8, [(1, 5, 60)])
    generator = torch.Generator().manual_seed(7)
    out = random_crop(batch, CROP, SCALE, generator, lesion_share=0.0)
    replay = torch.Generator().manual_seed(7)
    top = torch.randint(0, MAX_OFFSET + 1, (8,), generator=replay)
    left = torch.randint(0, MAX_OFFSET + 1, (8,), generator=replay)
    assert torch.equal(out["hr"], _gather_crops(batch["hr"], top * SCALE, left * SCALE, CROP))
    assert torch.equal(out["lr"], _gather_crops(batch["lr"], top, left, CROP // SCALE))
    assert torch.equal(generator.get_state(), replay.get_state())  # no extra draws


@pytest.mark.parametrize("value", [-0.1, 1.5])
def test_bad_share_names_the_key(value):
    with pytest.raises(ConfigError, match="data.lesion_crop_share must be in"):
        load_config(None, [f"data.lesion_crop_share={value}"])
