"""Model registry: ``create_model(name, **kwargs)`` (timm's pattern), so baselines and ablations are entries."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from chen_net import ChenNet
from models.baselines import BicubicUpsampler
from models.deepmt_dr import CAM_STAGES, DeepMTDR
from models.grading import GradingNet, ResNetGrader
from models.isr import ISRNet
from models.lesion_seg import LesionSegNet

# Grading nets the composite can use (``model.grader``); each takes
# (num_classes, num_lesions, hidden, dropout, pretrained_path) and has stages() + forward_features().
GRADERS = ("resnet18_spp", "chen_net", "resnet50")
# What stands in the ISR net's place (``model.isr``): the ISR net, or a fixed bicubic upsampler.
ISR_KINDS = ("net", "bicubic")

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator adding a model factory under ``name``."""

    def add(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = factory
        return factory

    return add


def create_model(name: str, **kwargs) -> nn.Module:
    """Build the registered model ``name`` with its keyword arguments."""
    if name not in _REGISTRY:
        raise KeyError(f"unknown model {name!r}; registered: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name](**kwargs)


def list_models() -> list[str]:
    return sorted(_REGISTRY)


@register_model("resnet18_spp")
def resnet18_spp(
    num_classes: int = 5,
    num_lesions: int = 4,
    hidden: int = 512,
    dropout: float = 0.5,
    pretrained_path=None,
    head_activation: str = "relu",
    width: float = 1.0,
) -> nn.Module:
    """DeepMT-DR's grader (the published KeNet_v1): ResNet-18 + spatial pyramid pooling."""
    return GradingNet(
        num_classes=num_classes,
        num_lesions=num_lesions,
        hidden=hidden,
        dropout=dropout,
        pretrained_path=pretrained_path,
        head_activation=head_activation,
        width=width,
    )


@register_model("chen_net")
def chen_net(
    num_classes: int = 5,
    num_lesions: int = 0,
    hidden: int = 256,
    dropout: float = 0.5,
    pretrained_path=None,
) -> nn.Module:
    """Chen et al. (EMBC 2015) 4 conv + 2 FC CNN, top-level ``chen_net.py``."""
    return ChenNet(
        num_classes=num_classes,
        num_lesions=num_lesions,
        hidden=hidden,
        dropout=dropout,
        pretrained_path=pretrained_path,
    )


@register_model("resnet50")
def resnet50(
    num_classes: int = 5,
    num_lesions: int = 0,
    hidden: int = 512,
    dropout: float = 0.5,
    pretrained_path=None,
    head_activation: str = "relu",
    width: float = 1.0,
) -> nn.Module:
    """torchvision ResNet-50 with global average pooling and a two-layer head."""
    return ResNetGrader(
        num_classes,
        num_lesions,
        hidden,
        dropout,
        pretrained_path,
        arch="resnet50",
        head_activation=head_activation,
        width=width,
    )


@register_model("deepmt_dr")
def deepmt_dr(
    scale: int = 4,
    num_classes: int = 5,
    isr: str = "net",
    isr_channels: int = 32,
    isr_blocks: int = 5,
    isr_bicubic_skip: bool = True,
    seg_width: float = 4.0,
    use_lesions: bool = True,
    grader: str = "resnet18_spp",
    grader_hidden: int = 512,
    grader_dropout: float = 0.5,
    grader_head_activation: str = "relu",
    grader_width: float = 1.0,
    imagenet_weights: str | None = None,
    cam_stages: str = "all",
    grade_decoding: str = "argmax",
    grader_input_size: int = 0,
) -> nn.Module:
    """DeepMT-DR; the defaults are the paper's (x4, 32-channel ISR, U-Net ratio 4, ResNet-18).

    ``isr="bicubic"`` replaces the ISR net by a fixed bicubic upsampler, ``use_lesions=False``
    drops the segmentation net, ``grader`` picks one of :data:`GRADERS`: the compared methods
    and ablations are these switches.
    """
    if isr not in ISR_KINDS:
        raise ValueError(f"isr must be one of {ISR_KINDS}, got {isr!r}")
    if grader not in GRADERS:
        raise ValueError(f"grader must be one of {GRADERS}, got {grader!r}")
    if cam_stages not in CAM_STAGES:
        raise ValueError(f"cam_stages must be one of {CAM_STAGES}, got {cam_stages!r}")
    seg = LesionSegNet(width=seg_width) if use_lesions else None
    grading_net = create_model(
        grader,
        num_classes=num_classes,
        num_lesions=seg.num_lesions if seg is not None else 0,
        hidden=grader_hidden,
        dropout=grader_dropout,
        pretrained_path=imagenet_weights,
        **({"head_activation": grader_head_activation} if grader_head_activation != "relu" else {}),
        **({"width": grader_width} if grader_width != 1.0 else {}),
    )
    isr_net = (
        ISRNet(scale, isr_channels, isr_blocks, isr_bicubic_skip)
        if isr == "net"
        else BicubicUpsampler(scale)
    )
    return DeepMTDR(
        isr_net,
        seg,
        grading_net,
        cam_stages=cam_stages,
        num_classes=num_classes,
        grade_decoding=grade_decoding,
        grader_size=grader_input_size,
    )
