"""Model registry: ``create_model(name, **kwargs)`` (timm's pattern), so baselines and ablations are entries."""
from __future__ import annotations

from typing import Callable

from torch import nn

from models.deepmt_dr import DeepMTDR
from models.grading import GradingNet
from models.isr import ISRNet
from models.lesion_seg import LesionSegNet

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


@register_model("deepmt_dr")
def deepmt_dr(
    scale: int = 4,
    num_classes: int = 5,
    isr_channels: int = 32,
    isr_blocks: int = 5,
    isr_bicubic_skip: bool = True,
    seg_width: float = 4.0,
    use_lesions: bool = True,
    grader_hidden: int = 512,
    grader_dropout: float = 0.5,
    imagenet_weights: str | None = None,
) -> nn.Module:
    """DeepMT-DR; the defaults are the paper's (x4, 32-channel ISR, U-Net ratio 4, ResNet-18)."""
    seg = LesionSegNet(width=seg_width) if use_lesions else None
    grader = GradingNet(
        num_classes=num_classes,
        num_lesions=seg.num_lesions if seg is not None else 0,
        hidden=grader_hidden,
        dropout=grader_dropout,
        pretrained_path=imagenet_weights,
    )
    return DeepMTDR(ISRNet(scale, isr_channels, isr_blocks, isr_bicubic_skip), seg, grader)
