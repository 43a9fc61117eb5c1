"""HR -> LR degradation: shapes, ranges, errors, and that blur/noise do what they claim."""

import pytest
import torch
import torch.nn.functional as F

from data.degrade import bicubic_upsample, degrade
from data.records import DataError


def _image(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("scale", [2, 4, 8])
def test_shapes_and_range_single_and_batched(scale):
    hr = _image(2, 3, 32, 48)
    lr = degrade(hr, scale)
    assert lr.shape == (2, 3, 32 // scale, 48 // scale)
    assert degrade(hr[0], scale).shape == (3, 32 // scale, 48 // scale)
    assert lr.min() >= 0 and lr.max() <= 1


def test_batched_equals_per_image():
    hr = _image(3, 3, 32, 32)
    batched = degrade(hr, 4, blur_kernel=3)
    single = torch.stack([degrade(image, 4, blur_kernel=3) for image in hr])
    torch.testing.assert_close(batched, single)


def test_plain_degrade_is_torch_antialiased_bicubic():
    hr = _image(2, 3, 64, 64)
    expected = F.interpolate(
        hr, size=(16, 16), mode="bicubic", antialias=True, align_corners=False
    ).clamp(0, 1)
    torch.testing.assert_close(degrade(hr, 4), expected)


def test_size_not_divisible_names_size_and_scale():
    with pytest.raises(DataError, match=r"30x32.*scale 4"):
        degrade(_image(3, 30, 32), 4)


@pytest.mark.parametrize("shape", [(32, 32), (1, 32, 32), (2, 4, 32, 32)])
def test_bad_shape_raises(shape):
    with pytest.raises(DataError, match="hr"):
        degrade(torch.zeros(shape), 2)


@pytest.mark.parametrize("kernel", [2, 4, 1])
def test_bad_blur_kernel_raises(kernel):
    with pytest.raises(DataError, match="blur_kernel"):
        degrade(_image(3, 16, 16), 2, blur_kernel=kernel)


def test_negative_noise_raises():
    with pytest.raises(DataError, match="noise_var"):
        degrade(_image(3, 16, 16), 2, noise_var=-0.1)


def test_blur_removes_high_frequencies_before_downscaling():
    checker = (
        ((torch.arange(64)[:, None] + torch.arange(64)[None, :]) % 2).float().expand(3, 64, 64)
    )
    sharp = degrade(checker, 2)
    blurred = degrade(checker, 2, blur_kernel=3, blur_sigma=1.0)
    assert blurred.std() < sharp.std()
    assert not torch.equal(blurred, sharp)


def test_blur_of_constant_image_is_identity():
    flat = torch.full((3, 32, 32), 0.4)
    torch.testing.assert_close(
        degrade(flat, 4, blur_kernel=5, blur_sigma=2.0), torch.full((3, 8, 8), 0.4)
    )


def test_noise_has_requested_variance_and_is_reproducible():
    flat = torch.full((3, 256, 256), 0.5)
    first = degrade(flat, 2, noise_var=0.001, generator=torch.Generator().manual_seed(7))
    again = degrade(flat, 2, noise_var=0.001, generator=torch.Generator().manual_seed(7))
    other = degrade(flat, 2, noise_var=0.001, generator=torch.Generator().manual_seed(8))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert abs(float((first - 0.5).var()) - 0.001) < 0.0002


def test_noise_output_is_clamped():
    lr = degrade(
        torch.ones(3, 32, 32), 2, noise_var=0.5, generator=torch.Generator().manual_seed(0)
    )
    assert lr.min() >= 0 and lr.max() <= 1 and (lr < 1).any()


def test_bicubic_upsample_shape_range_and_reference():
    lr = _image(2, 3, 8, 12)
    sr = bicubic_upsample(lr, 4)
    assert sr.shape == (2, 3, 32, 48)
    assert sr.min() >= 0 and sr.max() <= 1
    expected = F.interpolate(lr, scale_factor=4, mode="bicubic", align_corners=False).clamp(0, 1)
    torch.testing.assert_close(sr, expected)
    assert bicubic_upsample(lr[0], 2).shape == (3, 16, 24)
