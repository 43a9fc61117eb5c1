"""Super-resolution metrics: PSNR and SSIM (Wang et al. 2004) inside the field of view, and PSNR
inside lesion regions. Batched torch on the tensors' own device; per-image values (a split's
number is their mean, taken in engine/evaluator.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

MSE_FLOOR = 1e-10
"""Lower bound on the MSE so identical images give a finite PSNR (100 dB) instead of inf."""

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_C1 = 0.01**2
SSIM_C2 = 0.03**2

LESION_DILATION_AT_1024 = 4
"""Lesion masks are dilated by this many pixels at an HR height of 1024 (scaled with H)."""


def _check_pair(sr: torch.Tensor, hr: torch.Tensor, region: torch.Tensor | None) -> None:
    """Shapes: ``sr`` and ``hr`` ``[N,C,H,W]`` alike, region ``[N,1,H,W]``."""
    if sr.ndim != 4 or sr.shape != hr.shape:
        raise ValueError(
            "expected sr and hr of the same shape [N,3,H,W]; "
            f"got {tuple(sr.shape)} and {tuple(hr.shape)}"
        )
    if region is not None and region.shape != (sr.shape[0], 1, *sr.shape[-2:]):
        raise ValueError(
            f"expected a mask [N,1,H,W] = {(sr.shape[0], 1, *sr.shape[-2:])}; "
            f"got {tuple(region.shape)}"
        )


def _masked_image_mean(values: torch.Tensor, region: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``values [N,C,H,W]`` per image over all channels and the pixels where
    ``region [N,1,H,W]`` is set (all pixels when None) -> ``[N]``; NaN for an empty region."""
    if region is None:
        return values.flatten(1).mean(1)
    weight = region.to(values.dtype).expand_as(values)
    return (values * weight).flatten(1).sum(1) / weight.flatten(1).sum(1)


def psnr_per_image(
    sr: torch.Tensor, hr: torch.Tensor, region: torch.Tensor | None = None
) -> torch.Tensor:
    """PSNR in dB of each image, data range 1: ``10 log10(1 / MSE)``.

    Args:
        sr, hr: ``[N,3,H,W]`` in [0,1] (no clamping, no border crop, RGB).
        region: ``[N,1,H,W]`` in {0,1} (field of view, lesion area) or None for the whole image; the
            MSE is over the pixels inside it and all channels.

    Returns ``[N]`` float on the input device. MSE is floored at ``MSE_FLOOR`` (PSNR <= 100 dB);
    an image with an empty region gives NaN.
    """
    _check_pair(sr, hr, region)
    mse = _masked_image_mean((sr.float() - hr.float()).square(), region)
    return 10.0 * torch.log10(1.0 / mse.clamp_min(MSE_FLOOR))


def _gaussian_window(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Normalised 1-D Gaussian, ``SSIM_WINDOW`` taps, sigma ``SSIM_SIGMA`` -> ``[SSIM_WINDOW]``."""
    x = torch.arange(SSIM_WINDOW, device=device, dtype=dtype) - (SSIM_WINDOW - 1) / 2
    w = torch.exp(-(x**2) / (2 * SSIM_SIGMA**2))
    return w / w.sum()


def _gaussian_filter_valid(x: torch.Tensor) -> torch.Tensor:
    """Separable depthwise Gaussian with no padding: ``[N,K,H,W]`` -> ``[N,K,H-10,W-10]``."""
    channels = x.shape[1]
    w = _gaussian_window(x.device, x.dtype)
    x = F.conv2d(x, w.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)
    return F.conv2d(x, w.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)


def ssim_map(sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
    """Local SSIM of Wang et al. 2004 per channel over the 'valid' region -> ``[N,C,H-10,W-10]``.

    Gaussian window 11 taps, sigma 1.5; ``C1 = 0.01^2``, ``C2 = 0.03^2`` (data range 1); population
    (co)variances; no padding, so each value sees only real pixels. Averaging the map over pixels
    and channels equals skimage ``structural_similarity(gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=1, channel_axis=-1)``, which crops the same 5-px border.

    Computed in float32 (float64 inputs stay float64) on values shifted by 0.5, the middle of the
    data range: (co)variances do not change with the shift, and ``E[x^2] - E[x]^2`` of values in
    [-0.5, 0.5] keeps float32 within ~1e-6 of float64, at a fifth of float64's CPU time.
    """
    height, width = sr.shape[-2:]
    if height < SSIM_WINDOW or width < SSIM_WINDOW:
        raise ValueError(
            f"SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW}; got {height}x{width}"
        )
    dtype = torch.float64 if torch.float64 in (sr.dtype, hr.dtype) else torch.float32
    x, y = sr.to(dtype), hr.to(dtype)
    shift = 0.5
    x, y = x - shift, y - shift
    stats = _gaussian_filter_valid(torch.cat([x, y, x * x, y * y, x * y], dim=1))
    mx, my, mxx, myy, mxy = stats.chunk(5, dim=1)
    vx, vy, cxy = mxx - mx * mx, myy - my * my, mxy - mx * my
    mx, my = mx + shift, my + shift
    luminance = (2 * mx * my + SSIM_C1) / (mx * mx + my * my + SSIM_C1)
    structure = (2 * cxy + SSIM_C2) / (vx + vy + SSIM_C2)
    return luminance * structure


def ssim_per_image(
    sr: torch.Tensor, hr: torch.Tensor, region: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean SSIM of each image (see ``ssim_map``) -> ``[N]`` float32 on the input device.

    Args:
        sr, hr: ``[N,3,H,W]`` in [0,1], ``H, W >= 11`` (ValueError otherwise).
        region: ``[N,1,H,W]`` in {0,1} or None. When given, the map is averaged over the window
            centres inside it: the region is cropped by 5 px per side to the map's valid area.
    """
    _check_pair(sr, hr, region)
    local = ssim_map(sr, hr)
    border = (SSIM_WINDOW - 1) // 2
    if region is not None:
        region = region[..., border:-border, border:-border]
    return _masked_image_mean(local, region).float()


def lesion_region(lesion_masks: torch.Tensor, fov: torch.Tensor | None = None) -> torch.Tensor:
    """Where lesion PSNR is measured: union of the lesion masks, dilated, inside the FOV.

    ``lesion_masks [N,L,H,W]`` {0,1} -> ``[N,1,H,W]`` {0,1}. The dilation radius is
    ``round(4 * H / 1024)`` px (at least 1): 4 px at 1024, scaled with resolution. It is a max-pool
    (square structuring element) on the device. Pass masks zeroed where a lesion is not annotated.
    """
    radius = max(1, round(LESION_DILATION_AT_1024 * lesion_masks.shape[-2] / 1024))
    union = (lesion_masks > 0.5).amax(dim=1, keepdim=True).float()
    region = F.max_pool2d(union, kernel_size=2 * radius + 1, stride=1, padding=radius)
    return region if fov is None else region * (fov > 0.5)
