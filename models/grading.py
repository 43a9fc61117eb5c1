"""DR grading nets: ``cat(image, lesion probabilities)`` ``[N,3+L,H,W]`` -> grade logits ``[N,C]``.

DeepMT-DR's grader (:class:`GradingNet`) is torchvision's ResNet-18 with its 7x7 stem widened to the image plus lesion channels, spatial
pyramid pooling (levels 4, 2, 1, i.e. 21 bins of 512 features) and a two-layer head. Departures
from the published KeNet_v1 (docs/DIFFERENCES.md lists them): a ReLU between the two Linear layers, ImageNet
normalisation of the image channels, one head used for training and test alike, and SPP by
adaptive max pooling so it also works on feature maps smaller than 4x4.
"""

from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn
from torch.nn import functional as F
from torchvision import models as tv_models

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SPP_LEVELS = (4, 2, 1)
STAGES = ("layer1", "layer2", "layer3", "layer4")


def spatial_pyramid_pool(
    features: torch.Tensor, levels: tuple[int, ...] = SPP_LEVELS
) -> torch.Tensor:
    """``[N,C,h,w]`` -> ``[N, C * sum(n*n)]``: max over an n x n grid per level, any h, w >= 1."""
    return torch.cat([F.adaptive_max_pool2d(features, n).flatten(1) for n in levels], dim=1)


# The hidden layer's activation. "relu" is the paper's; "leaky_relu" (slope 0.01) keeps a
# gradient on units the first large steps push negative for every image: on IDRiD at 512 px
# with ReLU, 255 of the 256 hidden units of the SPP head were dead after the cls stage
# (docs/RESULTS.md), leaving a one-number grader. No parameters: checkpoints load either way.
HEAD_ACTIVATIONS = {
    "relu": lambda: nn.ReLU(inplace=True),
    "leaky_relu": lambda: nn.LeakyReLU(0.01, inplace=True),
}


def scaled_resnet(arch: str, width: float) -> tv_models.ResNet:
    """torchvision's ``arch`` with every stage's channels scaled by ``width`` (1: the network as
    published). Convolution FLOPs fall with ``width`` squared, which is how the CPU demo affords a
    ResNet grader; blocks, strides and initialisation stay torchvision's."""
    backbone = getattr(tv_models, arch)(weights=None)
    if width == 1.0:
        return backbone
    block = type(backbone.layer1[0])
    depths = [len(getattr(backbone, name)) for name in STAGES]
    channels = [max(8, round(64 * width * 2**i)) for i in range(len(STAGES))]
    backbone.inplanes = channels[0]  # what torchvision's _make_layer builds the next stage from
    backbone.conv1 = nn.Conv2d(3, channels[0], 7, 2, 3, bias=False)
    backbone.bn1 = nn.BatchNorm2d(channels[0])
    for i, name in enumerate(STAGES):
        setattr(
            backbone,
            name,
            backbone._make_layer(block, channels[i], depths[i], stride=1 if i == 0 else 2),
        )
    backbone.fc = nn.Linear(channels[-1] * block.expansion, backbone.fc.out_features)
    for module in backbone.modules():  # torchvision's own initialisation of a ResNet
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    return backbone


