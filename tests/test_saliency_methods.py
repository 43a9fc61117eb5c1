"""Saliency methods on tiny models: references, per-sample targets, completeness, degenerate inputs, overlays."""

import copy

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.stats import spearmanr
from torch import nn
from torchvision.models import resnet18

from models import create_model
from models.cam import gradcam as cam_gradcam
from models.cam import target_weights
from saliency.adapters import SaliencyError, SaliencyModel, for_deepmt_dr
from saliency.evaluate import agreement_per_image
from saliency.methods import (
    METHODS,
    Options,
    display_map,
    ig_completeness_error,
    occlusion_geometry,
    parse_methods,
    raw_saliency,
)
from saliency.overlay import overlay, saturate, write_rgb_png
from saliency.sanity import cascading_randomisation, rank_correlation

FAST = Options(
    ig_steps=16,
    ig_max_steps=16,
    smoothgrad_samples=4,
    occlusion_window=1 / 4,
    occlusion_stride=1 / 4,
)


class SmallCNN(nn.Module):
    """conv3x3 -> ReLU -> strided conv3x3 -> ReLU -> global mean -> linear: smooth enough for IG."""

    def __init__(self, num_classes: int = 5) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, padding=1, stride=2),
            nn.ReLU(),
        )
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x):
        return self.fc(self.features(x).mean(dim=(2, 3)))


