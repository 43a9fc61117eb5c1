"""Image super-resolution net (ISR): LR fundus ``[N,3,h,w]`` -> SR ``[N,3,s*h,s*w]`` in [0,1].

Follows the published ISR_Net (3x3 head, residual blocks, one x2 transposed-conv stage per
factor of two, 3x3 tail) with two departures, both listed in README:
- a global skip from the bicubic upsample, so the net learns the residual detail rather than
  the whole image (the published net had none and started from PyTorch's default init);
- the unused BatchNorm layers of the published residual blocks are left out.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

SUPPORTED_SCALES = (2, 4, 8)


class ResidualBlock(nn.Module):
    """conv3x3 -> LeakyReLU -> conv3x3, plus identity."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.act = nn.LeakyReLU(0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.act(self.conv1(x)))


class ISRNet(nn.Module):
    """Super-resolves a low-resolution fundus photograph by ``scale`` (2, 4 or 8)."""

    def __init__(
        self, scale: int = 4, channels: int = 32, num_blocks: int = 5, bicubic_skip: bool = True
    ) -> None:
        super().__init__()
        if scale not in SUPPORTED_SCALES:
            raise ValueError(f"ISR scale must be one of {SUPPORTED_SCALES}, got {scale}")
        if channels <= 0 or num_blocks < 0:
            raise ValueError(
                f"ISR channels must be > 0 and num_blocks >= 0, got {channels}, {num_blocks}"
            )
        self.scale = scale
        self.bicubic_skip = bicubic_skip
        self.head = nn.Sequential(nn.Conv2d(3, channels, 3, padding=1), nn.LeakyReLU(0.01))
        self.body = nn.Sequential(*[ResidualBlock(channels) for _ in range(num_blocks)])
        self.upsample = nn.Sequential(
            *[
                layer
                for _ in range(int(math.log2(scale)))
                for layer in (
                    nn.ConvTranspose2d(
                        channels, channels, 3, stride=2, padding=1, output_padding=1
                    ),
                    nn.LeakyReLU(0.01),
                )
            ]
        )
        self.tail = nn.Conv2d(channels, 3, 3, padding=1)
        if bicubic_skip:
            # Start as the bicubic upsampler: the residual branch begins at zero.
            nn.init.zeros_(self.tail.weight)
            nn.init.zeros_(self.tail.bias)

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        """lr ``[N,3,h,w]`` in [0,1] -> sr ``[N,3,scale*h,scale*w]`` in [0,1]."""
        residual = self.tail(self.upsample(self.body(self.head(lr))))
        if not self.bicubic_skip:
            return (torch.tanh(residual) + 1) / 2
        base = F.interpolate(lr, scale_factor=self.scale, mode="bicubic", align_corners=False)
        return (base + residual).clamp(0, 1)
