"""Grad-CAM: the figure API against pytorch-grad-cam, the batched training path against a per-sample reference."""

import pytest
import torch
from torchvision.models import resnet18

from models import GradingNet, create_model
from models.cam import CAMFusion, gradcam, minmax_normalise, stage_cams, target_weights
from models.losses import task_aware_loss


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return resnet18(weights=None).eval()


def _reference_cam(model, layer, image, cls):
    """Textbook Grad-CAM for one image with hooks and backward (no batching)."""
    store = {}
    handle = layer.register_forward_hook(lambda m, i, o: store.update(a=o))
    try:
        logits = model(image.unsqueeze(0))
        store["a"].retain_grad()
        logits[0, cls].backward()
    finally:
        handle.remove()
    activation, gradient = store["a"][0].detach(), store["a"].grad[0]
    cam = torch.relu((gradient.mean(dim=(1, 2))[:, None, None] * activation).sum(0))
    cam = torch.nn.functional.interpolate(
        cam[None, None], size=image.shape[-2:], mode="bilinear", align_corners=False
    )[0, 0]
    return (cam - cam.min()) / (cam.max() - cam.min() + 1e-7)


@pytest.mark.parametrize("layer_name", ["layer3", "layer4"])
def test_gradcam_matches_pytorch_grad_cam(resnet, layer_name):
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    x = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    targets = [1, 7, 3]
    layer = getattr(resnet, layer_name)
    ours = gradcam(resnet, layer, x, target=targets)
    with GradCAM(model=resnet, target_layers=[layer[-1]]) as reference:
        expected = reference(input_tensor=x, targets=[ClassifierOutputTarget(c) for c in targets])
    assert ours.shape == (3, 1, 64, 64)
    assert (ours[:, 0] - torch.from_numpy(expected)).abs().max() <= 1e-4


def test_gradcam_batched_equals_per_sample_reference(resnet):
    x = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    ours = gradcam(resnet, resnet.layer4, x)  # predicted class per sample
    predicted = resnet(x).argmax(1)
    for i in range(4):
        expected = _reference_cam(resnet, resnet.layer4, x[i], int(predicted[i]))
        assert (ours[i, 0] - expected).abs().max() <= 1e-4


def test_gradcam_size_and_all_negative_map_gives_zeros(resnet):
    x = torch.rand(1, 3, 64, 64)
    assert gradcam(resnet, resnet.layer4, x, size=(20, 30)).shape == (1, 1, 20, 30)
    # A constant map (all channels weighted to <= 0) must come out as zeros, not NaN.
    assert torch.equal(minmax_normalise(torch.zeros(2, 1, 4, 4)), torch.zeros(2, 1, 4, 4))


def test_target_weights():
    logits = torch.tensor([[3.0, 1, 0, 0, 0], [0, 0, 0, 5, 1]])
    torch.testing.assert_close(
        target_weights(logits, "predicted"), torch.tensor([[1.0, 0, 0, 0, 0], [0, 0, 0, 1, 0]])
    )
    torch.testing.assert_close(
        target_weights(logits, "any_dr"), torch.tensor([[1.0, 0, 0, 0, 0], [0, 1, 1, 1, 1]])
    )
    with pytest.raises(ValueError, match="CAM target"):
        target_weights(logits, "bogus")


@pytest.mark.parametrize("mode", ["predicted", "any_dr"])
def test_stage_cams_batched_equal_per_sample(mode):
    torch.manual_seed(0)
    grader = GradingNet(num_lesions=4).eval()
    x = torch.rand(3, 7, 64, 64)
    logits, features = grader.forward_features(x)
    batched = stage_cams(logits, features, target_weights(logits, mode))
    for i in range(3):
        logits_i, features_i = grader.forward_features(x[i : i + 1])
        single = stage_cams(logits_i, features_i, target_weights(logits_i, mode))
        for b, s in zip(batched, single):
            assert (b[i] - s[0]).abs().max() <= 1e-5
    assert [c.shape[-1] for c in batched] == [16, 8, 4, 2]
    assert all(0 <= c.min() and c.max() <= 1 for c in batched)


def test_stage_cams_layer4_equals_figure_api():
    torch.manual_seed(0)
    grader = GradingNet(num_lesions=4).eval()
    x = torch.rand(2, 7, 64, 64)
    logits, features = grader.forward_features(x)
    cam4 = stage_cams(logits, features, target_weights(logits))[-1]
    upsampled = minmax_normalise(
        torch.nn.functional.interpolate(cam4, size=(64, 64), mode="bilinear", align_corners=False)
    )
    torch.testing.assert_close(upsampled, gradcam(grader, grader.layer4, x), atol=1e-4, rtol=0)


def test_cam_fusion_shape_range_and_learnable():
    fusion = CAMFusion(4)
    cams = [torch.rand(2, 1, s, s, requires_grad=True) for s in (16, 8, 4, 2)]
    fused = fusion(cams, (64, 64))
    assert fused.shape == (2, 1, 64, 64) and fused.min() >= 0 and fused.max() <= 1
    fused.square().mean().backward()
    assert all(conv.weight.grad.abs().sum() > 0 for conv in fusion.convs)
    assert all(c.grad.abs().sum() > 0 for c in cams)


def test_task_aware_loss_reaches_isr():
    """The published task-aware loss had no gradient (PIL round trip); ours must reach the ISR net."""
    torch.manual_seed(0)
    model = create_model("deepmt_dr", scale=4, isr_channels=8, isr_blocks=1, seg_width=0.25)
    model.eval()
    lr, hr = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 64, 64)
    result = model.grade_image(model.isr(lr))
    sr_attention = model.attention_map(result)
    hr_attention = model.attention_map(model.grade_image(hr), retain_graph=False)
    loss = task_aware_loss(sr_attention, hr_attention)
    isr_params = list(model.isr.parameters())
    grads = torch.autograd.grad(loss, isr_params, allow_unused=True)
    total = sum(g.abs().sum() for g in grads if g is not None)
    assert loss > 0 and total > 0
