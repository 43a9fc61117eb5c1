"""Shapes, value ranges and contracts of the three nets and their composite."""

import pytest
import torch

from models import DeepMTDR, GradingNet, ISRNet, LesionSegNet, create_model, list_models
from models.grading import spatial_pyramid_pool


@pytest.mark.parametrize("scale", [2, 4, 8])
def test_isr_output_size_and_range(scale):
    lr = torch.rand(2, 3, 8, 12)
    sr = ISRNet(scale=scale, channels=8, num_blocks=1)(lr)
    assert sr.shape == (2, 3, 8 * scale, 12 * scale)
    assert sr.min() >= 0 and sr.max() <= 1


@pytest.mark.parametrize("skip", [True, False])
def test_isr_without_bicubic_skip_also_in_range(skip):
    net = ISRNet(scale=4, channels=8, num_blocks=1, bicubic_skip=skip)
    torch.nn.init.normal_(net.tail.weight, std=1.0)  # force large residuals
    sr = net(torch.rand(1, 3, 8, 8))
    assert sr.min() >= 0 and sr.max() <= 1


def test_isr_starts_as_bicubic():
    lr = torch.rand(1, 3, 8, 8)
    expected = torch.nn.functional.interpolate(
        lr, scale_factor=4, mode="bicubic", align_corners=False
    ).clamp(0, 1)
    torch.testing.assert_close(ISRNet(scale=4, channels=8, num_blocks=1)(lr), expected)


@pytest.mark.parametrize("scale", [3, 0, 16])
def test_isr_rejects_unsupported_scale(scale):
    with pytest.raises(ValueError, match="scale"):
        ISRNet(scale=scale)


def test_seg_full_resolution_and_full_res_head_matters():
    net = LesionSegNet(width=0.5).eval()
    x = torch.rand(2, 3, 64, 48)
    logits = net(x)
    assert logits.shape == (2, 4, 64, 48)
    # The full-resolution head contributes: zeroing it changes the output (upstream dropped it).
    torch.nn.init.zeros_(net.heads[0].weight)
    torch.nn.init.zeros_(net.heads[0].bias)
    assert not torch.allclose(net(x), logits)


def test_seg_width_multiplier_scales_channels():
    narrow, wide = LesionSegNet(width=0.5), LesionSegNet(width=1.0)
    assert wide.encoders[0][0].conv3.out_channels == 2 * narrow.encoders[0][0].conv3.out_channels
    assert LesionSegNet(width=4.0).encoders[4][3].out_channels == 1024  # the paper's bottleneck


def test_seg_rejects_size_not_divisible_by_16():
    with pytest.raises(ValueError, match="divisible by 16"):
        LesionSegNet(width=0.25)(torch.rand(1, 3, 40, 40))


@pytest.mark.parametrize("size", [8, 16, 32, 64])
def test_spp_works_on_small_maps(size):
    features = torch.rand(2, 512, size // 8 or 1, size // 8 or 1)
    assert spatial_pyramid_pool(features).shape == (2, 512 * 21)


@pytest.mark.parametrize("size", [16, 64])
def test_grader_logits_and_stages(size):
    net = GradingNet(num_classes=5, num_lesions=4).eval()
    logits, features = net.forward_features(torch.rand(2, 7, size, size))
    assert logits.shape == (2, 5)
    assert [f.shape[1] for f in features] == [64, 128, 256, 512]
    assert features[0].shape[-1] == size // 4


def test_grader_rejects_wrong_channel_count():
    with pytest.raises(ValueError, match="7 input channels"):
        GradingNet(num_lesions=4)(torch.rand(1, 3, 32, 32))


def test_grader_imagenet_weights_from_local_file(tmp_path):
    from torchvision.models import resnet18

    reference = resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    net = GradingNet(pretrained_path=path)
    torch.testing.assert_close(net.layer3[0].conv1.weight, reference.layer3[0].conv1.weight)
    torch.testing.assert_close(net.stem.weight[:, :3], reference.conv1.weight)
    assert net.stem.weight[:, 3:].abs().sum() == 0


def test_grader_imagenet_weights_missing_file_is_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="resnet18"):
        GradingNet(pretrained_path=tmp_path / "absent.pth")


@pytest.mark.parametrize("scale", [2, 4, 8])
def test_deepmt_dr_outputs(scale):
    model = create_model(
        "deepmt_dr", scale=scale, isr_channels=8, isr_blocks=1, seg_width=0.25
    ).eval()
    lr = torch.rand(2, 3, 64 // scale, 64 // scale)
    out = model(lr)
    assert out.sr.shape == (2, 3, 64, 64) and 0 <= out.sr.min() and out.sr.max() <= 1
    assert out.lesion_logits.shape == (2, 4, 64, 64)
    assert out.grade_logits.shape == (2, 5)


def test_deepmt_dr_without_segmentation_grades_image_alone():
    model = create_model("deepmt_dr", isr_channels=8, isr_blocks=1, use_lesions=False).eval()
    out = model(torch.rand(1, 3, 16, 16))
    assert out.lesion_logits.shape == (1, 0, 64, 64)
    assert model.grader.stem.in_channels == 3


def test_deepmt_dr_rejects_mismatched_subnets():
    with pytest.raises(ValueError, match="lesion channels"):
        DeepMTDR(ISRNet(), None, GradingNet(num_lesions=4))


def test_registry():
    assert "deepmt_dr" in list_models()
    with pytest.raises(KeyError, match="unknown model"):
        create_model("nope")


def test_seg_prior_starts_every_lesion_map_at_that_probability():
    from engine.builders import build_model
    from engine.config import load_config

    model = build_model(load_config(None, ["model.seg_width=0.25", "model.seg_prior=0.01"]))
    default = build_model(load_config(None, ["model.seg_width=0.25"]))
    image = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        probs = torch.sigmoid(model.seg.eval()(image))
        assert float(probs.mean()) == pytest.approx(0.01, rel=0.5)
        assert float(torch.sigmoid(default.seg.eval()(image)).mean()) > 0.1
