"""HR -> LR degradation: the only place in the project where low-resolution inputs are made.

The paper names Gaussian blur (3x3) and additive Gaussian noise (variance 0.001) on top of a bicubic
downscale; the published code never applied them, so both default to off (the data contract, data/records.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from data.records import DataError


def _as_batch(image: torch.Tensor, name: str) -> tuple[torch.Tensor, bool]:
    """View ``[3,H,W]`` or ``[N,3,H,W]`` as a batch; report whether a batch dim was added."""
    if image.ndim == 3 and image.shape[0] == 3:
        return image.unsqueeze(0), True
    if image.ndim == 4 and image.shape[1] == 3:
        return image, False
    raise DataError(f"{name} must be [3,H,W] or [N,3,H,W], got {tuple(image.shape)}")


def gaussian_kernel1d(kernel_size: int, sigma: float, dtype: torch.dtype) -> torch.Tensor:
    """Normalised 1-D Gaussian taps; ``sigma <= 0`` picks OpenCV's default for the size."""
    if sigma <= 0:
        sigma = 0.3 * ((kernel_size - 1) * 0.5 - 1) + 0.8
    offsets = torch.arange(kernel_size, dtype=dtype) - (kernel_size - 1) / 2
    taps = torch.exp(-0.5 * (offsets / sigma) ** 2)
    return taps / taps.sum()


def gaussian_blur(images: torch.Tensor, kernel_size: int, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``[N,C,H,W]`` with reflect padding (no dark rim at the border)."""
    if kernel_size < 3 or kernel_size % 2 == 0:
        raise DataError(f"blur_kernel must be 0 (off) or an odd size >= 3, got {kernel_size}")
    channels = images.shape[1]
    taps = gaussian_kernel1d(kernel_size, sigma, images.dtype).to(
        images.device, non_blocking=True
    )  # batches on a GPU too (data/augment.py)
    pad = kernel_size // 2
    padded = F.pad(images, (pad, pad, pad, pad), mode="reflect")
    horizontal = taps.view(1, 1, 1, -1).expand(channels, 1, 1, kernel_size)
    vertical = taps.view(1, 1, -1, 1).expand(channels, 1, kernel_size, 1)
    blurred = F.conv2d(padded, horizontal, groups=channels)
    return F.conv2d(blurred, vertical, groups=channels)


def degrade(
    hr: torch.Tensor,
    scale: int,
    blur_kernel: int = 0,
    blur_sigma: float = 0.0,
    noise_var: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Make the LR input from an HR image: optional blur, antialiased bicubic downscale, optional noise.

    hr: ``[3,H,W]`` or ``[N,3,H,W]`` float in [0,1], H and W divisible by ``scale``.
    Returns ``[...,3,H/scale,W/scale]`` in [0,1]. Pass a seeded ``generator`` for reproducible noise.
    """
    batch, added = _as_batch(hr, "hr")
    if scale < 1:
        raise DataError(f"scale must be a positive integer, got {scale}")
    height, width = batch.shape[-2:]
    if height % scale or width % scale:
        raise DataError(f"hr size {height}x{width} is not divisible by scale {scale}")
    if noise_var < 0:
        raise DataError(f"noise_var must be >= 0, got {noise_var}")
    if blur_kernel:
        batch = gaussian_blur(batch, blur_kernel, blur_sigma)
    lr = F.interpolate(
        batch,
        size=(height // scale, width // scale),
        mode="bicubic",
        antialias=True,
        align_corners=False,
    )
    if noise_var > 0:
        noise = torch.randn(lr.shape, generator=generator, dtype=lr.dtype, device=lr.device)
        lr = lr + noise * noise_var**0.5
    lr = lr.clamp(0.0, 1.0)
    return lr.squeeze(0) if added else lr


def bicubic_upsample(lr: torch.Tensor, scale: int) -> torch.Tensor:
    """The bicubic baseline SR: ``[...,3,h,w]`` in [0,1] -> ``[...,3,h*scale,w*scale]`` clamped to [0,1]."""
    batch, added = _as_batch(lr, "lr")
    if scale < 1:
        raise DataError(f"scale must be a positive integer, got {scale}")
    sr = F.interpolate(batch, scale_factor=scale, mode="bicubic", align_corners=False).clamp(
        0.0, 1.0
    )
    return sr.squeeze(0) if added else sr