class ResNetGrader(nn.Module):
    """A torchvision ResNet on ``cat(image, lesion maps)`` ``[N,3+L,H,W]`` in [0,1] -> grade logits.

    The stem is widened for the lesion channels, which start at zero (so an ImageNet-initialised
    grader starts out as the ImageNet network), the image channels are ImageNet-normalised, and
    the head is ``pool`` (``"spp"``: spatial pyramid pooling, ``"gap"``: global average) ->
    Linear(``hidden``) -> ReLU (``head_activation``) -> dropout -> Linear(classes). ImageNet weights (``pretrained_path``)
    come from a local file, from torchvision's own weights (``"imagenet"``, :func:`imagenet_state`)
    or not at all.
    """

    def __init__(
        self,
        num_classes: int = 5,
        num_lesions: int = 0,
        hidden: int = 512,
        dropout: float = 0.5,
        pretrained_path: str | Path | None = None,
        arch: str = "resnet50",
        pool: str = "gap",
        head_activation: str = "relu",
        width: float = 1.0,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        if width <= 0 or (width != 1.0 and pretrained_path is not None):
            raise ValueError(
                f"grader width must be positive, and 1 with ImageNet weights; got {width}"
            )
        if pool not in ("spp", "gap"):
            raise ValueError(f"grader pooling must be spp or gap, got {pool!r}")
        if head_activation not in HEAD_ACTIVATIONS:
            raise ValueError(
                f"grader head activation must be one of {', '.join(HEAD_ACTIVATIONS)}, got {head_activation!r}"
            )
        backbone = scaled_resnet(arch, width)
        if pretrained_path is not None:
            state = load_torchvision_state(pretrained_path, arch)
            check_backbone_state(state, backbone, pretrained_path, arch)
            backbone.load_state_dict(state)
        self.arch, self.pool, self.num_lesions = arch, pool, num_lesions
        old = backbone.conv1
        self.stem = nn.Conv2d(
            3 + num_lesions, old.out_channels, old.kernel_size, old.stride, old.padding, bias=False
        )
        with torch.no_grad():
            self.stem.weight.zero_()
            self.stem.weight[:, :3] = old.weight
        self.bn1, self.relu, self.maxpool = backbone.bn1, backbone.relu, backbone.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = (
            backbone.layer1,
            backbone.layer2,
            backbone.layer3,
            backbone.layer4,
        )
        features = backbone.fc.in_features * (
            sum(n * n for n in SPP_LEVELS) if pool == "spp" else 1
        )
        self.head = nn.Sequential(
            nn.Linear(features, hidden),
            HEAD_ACTIVATIONS[head_activation](),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def stages(self) -> list[nn.Module]:
        """The four residual stages whose outputs feed Grad-CAM."""
        return [self.layer1, self.layer2, self.layer3, self.layer4]

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """x ``[N,3+L,H,W]`` (image in [0,1], lesion maps in [0,1]) -> (logits ``[N,C]``, stage outputs)."""
        if x.shape[1] != 3 + self.num_lesions:
            raise ValueError(
                f"{self.arch} grader expects {3 + self.num_lesions} input channels, got {x.shape[1]}"
            )
        x = torch.cat([(x[:, :3] - self.mean) / self.std, x[:, 3:]], dim=1)
        x = self.maxpool(self.relu(self.bn1(self.stem(x))))
        features = []
        for stage in self.stages():
            x = stage(x)
            features.append(x)
        pooled = spatial_pyramid_pool(x) if self.pool == "spp" else x.mean(dim=(2, 3))
        return self.head(pooled), features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)[0]


class GradingNet(ResNetGrader):
    """DeepMT-DR's grader: ResNet-18 with spatial pyramid pooling, on the image plus ``num_lesions`` maps."""

    def __init__(
        self,
        num_classes: int = 5,
        num_lesions: int = 4,
        hidden: int = 512,
        dropout: float = 0.5,
        pretrained_path: str | Path | None = None,
        head_activation: str = "relu",
        width: float = 1.0,
    ) -> None:
        super().__init__(
            num_classes,
            num_lesions,
            hidden,
            dropout,
            pretrained_path,
            arch="resnet18",
            pool="spp",
            head_activation=head_activation,
            width=width,
        )


# torchvision (torch.hub) names weight files NAME-<first hex digits of their SHA-256>.pth.
HASH_PREFIX = re.compile(r"-([0-9a-f]{8,64})\.pth?$")
# model.imagenet_weights=imagenet: torchvision's weights of each grader backbone, through its weights API.
IMAGENET = "imagenet"
IMAGENET_WEIGHTS = {
    "resnet18": tv_models.ResNet18_Weights.IMAGENET1K_V1,
    "resnet50": tv_models.ResNet50_Weights.IMAGENET1K_V1,
}


class ImageNetWeightsError(ValueError):
    """ImageNet weights that cannot be had or do not check out; the message names model.imagenet_weights."""


def check_hash_prefix(path: Path) -> bool:
    """A file named the torch.hub way must hash to its name's prefix: a corrupt download fails here.

    Returns whether the name carried a prefix (so the file was checked); a mismatch raises.
    """
    match = HASH_PREFIX.search(path.name)
    if match is None:
        return False
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    if not digest.hexdigest().startswith(match[1]):
        raise ImageNetWeightsError(
            f"model.imagenet_weights: {path} is corrupt: its SHA-256 {digest.hexdigest()[: len(match[1])]}... does not start "
            f"with {match[1]}, as its name says (download it again)"
        )
    return True


def hub_file(arch: str) -> Path:
    """Where torch.hub keeps torchvision's ``arch`` ImageNet weights: ``torch.hub.get_dir()/checkpoints/<file>``."""
    return (
        Path(torch.hub.get_dir())
        / "checkpoints"
        / Path(urlparse(IMAGENET_WEIGHTS[arch].url).path).name
    )


def imagenet_state(arch: str) -> dict[str, torch.Tensor]:
    """torchvision's IMAGENET1K_V1 state dict of ``arch``, through its weights API: the file in torch's
    hub cache (hash-checked), else downloaded there (torch.hub checks the hash of a download).

    No network and no cached file: :class:`ImageNetWeightsError` saying which file to put where.
    """
    if arch not in IMAGENET_WEIGHTS:
        raise ImageNetWeightsError(
            f"model.imagenet_weights={IMAGENET}: torchvision has no ImageNet weights wired here for {arch}"
        )
    weights, cached = IMAGENET_WEIGHTS[arch], hub_file(arch)
    if cached.is_file():
        check_hash_prefix(cached)  # torch.hub checks a download, not a file already in its cache
    else:
        log.info("downloading torchvision's %s ImageNet weights to %s", arch, cached)
    try:
        state = weights.get_state_dict(
            progress=False, check_hash=True, map_location="cpu", weights_only=True
        )
    except (
        OSError,
        RuntimeError,
    ) as error:  # offline: URLError (an OSError); a bad download: RuntimeError
        reason = " ".join(f"{type(error).__name__}: {error}".split())
        raise ImageNetWeightsError(
            f"model.imagenet_weights={IMAGENET}: torchvision's {arch} ImageNet weights are not in torch's hub cache and "
            f"could not be downloaded ({reason}); download {weights.url} on a machine with internet and put "
            f"{cached.name} in {cached.parent}, or pass model.imagenet_weights=PATH"
        ) from None
    log.info(
        "ImageNet weights: torchvision's %s IMAGENET1K_V1 from %s (hash-checked)", arch, cached
    )
    return state


def load_torchvision_state(path: str | Path, arch: str) -> dict[str, torch.Tensor]:
    """A torchvision ``arch`` ImageNet state dict from a local file, or torchvision's own (``"imagenet"``)."""
    if str(path) == IMAGENET:
        return imagenet_state(arch)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"ImageNet weights not found at {path}: download torchvision's {arch} weights (e.g. "
            "resnet18-f37072fd.pth) on a machine with internet and pass the local path (model.imagenet_weights=PATH), "
            f"or use model.imagenet_weights={IMAGENET} (torch's hub cache)"
        )
    hashed = check_hash_prefix(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict) or "conv1.weight" not in state:
        raise ImageNetWeightsError(
            f"model.imagenet_weights: {path} is not a torchvision {arch} state dict (no 'conv1.weight')"
        )
    official = (
        arch in IMAGENET_WEIGHTS
        and path.name == Path(urlparse(IMAGENET_WEIGHTS[arch].url).path).name
    )
    if not hashed:
        how = "not hash-checked (no torch.hub hash prefix in its name); only its keys and shapes are checked"
    else:
        how = "hash-checked" + (
            "" if official else f" against its name (not torchvision's IMAGENET1K_V1 {arch} file)"
        )
    log.info("ImageNet weights: %s, %s", path, how)
    return state


def check_backbone_state(
    state: dict[str, torch.Tensor], backbone: nn.Module, source: str | Path, arch: str
) -> None:
    """The weights must be a torchvision ``arch``'s: every key, no other, each of the same shape."""
    own = backbone.state_dict()
    # BatchNorm fills in a missing num_batches_tracked (older torchvision files lack it).
    missing = sorted(
        key for key in set(own) - set(state) if not key.endswith("num_batches_tracked")
    )
    unexpected = sorted(set(state) - set(own))
    mis_shaped = [
        f"{key} {tuple(state[key].shape)} vs {tuple(own[key].shape)}"
        for key in sorted(set(own) & set(state))
        if tuple(state[key].shape) != tuple(own[key].shape)
    ]
    problems = [
        f"{label}: {', '.join(items[:3])}{f' (+{len(items) - 3} more)' if len(items) > 3 else ''}"
        for label, items in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("shape mismatch", mis_shaped),
        )
        if items
    ]
    if problems:
        raise ImageNetWeightsError(
            f"model.imagenet_weights: {source} is not a torchvision {arch} state dict; {'; '.join(problems)}"
        )
