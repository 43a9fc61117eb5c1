"""What the compared methods and ablations swap in for the ISR net: a parameter-free bicubic
upsampler. (Their graders: the torchvision ResNet-50 of ``models.grading.ResNetGrader`` and
Chen et al.'s net, ``chen_net.py`` at the repository root, built by ``models/registry.py``.)
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class BicubicUpsampler(nn.Module):
    """Stands in for the ISR net where a method has none: lr ``[N,3,h,w]`` -> ``[N,3,s*h,s*w]`` in [0,1].

    The same bicubic upsample (``align_corners=False``, clamped) as the ISR net's global skip and
    the evaluation's bicubic baseline. No parameters, so no stage trains it.
    """

    def __init__(self, scale: int = 4) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        return F.interpolate(
            lr, scale_factor=self.scale, mode="bicubic", align_corners=False
        ).clamp(0, 1)
