"""Batched random augmentation of collated training batches, on the device (``data.augment``).

332 graded IDRiD images are few; flips alone leave the grader and the segmentation net to
memorise them. One draw per sample on a CPU generator (reproducible whatever the device, as
``data.crop.random_flip``), applied to the whole batch at once, no loop over samples and no
host sync:

- geometry: a rotation about the centre and a zoom, one ``affine_grid`` per sample shared by
  every image-shaped key (``hr``, ``masks``, ``fov`` and the frozen-output maps
  ``lesion_logits``/``stage_image``), so image, lesion masks and FOV stay aligned;
- photometry on the HR image alone (masks and FOV unchanged): brightness, contrast around the
  mean grey inside the FOV (black stays black), gamma, a hue rotation;
- a Gaussian blur of the HR image with probability ``blur_prob`` (one grouped convolution);
- the LR input is then made again from the augmented HR image by ``data.degrade.degrade``, so
  ``(lr, hr)`` stays the degradation pair the ISR net inverts (resampling the LR image itself
  would blur it a second time at LR scale). Without noise this is exactly what the datasets do;
  with ``noise_var`` the noise is a fresh draw from the same generator.

The frozen-output maps were computed from the un-augmented image: they follow its geometry
but not its photometry (the same approximation the flips make, engine/frozen_cache.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from data.degrade import degrade

# Image-shaped keys moved by the geometric transform: (interpolation mode, padding mode).
# Lesion logits pad with the border (a zero logit would read as p = 0.5 of a lesion).
GEOMETRY_KEYS = {
    "hr": ("bilinear", "zeros"),
    "masks": ("nearest", "zeros"),
    "fov": ("nearest", "zeros"),
    "lesion_logits": ("bilinear", "border"),
    "stage_image": ("bilinear", "zeros"),
}
# RGB -> YIQ: a hue shift is a rotation of the (I, Q) chroma plane around the luminance axis.
_RGB_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ_TO_RGB = torch.linalg.inv(
    _RGB_TO_YIQ
)  # once, on the CPU (an inverse on CUDA checks its result on the host)
_DRAWS = 8  # random numbers per sample: angle, zoom, brightness, contrast, gamma, hue, blur on/off, blur sigma


@dataclass(frozen=True)
class AugmentSettings:
    """Strengths; each parameter is drawn uniformly per sample, 0 turns that operation off."""

    rotation: float = 180.0  # degrees: angle in [-rotation, rotation]
    scale: float = 0.1  # zoom factor in [1 - scale, 1 + scale]
    brightness: float = 0.2  # multiplicative factor in [1 - b, 1 + b]
    contrast: float = 0.2  # contrast factor in [1 - c, 1 + c]
    gamma: float = 0.2  # exponent in [1 - g, 1 + g]
    hue: float = 0.02  # turns: hue angle in [-hue, hue] * 360 degrees
    blur_sigma: float = 1.0  # HR pixels: sigma in (0, blur_sigma] when blurred
    blur_prob: float = 0.25  # share of samples blurred


def augment(
    batch: dict,
    settings: AugmentSettings,
    scale: int,
    generator: torch.Generator | None = None,
    blur_kernel: int = 0,
    blur_sigma: float = 0.0,
    noise_var: float = 0.0,
) -> dict:
    """Augment a collated batch (``hr [N,3,H,W]`` in [0,1], ``masks``, ``fov``, ...) and remake ``lr``.

    ``scale``, ``blur_kernel``, ``blur_sigma``, ``noise_var``: the dataset's HR -> LR degradation
    (data/degrade.py). Other keys pass through. Computed in float32 whatever the autocast state.
    """
    hr = batch["hr"]
    n, device = hr.shape[0], hr.device
    draws = torch.rand((_DRAWS, n), generator=generator).to(device, non_blocking=True)
    signed = 2 * draws - 1  # uniform in [-1, 1]
    out = dict(batch)
    with torch.autocast(device.type, enabled=False):
        theta = _affine(
            signed[0] * math.radians(settings.rotation),
            1 + settings.scale * signed[1],
            hr.shape[-2:],
        )
        grids: dict[tuple[int, int], torch.Tensor] = {}
        for key, (mode, padding) in GEOMETRY_KEYS.items():
            if key not in batch:
                continue
            image = batch[key]
            size = tuple(image.shape[-2:])
            if size not in grids:
                grids[size] = F.affine_grid(theta, [n, 1, *size], align_corners=False)
            moved = F.grid_sample(
                image.float(), grids[size], mode=mode, padding_mode=padding, align_corners=False
            )
            out[key] = moved.to(image.dtype)
        image = _photometric(out["hr"], signed, settings, out.get("fov"))
        if settings.blur_sigma > 0 and settings.blur_prob > 0:
            sigma = torch.where(draws[6] < settings.blur_prob, settings.blur_sigma * draws[7], 0.0)
            image = _blur(image, sigma, settings.blur_sigma)
        out["hr"] = image.contiguous(memory_format=_memory_format(hr))
        lr = degrade(image, scale, blur_kernel, blur_sigma)
        if noise_var > 0:
            noise = torch.randn(lr.shape, generator=generator).to(device, non_blocking=True)
            lr = (lr + noise * noise_var**0.5).clamp(0.0, 1.0)
        out["lr"] = lr.to(batch["lr"].dtype).contiguous(memory_format=_memory_format(batch["lr"]))
    return out


def augment_batch(batch: dict, data, generator: torch.Generator | None = None) -> dict:
    """:func:`augment` with the strengths and degradation of ``data``, the config's ``data`` section
    (its ``aug_*`` keys; read by name, so data/ imports nothing from engine/)."""
    settings = AugmentSettings(
        rotation=data.aug_rotation,
        scale=data.aug_scale,
        brightness=data.aug_brightness,
        contrast=data.aug_contrast,
        gamma=data.aug_gamma,
        hue=data.aug_hue,
        blur_sigma=data.aug_blur_sigma,
        blur_prob=data.aug_blur_prob,
    )
    return augment(
        batch, settings, data.scale, generator, data.blur_kernel, data.blur_sigma, data.noise_var
    )


def _affine(angle: torch.Tensor, zoom: torch.Tensor, size: torch.Size) -> torch.Tensor:
    """``[N,2,3]`` thetas: output pixel = zoom * R(angle) * input pixel about the centre.

    Built in pixel units and mapped to normalised coordinates, so a non-square image rotates
    without shear; normalised coordinates (align_corners=False) make it the same map at every
    resolution of the image.
    """
    height, width = size
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    zero = torch.zeros_like(cos)
    return torch.stack(
        [
            torch.stack([cos, sin * height / width, zero], -1),
            torch.stack([-sin * width / height, cos, zero], -1),
        ],
        1,
    )


def _photometric(
    image: torch.Tensor, signed: torch.Tensor, settings: AugmentSettings, fov: torch.Tensor | None
) -> torch.Tensor:
    """Brightness, contrast, gamma and hue of ``[N,3,H,W]``, per sample; black outside the FOV stays black."""
    view = (-1, 1, 1, 1)
    image = image * (1 + settings.brightness * signed[2]).view(view)
    inside = fov.float() if fov is not None else torch.ones_like(image[:, :1])
    grey = (image * _RGB_TO_YIQ[0].to(image.device, non_blocking=True).view(1, 3, 1, 1)).sum(
        1, keepdim=True
    )
    mean = (grey * inside).sum((-2, -1), keepdim=True) / inside.sum((-2, -1), keepdim=True).clamp(
        min=1.0
    )
    contrast = (1 + settings.contrast * signed[3]).view(view)
    image = (contrast * image + (1 - contrast) * mean * inside).clamp(0.0, 1.0)
    image = image ** (1 + settings.gamma * signed[4]).view(view)
    angle = 2 * math.pi * settings.hue * signed[5]
    cos, sin, zero, one = (
        torch.cos(angle),
        torch.sin(angle),
        torch.zeros_like(angle),
        torch.ones_like(angle),
    )
    rotation = torch.stack(
        [
            torch.stack([one, zero, zero], -1),
            torch.stack([zero, cos, -sin], -1),
            torch.stack([zero, sin, cos], -1),
        ],
        1,
    )
    hue = (
        _YIQ_TO_RGB.to(image.device, non_blocking=True)
        @ rotation
        @ _RGB_TO_YIQ.to(image.device, non_blocking=True)
    )  # [N,3,3]
    return torch.einsum("nij,njhw->nihw", hue, image).clamp(0.0, 1.0)


def _blur(image: torch.Tensor, sigma: torch.Tensor, max_sigma: float) -> torch.Tensor:
    """Separable Gaussian blur with a per-sample ``sigma [N]`` (0: unchanged), one grouped conv per axis."""
    n, channels, height, width = image.shape
    radius = math.ceil(3 * max_sigma)
    offsets = torch.arange(-radius, radius + 1, device=image.device, dtype=image.dtype)
    taps = torch.exp(
        -0.5 * (offsets / sigma.clamp(min=1e-6).view(-1, 1)) ** 2
    )  # sigma 0: a unit impulse
    taps = (taps / taps.sum(1, keepdim=True)).repeat_interleave(channels, 0)  # [N*C, K]
    size = 2 * radius + 1
    flat = F.pad(
        image.reshape(1, n * channels, height, width),
        (radius, radius, radius, radius),
        mode="reflect",
    )
    flat = F.conv2d(flat, taps.view(-1, 1, 1, size), groups=n * channels)
    flat = F.conv2d(flat, taps.view(-1, 1, size, 1), groups=n * channels)
    return flat.view(n, channels, height, width)


def _memory_format(image: torch.Tensor) -> torch.memory_format:
    """Channels-last when ``image`` is (the trainer's images are when the model is), else contiguous."""
    if (
        image.ndim == 4
        and image.is_contiguous(memory_format=torch.channels_last)
        and not image.is_contiguous()
    ):
        return torch.channels_last
    return torch.contiguous_format
