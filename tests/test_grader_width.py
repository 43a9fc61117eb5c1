"""model.grader_width: the grader ResNet's channels scaled (models/grading.scaled_resnet)."""

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from engine.builders import build_model
from engine.config import ConfigError, load_config
from models.grading import GradingNet, scaled_resnet


def _conv_flops(net: nn.Module, size: int = 64) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        net(torch.rand(1, 7, size, size))
    return counter.get_total_flops()


def test_half_width_halves_every_stage_and_quarters_the_flops():
    torch.manual_seed(0)
    full = GradingNet(num_lesions=4, hidden=8).eval()
    half = GradingNet(num_lesions=4, hidden=8, width=0.5).eval()
    for wide, narrow in zip(full.stages(), half.stages()):
        assert narrow[-1].conv2.out_channels * 2 == wide[-1].conv2.out_channels
    assert half.stem.out_channels == 32 and half.stem.in_channels == 7
    # SPP head input follows the last stage: 256 channels x 21 bins.
    assert half.head[0].in_features == 256 * 21
    ratio = _conv_flops(half) / _conv_flops(full)
    assert 0.2 < ratio < 0.3, ratio  # width squared, plus the head and the 7-channel stem
    _, features = half.forward_features(torch.rand(2, 7, 64, 64))
    assert [f.shape[1] for f in features] == [32, 64, 128, 256]


def test_width_one_is_torchvisions_network_and_scaled_keeps_its_initialisation():
    assert [
        m.out_channels for m in scaled_resnet("resnet18", 1.0).modules() if isinstance(m, nn.Conv2d)
    ][-1] == 512
    torch.manual_seed(0)
    net = scaled_resnet("resnet18", 0.25)
    conv = net.layer2[0].conv1
    # torchvision's kaiming_normal_(fan_out): std sqrt(2 / (out * k * k)), not PyTorch's default.
    expected = (2.0 / (conv.out_channels * 9)) ** 0.5
    assert abs(conv.weight.std().item() - expected) < 0.2 * expected
    assert torch.equal(net.bn1.weight, torch.ones_like(net.bn1.weight))


def test_grader_width_reaches_the_built_model_and_is_validated():
    config = load_config("configs/demo.yaml", ["model.grader_width=0.25"])
    model = build_model(config)
    assert model.grader.stem.out_channels == 16
    with pytest.raises(ConfigError, match="model.grader_width must be positive"):
        load_config("configs/demo.yaml", ["model.grader_width=0"])
    with pytest.raises(ConfigError, match="chen_net"):
        load_config("configs/demo.yaml", ["model.grader=chen_net", "model.grader_width=0.5"])
    with pytest.raises(ConfigError, match="ImageNet"):
        load_config(
            "configs/demo.yaml", ["model.grader_width=0.5", "model.imagenet_weights=imagenet"]
        )
    with pytest.raises(ValueError, match="width"):
        GradingNet(width=0.5, pretrained_path="weights.pth")
