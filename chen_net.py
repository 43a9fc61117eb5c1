"""Chen et al., EMBC 2015: the "4 conv + 2 FC" glaucoma CNN, as a grading baseline.

X. Chen, Y. Xu, D. W. K. Wong, T. Y. Wong, J. Liu, "Glaucoma detection based on deep
convolutional neural network", EMBC 2015 (AUC 0.831 on ORIGA, 0.887 on SCES). The layer details
follow the re-implementation the DeepGF authors used for their comparisons
(``Compared Methods/chen_net.py`` of XiaofeiWang2018/DeepGF, TensorFlow 1.x); the paper's own layer table was not available.

=================  ==========================================================  =============
block              layers                                                      out at 224
=================  ==========================================================  =============
``block1``         conv 96 @ 11x11 / 4, leaky ReLU 0.1, LRN, max-pool 3 / 2    28x28x96
``block2``         conv 192 @ 5x5, leaky ReLU 0.1, LRN, max-pool 3 / 2         14x14x192
``block3``         conv 192 @ 3x3, leaky ReLU 0.1, max-pool 3 / 2              7x7x192
``block4``         conv 192 @ 3x3, leaky ReLU 0.1, max-pool 3 / 2              4x4x192
``head``           FC 256, leaky ReLU 0.1, dropout 0.5, FC ``num_classes``      logits
=================  ==========================================================  =============

Kept from the re-implementation: TensorFlow ``SAME`` padding, asymmetric where TF pads
asymmetrically (so every map has the size above); LRN with TF's defaults (depth radius 5, bias 1,
alpha 1, beta 0.5), i.e. ``x / sqrt(1 + sum of x^2 over 11 neighbouring channels)``; Xavier-uniform
weights with conv biases at 0.1; no batch norm; input in [0, 1] without mean/std normalisation.

Departures, each for a reason:

- **Dropout only in training.** The re-implementation called dropout with ``training=True`` at
  test time too, so its predictions were random; here ``model.eval()`` turns it off.
- **A leaky ReLU after FC 256.** The re-implementation had no activation there, so the two FC
  layers composed to one affine map; "6 learned layers" implies a non-linearity between them.
- **Input of any size, resized to 224 inside the model** (bilinear, antialiased when shrinking).
  Here it sees the bicubic-upsampled LR image at the HR size (128 px in the demo), upsampled
  again to 224; the paper fed 224 px optic-disc crops of full-resolution photographs.
- **Grades, not glaucoma:** ``num_classes`` logits (5 DR grades) instead of 2; optional lesion
  channels (``num_lesions``, 0 in the baseline) widen the first convolution like the DeepMT-DR
  grader's stem.
- **Trained by the shared engine** (Adam at the ``cls`` stage learning rate, class-weighted CE,
  no augmentation beyond what the dataset renders) like every compared method, instead of Adam
  at 1e-6 with L2 5e-6 over many epochs, which would not move in a CPU-sized budget.

The module is a leaf (torch only); ``models/registry.py`` registers it as ``chen_net``.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

INPUT_SIZE = 224
LEAK = 0.1
# TF tf.nn.local_response_normalization defaults; torch divides alpha by the window size.
LRN_RADIUS, LRN_BIAS, LRN_ALPHA, LRN_BETA = 5, 1.0, 1.0, 0.5


def tf_same_pad(x: torch.Tensor, kernel: int, stride: int, value: float = 0.0) -> torch.Tensor:
    """Pad ``[N,C,H,W]`` as TensorFlow's ``SAME`` does: output ``ceil(size / stride)``, extra pixel at the end."""
    pads = []
    for size in (x.shape[-1], x.shape[-2]):  # F.pad wants (left, right, top, bottom)
        total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads, value=value)


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow ``SAME`` padding."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(tf_same_pad(x, self.kernel_size[0], self.stride[0]))


class SameMaxPool2d(nn.Module):
    """3x3 / 2 max-pool with TensorFlow ``SAME`` padding (padded cells never win)."""

    def __init__(self, kernel: int = 3, stride: int = 2) -> None:
        super().__init__()
        self.kernel, self.stride = kernel, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(
            tf_same_pad(x, self.kernel, self.stride, -math.inf), self.kernel, self.stride
        )


def _block(
    in_channels: int, out_channels: int, kernel: int, stride: int, lrn: bool
) -> nn.Sequential:
    layers: list[nn.Module] = [
        SameConv2d(in_channels, out_channels, kernel, stride),
        nn.LeakyReLU(LEAK),
    ]
    if lrn:
        size = 2 * LRN_RADIUS + 1
        layers.append(nn.LocalResponseNorm(size, alpha=LRN_ALPHA * size, beta=LRN_BETA, k=LRN_BIAS))
    layers.append(SameMaxPool2d())
    return nn.Sequential(*layers)


class ChenNet(nn.Module):
    """Chen et al. 2015 CNN on ``cat(image, lesion maps)`` ``[N,3+L,H,W]`` in [0,1] -> logits ``[N,C]``.

    Same interface as the DeepMT-DR grader (``num_lesions``, ``stages()``, ``forward_features``),
    so it drops into the engine and Grad-CAM unchanged.
    """

    def __init__(
        self,
        num_classes: int = 5,
        num_lesions: int = 0,
        hidden: int = 256,
        dropout: float = 0.5,
        pretrained_path: str | Path | None = None,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        if pretrained_path is not None:
            raise ValueError(
                "Chen et al.'s net has no published ImageNet weights; leave model.imagenet_weights unset"
            )
        self.num_lesions = num_lesions
        self.block1 = _block(3 + num_lesions, 96, 11, 4, lrn=True)
        self.block2 = _block(96, 192, 5, 1, lrn=True)
        self.block3 = _block(192, 192, 3, 1, lrn=False)
        self.block4 = _block(192, 192, 3, 1, lrn=False)
        flat = 192 * 4 * 4
        self.head = nn.Sequential(
            nn.Linear(flat, hidden),
            nn.LeakyReLU(LEAK),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(module.weight)
                nn.init.constant_(module.bias, 0.1 if isinstance(module, nn.Conv2d) else 0.0)

    def stages(self) -> list[nn.Module]:
        """The four conv blocks whose outputs feed Grad-CAM."""
        return [self.block1, self.block2, self.block3, self.block4]

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """x ``[N,3+L,H,W]`` in [0,1] -> (logits ``[N,C]``, the four block outputs at 224 input)."""
        if x.shape[1] != 3 + self.num_lesions:
            raise ValueError(
                f"Chen net expects {3 + self.num_lesions} input channels, got {x.shape[1]}"
            )
        if x.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
            shrink = min(x.shape[-2:]) > INPUT_SIZE
            x = F.interpolate(
                x,
                size=(INPUT_SIZE, INPUT_SIZE),
                mode="bilinear",
                align_corners=False,
                antialias=shrink,
            )
        features = []
        for stage in self.stages():
            x = stage(x)
            features.append(x)
        return self.head(x.flatten(1)), features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)[0]


if __name__ == "__main__":
    net = ChenNet().eval()
    logits, maps = net.forward_features(torch.rand(1, 3, 128, 128))
    print(net)
    print("block outputs:", [tuple(m.shape[1:]) for m in maps], "logits:", tuple(logits.shape))
    print(f"parameters: {sum(p.numel() for p in net.parameters()):,}")
