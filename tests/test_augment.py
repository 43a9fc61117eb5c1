"""Batched augmentation (data.augment) keeps image, masks, FOV, cached maps and LR aligned,
leaves masks alone in its photometric part, is the identity at zero strength, reproducible from
its generator and free of host syncs."""

import pytest
import torch

from data.augment import AugmentSettings, _blur, augment
from data.degrade import degrade, gaussian_blur
from engine.config import ConfigError, load_config
from tests.test_fast_paths import _no_host_transfers, _trainer
from tests.test_trainer_steps import _batch

SCALE = 4
GEOMETRY_ONLY = AugmentSettings(
    rotation=180.0, scale=0.1, brightness=0.0, contrast=0.0, gamma=0.0, hue=0.0, blur_sigma=0.0
)
NOTHING = AugmentSettings(
    rotation=0.0, scale=0.0, brightness=0.0, contrast=0.0, gamma=0.0, hue=0.0, blur_sigma=0.0
)


def _square_batch(n: int = 8, size: int = 64) -> dict:
    """A white square off the centre on black, marked in the lesion masks and the cached maps."""
    hr = torch.zeros(n, 3, size, size)
    hr[:, :, 8:16, 40:48] = 1.0
    masks = torch.zeros(n, 4, size, size)
    masks[:, 1, 8:16, 40:48] = 1.0
    fov = torch.zeros(n, 1, size, size)
    fov[:, :, 4:28, 30:60] = 1.0
    return {
        "hr": hr,
        "lr": degrade(hr, SCALE),
        "masks": masks,
        "mask_valid": torch.ones(n, 4, dtype=torch.bool),
        "fov": fov,
        "lesion_logits": torch.where(masks > 0, 5.0, -5.0),
        "stage_image": hr.clone(),
        "grade": torch.arange(n),
    }


def _assert_same(actual: torch.Tensor, expected: torch.Tensor, key: str) -> None:
    """Equal up to float32 rounding of resampling at the pixel centres, relative to the values' size."""
    torch.testing.assert_close(
        actual, expected, rtol=0, atol=1e-5 * float(expected.abs().max()), msg=key
    )


def _centroids(maps: torch.Tensor) -> torch.Tensor:
    """``[N,H,W]`` non-negative maps -> ``[N,2]`` (row, col) centres of mass."""
    rows = torch.arange(maps.shape[-2], dtype=maps.dtype).view(1, -1, 1)
    cols = torch.arange(maps.shape[-1], dtype=maps.dtype).view(1, 1, -1)
    total = maps.sum((-2, -1))
    return torch.stack(
        [(maps * rows).sum((-2, -1)) / total, (maps * cols).sum((-2, -1)) / total], -1
    )


def test_geometry_moves_image_masks_fov_cached_maps_and_lr_together():
    batch = _square_batch()
    out = augment(batch, GEOMETRY_ONLY, SCALE, torch.Generator().manual_seed(0))
    lesion = _centroids(out["masks"][:, 1])
    # The square moved (rotations up to 180 degrees about the centre), differently per sample.
    assert (lesion - _centroids(batch["masks"][:, 1])).norm(dim=-1).max() > 5
    assert torch.unique(lesion.round(), dim=0).shape[0] > 1
    for key, maps, tolerance in [
        ("hr", out["hr"].mean(1), 1.0),
        ("stage_image", out["stage_image"].mean(1), 1.0),
        ("lesion_logits", (out["lesion_logits"][:, 1] > 0).float(), 1.0),
    ]:
        assert (_centroids(maps) - lesion).norm(dim=-1).max() < tolerance, key
    # LR pixel j covers HR pixels SCALE*j .. SCALE*j + SCALE - 1.
    lr_centre = _centroids(out["lr"].mean(1)) * SCALE + (SCALE - 1) / 2
    assert (lr_centre - lesion).norm(dim=-1).max() < 1.5
    assert torch.all(
        out["masks"][:, 1] <= out["fov"][:, 0]
    )  # one grid: the lesion stays inside its FOV
    assert set(out["masks"].unique().tolist()) <= {0.0, 1.0} and set(
        out["fov"].unique().tolist()
    ) <= {0.0, 1.0}
    assert out["masks"][:, [0, 2, 3]].sum() == 0
    assert torch.equal(out["grade"], batch["grade"]) and torch.equal(
        out["mask_valid"], batch["mask_valid"]
    )


def test_lr_is_the_degradation_of_the_augmented_hr():
    batch = _square_batch()
    out = augment(batch, AugmentSettings(), SCALE, torch.Generator().manual_seed(1))
    torch.testing.assert_close(out["lr"], degrade(out["hr"], SCALE))
    noisy = augment(
        batch, AugmentSettings(), SCALE, torch.Generator().manual_seed(1), noise_var=1e-3
    )
    torch.testing.assert_close(noisy["hr"], out["hr"])
    assert 0.01 < (noisy["lr"] - out["lr"]).std() < 0.05  # noise of standard deviation ~0.03 on top