class Pointwise(SmallCNN):
    """1x1 convolutions only: every pixel is treated alike, so a constant image has flat maps."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Conv2d(8, 16, 1), nn.ReLU())


class Blind(SmallCNN):
    """Logits that do not depend on the image: every gradient and every occlusion effect is zero."""

    def forward(self, x):
        return self.fc(self.features(x).mean(dim=(2, 3)) * 0)


@pytest.fixture(scope="module")
def deepmt():
    torch.manual_seed(0)
    model = create_model(
        "deepmt_dr", scale=4, isr_channels=8, isr_blocks=1, seg_width=0.25, grader_hidden=32
    )
    return for_deepmt_dr(model.eval())


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return resnet18(weights=None, num_classes=5).eval()


def _images(n=2, size=64, seed=1):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("method", list(METHODS))
def test_each_method_on_deepmt_grader(deepmt, method):
    x = _images()
    raw = raw_saliency(deepmt, x, method, torch.tensor([1, 5]), options=FAST)
    assert raw.shape == (2, 1, 64, 64) and torch.isfinite(raw).all() and not raw.requires_grad
    shown = display_map(raw)
    assert shown.min() >= 0 and shown.max() <= 1 and (shown.flatten(1).amax(1) > 0).all()


@pytest.mark.parametrize("method", list(METHODS))
def test_batch_with_per_sample_targets_equals_single_calls(deepmt, method):
    """Targets must not be mixed across the batch (MONAI's and the published code's bug)."""
    x, targets = _images(3, seed=2), torch.tensor([0, 3, 5])
    options = Options(
        **{**FAST.__dict__, "smoothgrad_noise": 0.0}
    )  # noise draws depend on the batch size
    batched = raw_saliency(deepmt, x, method, targets, options=options)
    for i in range(3):
        single = raw_saliency(deepmt, x[i : i + 1], method, targets[i : i + 1], options=options)
        torch.testing.assert_close(
            batched[i], single[0], atol=1e-5 * float(single.abs().max()) + 1e-7, rtol=1e-4
        )
    other = raw_saliency(deepmt, x, method, torch.tensor([1, 1, 1]), options=options)
    assert not torch.allclose(other[1:], batched[1:])


@pytest.mark.parametrize(
    "which, layer_name", [("resnet", "layer3"), ("resnet", "layer4"), ("deepmt", "grader.layer3")]
)
def test_gradcam_equals_pytorch_grad_cam_and_models_cam(resnet, deepmt, which, layer_name):
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    explained = SaliencyModel(resnet) if which == "resnet" else deepmt
    x, targets = _images(3, 64), [1, 4, 2]
    layer = explained.layer(layer_name)
    raw = raw_saliency(explained, x, "gradcam", torch.tensor(targets), layer_name)
    ours = display_map(raw)
    with GradCAM(model=explained, target_layers=[layer]) as reference:
        expected = reference(input_tensor=x, targets=[ClassifierOutputTarget(c) for c in targets])
    assert (ours[:, 0] - torch.from_numpy(expected)).abs().max() <= 1e-5
    # models.cam.gradcam: the same map but for its absolute eps in the min-max (see display_map)
    span = (raw.flatten(1).amax(1) - raw.flatten(1).amin(1)).view(-1, 1, 1, 1)
    torch.testing.assert_close(
        ours, cam_gradcam(explained, layer, x, targets) * (span + 1e-7) / span, atol=1e-6, rtol=0
    )


@pytest.mark.parametrize("which", ["resnet", "deepmt"])
def test_gradcam_plus_plus_matches_pytorch_grad_cam(resnet, deepmt, which):
    from pytorch_grad_cam import GradCAMPlusPlus
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    explained = SaliencyModel(resnet) if which == "resnet" else deepmt
    x, targets = _images(3, 64, seed=3), [2, 0, 4]
    ours = display_map(raw_saliency(explained, x, "gradcampp", torch.tensor(targets)))
    with GradCAMPlusPlus(
        model=explained, target_layers=[explained.layer(explained.default_layer)]
    ) as reference:
        expected = reference(input_tensor=x, targets=[ClassifierOutputTarget(c) for c in targets])
    assert (ours[:, 0] - torch.from_numpy(expected)).abs().max() <= 1e-4


class _GuidedReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clamp_min(0)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad.clamp_min(0) * (x > 0)


def test_guided_backprop_matches_a_guided_relu_reference(deepmt):
    """Captum hooks nn.ReLU modules, reused (ResNet blocks call one twice) and in place; check it."""
    reference = copy.deepcopy(deepmt)
    for module in reference.modules():
        if isinstance(module, nn.ReLU):
            module.forward = _GuidedReLU.apply
    x, targets = _images(2, seed=4), torch.tensor([2, 5])
    image = x.clone().requires_grad_(True)
    reference(image).gather(1, targets.view(-1, 1)).sum().backward()
    expected = image.grad.abs().amax(dim=1, keepdim=True)
    torch.testing.assert_close(
        raw_saliency(deepmt, x, "guided_backprop", targets), expected, atol=1e-6, rtol=1e-4
    )


def test_guided_gradcam_is_guided_backprop_times_gradcam(deepmt):
    x, targets = _images(2, seed=5), torch.tensor([1, 3])
    guided = raw_saliency(deepmt, x, "guided_backprop", targets)
    cam = raw_saliency(deepmt, x, "gradcam", targets)
    torch.testing.assert_close(
        raw_saliency(deepmt, x, "guided_gradcam", targets), guided * cam, atol=1e-7, rtol=1e-4
    )


def test_integrated_gradients_completeness():
    torch.manual_seed(0)
    explained, x, targets = (
        SaliencyModel(SmallCNN()),
        _images(4, seed=6),
        torch.tensor([0, 1, 3, 5]),
    )
    raw = raw_saliency(explained, x, "ig", targets)  # default options
    with torch.no_grad():
        difference = (explained(x) - explained(torch.zeros_like(x))).gather(1, targets.view(-1, 1))[
            :, 0
        ]
    assert (difference.abs() > 1e-3).all()
    assert ((raw.sum(dim=(1, 2, 3)) - difference).abs() <= 0.01 * difference.abs()).all()
    torch.testing.assert_close(
        ig_completeness_error(explained, x, targets, raw),
        (raw.sum(dim=(1, 2, 3)) - difference).abs() / difference.abs(),
    )


def test_integrated_gradients_refines_images_that_miss_completeness(deepmt):
    """Images over the tolerance are redone with twice the nodes; the others keep their map."""
    x, targets = _images(3, seed=0), torch.tensor([0, 2, 5])
    coarse = raw_saliency(deepmt, x, "ig", targets, options=Options(ig_steps=8, ig_max_steps=8))
    refined = raw_saliency(
        deepmt, x, "ig", targets, options=Options(ig_steps=8, ig_max_steps=32, ig_tolerance=0.05)
    )
    error_coarse = ig_completeness_error(deepmt, x, targets, coarse)
    error_refined = ig_completeness_error(deepmt, x, targets, refined)
    kept = error_coarse <= 0.05
    assert not kept.all(), "pick inputs where 8 nodes are not enough"
    torch.testing.assert_close(refined[kept], coarse[kept])
    assert (error_refined[~kept] < error_coarse[~kept]).all()


@pytest.mark.parametrize("method", list(METHODS))
def test_constant_input_gives_zero_map_not_nan(method):
    torch.manual_seed(0)
    constant, target = torch.full((2, 3, 32, 32), 0.5), torch.tensor([1, 5])
    # SmoothGrad adds pixel noise, which makes a constant image non-constant: only without noise is
    # its map of a constant image flat (with noise it is sampling noise, finite).
    flat_options = Options(**{**FAST.__dict__, "smoothgrad_noise": 0.0})
    for model, options in (
        (Pointwise(), flat_options),
        (Blind(), FAST),
    ):  # flat maps; zero gradients
        raw = raw_saliency(SaliencyModel(model), constant, method, target, options=options)
        assert torch.isfinite(raw).all()
        assert torch.equal(display_map(raw), torch.zeros_like(raw)), type(model).__name__
    raw = raw_saliency(SaliencyModel(Blind()), _images(), method, target, options=FAST)
    assert torch.equal(display_map(raw), torch.zeros_like(raw))
    noisy = display_map(
        raw_saliency(SaliencyModel(Pointwise()), constant, method, target, options=FAST)
    )
    assert torch.isfinite(noisy).all() and noisy.min() >= 0 and noisy.max() <= 1


@pytest.mark.parametrize("method", list(METHODS))
def test_constant_input_on_the_deepmt_grader_is_finite(deepmt, method):
    """With zero padding a constant image is not flat to a CNN (its border differs), but nothing is NaN;
    for the baseline methods a black image equals the baseline and gets exactly zero attribution."""
    black = torch.zeros(2, 3, 64, 64)
    raw = raw_saliency(deepmt, black, method, torch.tensor([0, 5]), options=FAST)
    shown = display_map(raw)
    assert (
        torch.isfinite(raw).all()
        and torch.isfinite(shown).all()
        and shown.min() >= 0
        and shown.max() <= 1
    )
    if method in ("ig", "occlusion"):
        assert torch.equal(shown, torch.zeros_like(shown)) and raw.abs().max() == 0


def test_display_map_conventions():
    maps = torch.stack(
        [
            torch.zeros(1, 4, 4),
            torch.full((1, 4, 4), 3.0),
            -torch.rand(1, 4, 4),
            torch.rand(1, 4, 4) - 0.5,
        ]
    )
    shown = display_map(maps)
    assert torch.equal(shown[:3], torch.zeros(3, 1, 4, 4))  # zero, flat and all-negative maps
    positive = torch.relu(maps[3])
    torch.testing.assert_close(
        shown[3], (positive - positive.min()) / (positive.max() - positive.min())
    )
    assert shown[3].max() > 0.99 and shown[3].min() == 0


def test_targets_any_dr_and_validation(deepmt):
    x = _images(4, seed=7)
    with torch.no_grad():
        scores = deepmt(x)
    logits = scores[:, :5]
    torch.testing.assert_close(scores[:, 5], logits[:, 1:].sum(1))
    assert torch.equal(deepmt.targets(scores, "predicted"), logits.argmax(1))
    any_dr = deepmt.targets(scores, "any_dr")
    torch.testing.assert_close(
        scores.gather(1, any_dr.view(-1, 1))[:, 0],
        (logits * target_weights(logits, "any_dr")).sum(1),
    )
    assert torch.equal(deepmt.targets(scores, "3"), torch.full((4,), 3))
    assert torch.equal(
        deepmt.targets(scores, torch.tensor([0, 1, 2, 4])), torch.tensor([0, 1, 2, 4])
    )
    for bad in ("7", "bogus", 5, -1):
        with pytest.raises(SaliencyError, match="any_dr|outside 0..4"):
            deepmt.targets(scores, bad)


def test_method_and_layer_names(deepmt, resnet):
    assert parse_methods("all") == list(METHODS)
    assert parse_methods("ig, gradcam++,ig") == ["ig", "gradcampp"]
    with pytest.raises(
        SaliencyError, match="unknown saliency method 'lime'; valid: gradcam, gradcampp"
    ):
        parse_methods("gradcam,lime")
    with pytest.raises(
        SaliencyError,
        match=r"unknown layer 'grader.layer5'; candidates: grader.layer1, .*grader.layer4",
    ):
        deepmt.layer("grader.layer5")
    generic = SaliencyModel(resnet)
    assert (
        generic.layer_names == ["conv1", "layer1", "layer2", "layer3", "layer4"]
        and generic.default_layer == "layer4"
    )
    assert (
        generic.randomisation_order[:2] == ["fc", "layer4"]
        and deepmt.default_layer == "grader.layer4"
    )
    assert generic.layer("layer4.1.conv2") is resnet.layer4[1].conv2


def test_occlusion_geometry_covers_any_size():
    options = Options()
    assert occlusion_geometry(128, 128, options) == ((16, 16), (8, 8))
    assert occlusion_geometry(512, 300, options) == ((64, 38), (32, 19))
    assert occlusion_geometry(4, 4, options) == ((1, 1), (1, 1))


def test_cascading_randomisation_changes_maps_and_leaves_the_model(deepmt):
    x = _images(3, seed=8)
    with torch.no_grad():
        target = deepmt.targets(deepmt(x), "predicted")
    before = {k: v.clone() for k, v in deepmt.state_dict().items()}
    result = cascading_randomisation(
        deepmt, x, target, ["gradcam", "guided_backprop"], options=FAST
    )
    assert list(result) == ["none", *deepmt.randomisation_order]
    assert result["none"] == {"gradcam": 1.0, "guided_backprop": 1.0}
    assert result["grader.stem"]["gradcam"] < 0.5 and result["grader.stem"]["guided_backprop"] < 0.9
    assert all(torch.equal(before[k], v) for k, v in deepmt.state_dict().items())


def test_rank_correlation_equals_scipy_spearman():
    a = torch.rand(3, 1, 6, 6)
    b = a + 0.3 * torch.rand(3, 1, 6, 6)
    b[2] = torch.relu(b[2] - 0.8)  # ties
    ours = rank_correlation(a, b)
    for i in range(3):
        assert ours[i] == pytest.approx(
            spearmanr(a[i].flatten(), b[i].flatten()).statistic, abs=1e-10
        )
    assert np.isnan(rank_correlation(a[:1], torch.zeros(1, 1, 6, 6)))[0]


def test_overlay_keeps_rgb_order(tmp_path):
    """A pure-red image stays red where the map is zero, also once written and read back."""
    red = torch.zeros(3, 16, 16)
    red[0] = 1
    saliency = torch.zeros(16, 16)
    saliency[:4, :4] = 1
    rgb = overlay(red, saliency)
    assert rgb.dtype == np.uint8 and rgb.shape == (16, 16, 3)
    assert (rgb[8:, 8:] == [255, 0, 0]).all()
    assert (rgb[:4, :4] != [255, 0, 0]).any(axis=-1).all()  # the heat shows where the map is 1
    decoded = np.asarray(Image.open(write_rgb_png(tmp_path / "red.png", rgb)).convert("RGB"))
    assert np.array_equal(decoded, rgb)


def test_lesion_agreement_per_image():
    region = torch.zeros(4, 1, 8, 8)
    region[:, :, 2:4, 2:4] = 1
    fov = torch.ones(4, 1, 8, 8)
    maps = torch.stack([region[0], torch.ones(1, 8, 8), 1 - region[0], torch.zeros(1, 8, 8)])
    mass, auc = agreement_per_image(maps, region, fov)
    assert mass[:3] == pytest.approx([1.0, 4 / 64, 0.0]) and np.isnan(mass[3])
    assert auc[:3] == pytest.approx([1.0, 0.5, 0.0]) and auc[3] == pytest.approx(0.5)
    fov[:, :, :, 4:] = 0  # pixels outside the FOV do not count
    mass, _ = agreement_per_image(torch.ones(4, 1, 8, 8), region, fov)
    assert mass[0] == pytest.approx(4 / 32)


def test_saturate_clips_at_the_percentile_and_keeps_zeros():
    values = torch.linspace(0, 1, 101)
    shown = saturate(values, 90)
    assert shown[0] == 0 and shown[45] == pytest.approx(0.5) and (shown[90:] == 1).all()
    sparse = torch.zeros(1000)
    sparse[0] = 0.3
    assert np.array_equal(saturate(sparse), sparse.numpy())  # 99th percentile 0: unchanged


def test_segmentation_ablated_deepmt_grader():
    """Without a segmentation net the grader sees the image alone; every method still runs."""
    torch.manual_seed(0)
    model = create_model(
        "deepmt_dr", scale=4, isr_channels=8, isr_blocks=1, use_lesions=False, grader_hidden=32
    )
    explained = for_deepmt_dr(model.eval())
    x = _images(2, seed=9)
    for method in METHODS:
        raw = raw_saliency(explained, x, method, torch.tensor([1, 5]), options=FAST)
        assert raw.shape == (2, 1, 64, 64) and torch.isfinite(raw).all()
