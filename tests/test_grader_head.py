"""model.grader_head_activation: the grader head's hidden activation (models/grading.py)."""

import pytest
import torch

from engine.config import ConfigError, load_config
from models.grading import GradingNet


def _grader(activation: str) -> GradingNet:
    torch.manual_seed(0)
    return GradingNet(
        num_classes=5, num_lesions=4, hidden=8, dropout=0.0, head_activation=activation
    ).eval()


def test_leaky_head_loads_relu_weights_and_keeps_gradients_of_negative_units():
    relu, leaky = _grader("relu"), _grader("leaky_relu")
    leaky.load_state_dict(
        relu.state_dict()
    )  # no parameters in the activation: same keys, same shapes
    first = relu.head[0]
    with torch.no_grad():  # every hidden unit negative for every input: a dead ReLU layer
        first.weight.zero_()
        first.bias.fill_(-1.0)
    leaky.load_state_dict(relu.state_dict())
    image = torch.rand(2, 7, 64, 64)
    for net, expect_gradient in ((relu, False), (leaky, True)):
        net.zero_grad()
        net(image).sum().backward()
        assert bool(net.head[0].bias.grad.abs().sum() > 0) is expect_gradient
    assert torch.allclose(relu(image)[0], relu(image)[1])  # dead: the same logits for any image


def test_head_activation_is_validated_by_name():
    config = load_config("configs/demo.yaml", ["model.grader_head_activation=leaky_relu"])
    assert config.model.grader_head_activation == "leaky_relu"
    with pytest.raises(ConfigError, match="model.grader_head_activation"):
        load_config("configs/demo.yaml", ["model.grader_head_activation=tanh"])
    with pytest.raises(ConfigError, match="chen_net"):
        load_config(
            "configs/demo.yaml",
            ["model.grader=chen_net", "model.grader_head_activation=leaky_relu"],
        )