def test_photometric_ops_change_the_image_but_not_masks_or_fov():
    batch = _square_batch()
    batch["hr"] = (batch["hr"] * 0.6 + 0.2 * torch.rand_like(batch["hr"])) * batch["fov"]
    photometric = AugmentSettings(rotation=0.0, scale=0.0, blur_prob=1.0)
    out = augment(batch, photometric, SCALE, torch.Generator().manual_seed(2))
    for key in ("masks", "fov"):
        assert torch.equal(out[key], batch[key]), key
    _assert_same(
        out["lesion_logits"], batch["lesion_logits"], "lesion_logits"
    )  # bilinear at the pixel centres
    change = (out["hr"] - batch["hr"]).abs().mean((1, 2, 3))
    assert torch.all(change > 1e-3)
    assert out["hr"].min() >= 0 and out["hr"].max() <= 1
    near_fov = torch.nn.functional.max_pool2d(
        batch["fov"], 7, stride=1, padding=3
    )  # the blur's reach: 3 px
    assert (
        out["hr"].mul(1 - near_fov).max() < 1e-6
    )  # black outside the FOV stays black (up to the conv's round-off)


def test_zero_strengths_are_the_identity():
    batch = _square_batch()
    batch["hr"] = torch.rand_like(batch["hr"])
    batch["lr"] = degrade(batch["hr"], SCALE)
    out = augment(batch, NOTHING, SCALE, torch.Generator().manual_seed(3))
    for key in ("masks", "fov"):
        assert torch.equal(out[key], batch[key]), key
    for key in ("hr", "lr", "lesion_logits", "stage_image"):
        _assert_same(out[key], batch[key], key)


def test_reproducible_from_the_generator():
    batch = _square_batch()
    first = augment(batch, AugmentSettings(), SCALE, torch.Generator().manual_seed(4))
    second = augment(batch, AugmentSettings(), SCALE, torch.Generator().manual_seed(4))
    other = augment(batch, AugmentSettings(), SCALE, torch.Generator().manual_seed(5))
    assert all(
        torch.equal(first[key], second[key])
        for key in ("hr", "lr", "masks", "fov", "lesion_logits")
    )
    assert not torch.equal(first["hr"], other["hr"])


def test_per_sample_blur_matches_the_degradation_blur():
    image = torch.rand(3, 3, 32, 32)
    blurred = _blur(image, torch.tensor([0.0, 1.0, 0.5]), 1.0)  # 7 taps
    torch.testing.assert_close(blurred[0], image[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(blurred[1:2], gaussian_blur(image[1:2], 7, 1.0))
    torch.testing.assert_close(blurred[2:3], gaussian_blur(image[2:3], 7, 0.5))


def test_float32_under_autocast_and_channels_last_kept():
    batch = _square_batch()
    batch["hr"] = batch["hr"].contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = augment(batch, AugmentSettings(), SCALE, torch.Generator().manual_seed(6))
    assert out["hr"].dtype == torch.float32 and out["lr"].dtype == torch.float32
    assert out["hr"].is_contiguous(memory_format=torch.channels_last)


def test_augment_and_lesion_crops_do_not_synchronise_with_the_host(tmp_path):
    trainer = _trainer(
        tmp_path,
        "data.flip=true",
        "data.augment=true",
        "data.lesion_crop_share=0.5",
        "data.noise_var=0.001",
    )
    for stage in ("isr", "cls"):
        batch = _batch()
        with _no_host_transfers():
            out = trainer._batch(batch, stage)
        assert out["hr"].shape[-1] == (32 if stage == "isr" else 64)
        assert not torch.equal(
            out["hr"], batch["hr"][..., : out["hr"].shape[-2], : out["hr"].shape[-1]]
        )


@pytest.mark.parametrize(
    "override, message",
    [
        ("data.aug_rotation=200", "data.aug_rotation must be in"),
        ("data.aug_scale=-0.1", "data.aug_scale must be in"),
        ("data.aug_blur_sigma=9", "data.aug_blur_sigma must be in"),
        ("data.aug_blur_prob=1.5", "data.aug_blur_prob must be in"),
        ("data.aug_hue=0.6", "data.aug_hue must be in"),
        ("data.augment=maybe", "data.augment' expects"),
    ],
)
def test_bad_strengths_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_off_by_default():
    data = load_config("configs/paper.yaml").data
    assert (data.augment, data.balanced_sampling, data.lesion_crop_share) == (False, False, 0.0)
