"""model.grader_input_size: the grader works at a fraction of the HR size, on the block-averaged
image and max-pooled lesion maps (models/deepmt_dr.py), while segmentation and the task-aware
attention stay at full resolution."""

import pytest
import torch
from torch.nn import functional as F

from engine.config import ConfigError, load_config
from models import create_model

SMALL = dict(isr_channels=8, isr_blocks=1, seg_width=0.25, grader_hidden=16, grader_dropout=0.0)


def _model(grader_input_size: int):
    torch.manual_seed(0)
    return create_model("deepmt_dr", **SMALL, grader_input_size=grader_input_size).eval()


def test_the_grader_sees_the_averaged_image_and_max_pooled_lesion_maps():
    model = _model(32)
    image = torch.rand(2, 3, 64, 64, dtype=torch.float64)
    logits = torch.randn(2, 4, 64, 64, dtype=torch.float64)
    seen = model.grader_input(image, logits)
    assert seen.shape == (2, 7, 32, 32)
    # Reference: each 2x2 block by hand, in float64.
    blocks = image.unfold(2, 2, 2).unfold(3, 2, 2)
    torch.testing.assert_close(seen[:, :3], blocks.mean(dim=(-1, -2)))
    probs = torch.sigmoid(logits).unfold(2, 2, 2).unfold(3, 2, 2)
    torch.testing.assert_close(seen[:, 3:], probs.amax(dim=(-1, -2)))


def test_a_one_pixel_lesion_reaches_the_grader_at_full_strength():
    model = _model(16)
    logits = torch.full((1, 4, 64, 64), -12.0)
    logits[0, 0, 37, 21] = 6.0  # a microaneurysm of one pixel, p = 0.9975
    seen = model.grader_input(torch.rand(1, 3, 64, 64), logits)
    assert seen[0, 3].max() == pytest.approx(torch.sigmoid(torch.tensor(6.0)).item())
    assert seen[0, 3, 37 // 4, 21 // 4] == seen[0, 3].max()
    averaged = F.avg_pool2d(torch.sigmoid(logits), 4)  # what averaging would have left of it
    assert averaged[0, 0].max() < 0.07


def test_grading_at_a_quarter_keeps_lesion_maps_and_attention_at_full_size():
    full, quarter = _model(0), _model(32)
    quarter.load_state_dict(full.state_dict())
    lr = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        out_full, out_quarter = full(lr), quarter(lr)
    assert out_quarter.lesion_logits.shape[-2:] == out_full.lesion_logits.shape[-2:] == (64, 64)
    torch.testing.assert_close(out_quarter.lesion_logits, out_full.lesion_logits)
    assert not torch.allclose(out_quarter.grade_logits, out_full.grade_logits)
    image = torch.rand(2, 3, 64, 64, requires_grad=True)
    result = quarter.grade_image(image)
    attention = quarter.attention_map(result)
    assert attention.shape == (2, 1, 64, 64)
    attention.sum().backward()
    assert image.grad is not None and image.grad.abs().sum() > 0
    # An image whose side is not a multiple of the grader's size is refused, not silently cropped.
    with pytest.raises(ValueError, match="multiple"):
        quarter.grade_image(torch.rand(1, 3, 48, 48))


def test_the_config_accepts_only_divisors_of_the_hr_size():
    assert load_config(None, ["data.hr_size=128", "model.grader_input_size=64"])
    for bad in (48, 256, -1):
        with pytest.raises(ConfigError, match="model.grader_input_size"):
            load_config(None, ["data.hr_size=128", f"model.grader_input_size={bad}"])
