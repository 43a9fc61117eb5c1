"""Lesion segmentation net: fundus image ``[N,3,H,W]`` -> lesion logits ``[N,4,H,W]`` (MA, HE, EX, SE).

The published multi-scale U-Net (parallel 3x3 and 5x5 convolutions in every block, five
levels of widths ``16r .. 256r`` for width multiplier ``r``) with deep supervision: a 1x1 head
at every decoder level, each upsampled to full size and summed with fixed weights. Departures
from the published code (docs/DIFFERENCES.md lists them): the full-resolution head takes part in the sum
(upstream dropped it, so its output was blocky at 1/2 resolution), heads are upsampled
bilinearly, and the lesions are four independent sigmoid channels (they overlap, so a softmax
with a background channel, which upstream trained with sigmoid and consumed with softmax, is
not used).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

NUM_LEVELS = 5
# Weights of the deep-supervision heads, coarse (1/16) to fine (full resolution).
HEAD_WEIGHTS = (0.4, 0.2, 0.2, 1.0, 1.0)


def _level_widths(width: float) -> list[int]:
    return [max(2, int(round(16 * width * 2**level)) // 2 * 2) for level in range(NUM_LEVELS)]


class MultiScaleConv(nn.Module):
    """Parallel 3x3 and 5x5 convolutions, concatenated: sees two receptive fields at once."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv3 = nn.Conv2d(in_channels, out_channels // 2, 3, padding=1)
        self.conv5 = nn.Conv2d(in_channels, out_channels - out_channels // 2, 5, padding=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.conv3(x), self.conv5(x)], dim=1)


class ConvBlock(nn.Sequential):
    """Multi-scale conv -> BN -> ReLU -> conv3x3 -> BN -> ReLU."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            MultiScaleConv(in_channels, out_channels),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class Upsample2x(nn.Module):
    """Nearest x2 upsample; a batch whose output passes ``max_elements`` goes through in slices.

    CUDA's nearest-upsample backward indexes with 32-bit integers and refuses larger tensors
    (seen at HR 1024, batch 16, channels-last: ``[16,128,1024,1024]``).
    """

    max_elements = 2**31 - 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        per_sample = 4 * x[0].numel()
        if x.shape[0] * per_sample <= self.max_elements:
            return F.interpolate(x, scale_factor=2, mode="nearest")
        slices = x.split(max(1, self.max_elements // per_sample))
        return torch.cat([F.interpolate(part, scale_factor=2, mode="nearest") for part in slices])


class UpBlock(nn.Sequential):
    """Nearest x2 upsample -> multi-scale conv -> BN -> ReLU."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            Upsample2x(),
            MultiScaleConv(in_channels, out_channels),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class LesionSegNet(nn.Module):
    """Multi-scale U-Net with deep supervision; ``width`` is the paper's ratio r (4 = published)."""

    def __init__(self, in_channels: int = 3, num_lesions: int = 4, width: float = 4.0) -> None:
        super().__init__()
        if width <= 0:
            raise ValueError(f"segmentation width multiplier must be > 0, got {width}")
        widths = _level_widths(width)
        self.num_lesions = num_lesions
        self.encoders = nn.ModuleList(
            [
                ConvBlock(in_channels if i == 0 else widths[i - 1], widths[i])
                for i in range(NUM_LEVELS)
            ]
        )
        # Decoder level i (0 = full resolution) takes the level below, upsampled, plus the skip.
        self.ups = nn.ModuleList([UpBlock(widths[i + 1], widths[i]) for i in range(NUM_LEVELS - 1)])
        self.decoders = nn.ModuleList(
            [ConvBlock(2 * widths[i], widths[i]) for i in range(NUM_LEVELS - 1)]
        )
        self.heads = nn.ModuleList(
            [nn.Conv2d(widths[i], num_lesions, 1) for i in range(NUM_LEVELS)]
        )
        self.register_buffer("head_weights", torch.tensor(HEAD_WEIGHTS[::-1]), persistent=False)
        # Activation checkpointing (model.seg_checkpoint): recompute each block in the backward
        # pass. Used only while the net is frozen (eval mode: the joint step, where gradients
        # flow through it into the ISR net at full HR size); in training mode the recomputation
        # would update BatchNorm's running statistics twice.
        self.checkpoint = False

    @torch.no_grad()
    def init_prior(self, probability: float) -> None:
        """Bias the heads so that every lesion map starts at ``probability`` (RetinaNet's prior).

        The summed logits then start near ``logit(probability)``: the first steps learn where
        lesions are instead of pushing a map of 0.5 down to the ~1% of pixels that are lesions.
        """
        logit = math.log(probability / (1 - probability))
        for head in self.heads:
            head.bias.fill_(logit / float(self.head_weights.sum()))

    def _block(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.checkpoint and not self.training and torch.is_grad_enabled() and x.requires_grad:
            return checkpoint(block, x, use_reentrant=False)
        return block(x)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """image ``[N,C,H,W]`` (H, W divisible by 16) -> lesion logits ``[N,4,H,W]``."""
        size = image.shape[-2:]
        if size[0] % 2 ** (NUM_LEVELS - 1) or size[1] % 2 ** (NUM_LEVELS - 1):
            raise ValueError(
                f"segmentation input size {tuple(size)} must be divisible by {2 ** (NUM_LEVELS - 1)}"
            )
        skips = []
        x = image
        for level, encoder in enumerate(self.encoders):
            x = self._block(encoder, x if level == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        # Decode from the bottleneck; features[level] is the decoder output at that level.
        features = {NUM_LEVELS - 1: x}
        for level in reversed(range(NUM_LEVELS - 1)):
            x = self._block(
                self.decoders[level],
                torch.cat([skips[level], self._block(self.ups[level], x)], dim=1),
            )
            features[level] = x
        logits = self.heads[0](features[0]) * self.head_weights[0]
        for level in range(1, NUM_LEVELS):
            head = F.interpolate(
                self.heads[level](features[level]), size=size, mode="bilinear", align_corners=False
            )
            logits = logits + head * self.head_weights[level]
        return logits
