"""Sub-nets the compared methods and ablations swap in: a parameter-free bicubic "ISR" and a
torchvision ResNet-50 grader. (Chen et al.'s net is top-level ``chen_net.py``, as the design card
keeps it.) Nothing is downloaded: ImageNet weights come from a local file or not at all.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F
from torchvision import models as tv_models

from models.grading import IMAGENET_MEAN, IMAGENET_STD


class BicubicUpsampler(nn.Module):
    """Stands in for the ISR net where a method has none: lr ``[N,3,h,w]`` -> ``[N,3,s*h,s*w]`` in [0,1].

    The same bicubic upsample (``align_corners=False``, clamped) as the ISR net's global skip and
    the evaluation's bicubic baseline. No parameters, so no stage trains it.
    """

    def __init__(self, scale: int = 4) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        return F.interpolate(lr, scale_factor=self.scale, mode="bicubic", align_corners=False).clamp(0, 1)


class ResNetGrader(nn.Module):
    """A torchvision ResNet (default ResNet-50) on ``cat(image, lesion maps)`` ``[N,3+L,H,W]`` -> logits.

    The strong single-task baseline: the torchvision network as is (stem widened for lesion
    channels, which start at zero), ImageNet normalisation of the image channels, global average
    pooling and a two-layer head (``hidden`` units, ReLU, dropout) like the DeepMT-DR grader's.
    """

    def __init__(
        self,
        num_classes: int = 5,
        num_lesions: int = 0,
        hidden: int = 512,
        dropout: float = 0.5,
        pretrained_path: str | Path | None = None,
        arch: str = "resnet50",
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        backbone = getattr(tv_models, arch)(weights=None)
        if pretrained_path is not None:
            backbone.load_state_dict(load_torchvision_state(pretrained_path, arch))
        self.num_lesions = num_lesions
        old = backbone.conv1
        self.stem = nn.Conv2d(3 + num_lesions, old.out_channels, old.kernel_size, old.stride, old.padding, bias=False)
        with torch.no_grad():
            self.stem.weight.zero_()
            self.stem.weight[:, :3] = old.weight
        self.bn1, self.relu, self.maxpool = backbone.bn1, backbone.relu, backbone.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = backbone.layer1, backbone.layer2, backbone.layer3, backbone.layer4
        self.head = nn.Sequential(
            nn.Linear(backbone.fc.in_features, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def stages(self) -> list[nn.Module]:
        """The four residual stages whose outputs feed Grad-CAM."""
        return [self.layer1, self.layer2, self.layer3, self.layer4]

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """x ``[N,3+L,H,W]`` in [0,1] -> (logits ``[N,C]``, stage outputs)."""
        if x.shape[1] != 3 + self.num_lesions:
            raise ValueError(f"ResNet grader expects {3 + self.num_lesions} input channels, got {x.shape[1]}")
        x = torch.cat([(x[:, :3] - self.mean) / self.std, x[:, 3:]], dim=1)
        x = self.maxpool(self.relu(self.bn1(self.stem(x))))
        features = []
        for stage in self.stages():
            x = stage(x)
            features.append(x)
        return self.head(x.mean(dim=(2, 3))), features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)[0]


def load_torchvision_state(path: str | Path, arch: str) -> dict[str, torch.Tensor]:
    """A torchvision ``arch`` ImageNet state dict from a local file (nothing is downloaded)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"ImageNet weights not found at {path}: download torchvision's {arch} weights on a machine "
            "with internet and pass the local path (model.imagenet_weights=PATH)"
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict) or "conv1.weight" not in state:
        raise ValueError(f"{path} is not a torchvision {arch} state dict (no 'conv1.weight')")
    return state
