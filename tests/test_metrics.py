"""evaluation.metrics against reference libraries (scikit-learn, scikit-image, scipy) as oracles."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from sklearn.metrics import (
    accuracy_score,
    auc,
    average_precision_score,
    cohen_kappa_score,
    f1_score,
    roc_auc_score,
)

from engine.evaluator import _PerImageSR
from evaluation.metrics import (
    SegmentationMetrics,
    grading_metrics,
    lesion_region,
    psnr_per_image,
    roc_curves,
    ssim_per_image,
)

# ------------------------------------------------------------------------------------------------
# Grading
# ------------------------------------------------------------------------------------------------


def _grading_sample(n: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Grades 0..4 and softmax probabilities that mostly, not always, point near the truth."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 5, n)
    logits = rng.normal(0, 1.0, (n, 5))
    logits[np.arange(n), np.clip(y + rng.integers(-1, 2, n), 0, 4)] += 2.0
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return y, probs


def test_qwk_equals_sklearn_quadratic_not_unweighted():
    y, probs = _grading_sample(2000)
    pred = probs.argmax(1)
    qwk = grading_metrics(y, probs)["qwk"]
    assert qwk == pytest.approx(cohen_kappa_score(y, pred, weights="quadratic"), abs=1e-12)
    assert abs(qwk - cohen_kappa_score(y, pred)) > 0.05


def test_qwk_keeps_icdr_distances_when_grades_are_missing():
    rng = np.random.default_rng(1)
    y = rng.choice([0, 1, 4], 300)
    pred = np.where(rng.random(300) < 0.6, y, rng.choice([0, 1, 4], 300))
    probs = np.eye(5)[pred]
    qwk = grading_metrics(y, probs)["qwk"]
    expected = cohen_kappa_score(y, pred, weights="quadratic", labels=list(range(5)))
    assert qwk == pytest.approx(expected, abs=1e-12)
    assert abs(qwk - cohen_kappa_score(y, pred, weights="quadratic")) > 1e-3


def test_qwk_degenerate_single_grade_is_one():
    y = np.array([2, 2, 2])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert math.isnan(cohen_kappa_score(y, y, weights="quadratic"))
    result = grading_metrics(y, np.eye(5)[y])
    assert result["qwk"] == 1.0
    assert math.isnan(result["macro_auc"]) and math.isnan(result["referable_auc"])


def test_accuracy_and_macro_f1_match_sklearn():
    y, probs = _grading_sample()
    pred = probs.argmax(1)
    result = grading_metrics(y, probs)
    assert result["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert result["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"))


def test_macro_f1_counts_never_seen_classes_as_zero():
    y = np.array([0, 0, 1, 1])
    result = grading_metrics(y, np.eye(5)[y])
    assert result["macro_f1"] == pytest.approx(2 / 5)


def test_macro_auc_equals_sklearn_ovr_macro():
    y, probs = _grading_sample()
    result = grading_metrics(y, probs)
    assert result["macro_auc"] == pytest.approx(
        roc_auc_score(y, probs, multi_class="ovr", average="macro"), abs=1e-12
    )
    for c in range(5):
        assert result["per_class_auc"][c] == pytest.approx(roc_auc_score(y == c, probs[:, c]))


def test_per_class_auc_nan_for_absent_class():
    y, probs = _grading_sample()
    keep = y != 3
    result = grading_metrics(y[keep], probs[keep])
    assert math.isnan(result["per_class_auc"][3]) and math.isnan(result["per_class_sensitivity"][3])
    present = [roc_auc_score(y[keep] == c, probs[keep, c]) for c in (0, 1, 2, 4)]
    assert result["macro_auc"] == pytest.approx(np.mean(present))


def test_referable_auc_sensitivity_specificity():
    y, probs = _grading_sample()
    result = grading_metrics(y, probs)
    assert result["referable_auc"] == pytest.approx(roc_auc_score(y >= 2, probs[:, 2:].sum(1)))
    # hand case: truths 0,1,2,3 -> predictions 2,1,1,4: one of two referable found, one of two
    # non-referable cleared.
    small = grading_metrics(np.array([0, 1, 2, 3]), np.eye(5)[[2, 1, 1, 4]])
    assert small["referable_sensitivity"] == 0.5 and small["referable_specificity"] == 0.5


def test_confusion_rows_are_truth():
    y = np.array([0, 0, 1, 2])
    result = grading_metrics(y, np.eye(3)[[1, 1, 1, 2]])
    assert result["confusion"] == [[0, 2, 0], [0, 1, 0], [0, 0, 1]]
    assert result["per_class_sensitivity"] == [0.0, 1.0, 1.0]
    assert result["n"] == 4


def test_unknown_grades_dropped_and_bad_grades_rejected():
    y, probs = _grading_sample(50)
    with_unknown = grading_metrics(
        np.concatenate([y, [-1, -1]]), np.concatenate([probs, probs[:2]])
    )
    assert json.dumps(with_unknown) == json.dumps(grading_metrics(y, probs))
    assert with_unknown["n"] == 50
    with pytest.raises(ValueError, match="7"):
        grading_metrics(np.array([0, 7]), probs[:2])


def test_only_unknown_grades_gives_undefined_metrics():
    result = grading_metrics(np.array([-1, -1]), np.full((2, 5), 0.2))
    assert result["n"] == 0 and result["confusion"] == [[0] * 5 for _ in range(5)]
    assert all(math.isnan(result[k]) for k in ("accuracy", "qwk", "macro_f1", "macro_auc"))


def test_torch_inputs_and_json():
    y, probs = _grading_sample(60)
    from_torch = grading_metrics(torch.from_numpy(y), torch.from_numpy(probs).float())
    from_numpy = grading_metrics(y, probs.astype(np.float32))
    assert json.dumps(from_torch) == json.dumps(from_numpy)
    assert all(isinstance(v, int) for row in from_torch["confusion"] for v in row)


def test_roc_curves_agree_with_aucs():
    y, probs = _grading_sample()
    keep = y != 4
    curves = roc_curves(y[keep], probs[keep])
    result = grading_metrics(y[keep], probs[keep])
    assert sorted(curves["per_class"]) == [0, 1, 2, 3]
    for c, curve in curves["per_class"].items():
        assert curve["auc"] == pytest.approx(result["per_class_auc"][c])
        assert auc(curve["fpr"], curve["tpr"]) == pytest.approx(curve["auc"])
    assert curves["referable"]["auc"] == pytest.approx(result["referable_auc"])


# ------------------------------------------------------------------------------------------------
# Super-resolution
# ------------------------------------------------------------------------------------------------


def _smooth_images(n: int, height: int, width: int, seed: int) -> torch.Tensor:
    """Random smooth RGB images ``[n,3,H,W]`` in [0,1]: bicubic-upsampled noise."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, max(2, height // 8), max(2, width // 8), generator=g)
    return F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False).clamp(
        0, 1
    )


def _noisy(images: torch.Tensor, sigma: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (images + sigma * torch.randn(images.shape, generator=g)).clamp(0, 1)


def _hwc(image: torch.Tensor) -> np.ndarray:
    return image.permute(1, 2, 0).double().numpy()


def _skimage_ssim(a: torch.Tensor, b: torch.Tensor, full: bool = False):
    return structural_similarity(
        _hwc(b),
        _hwc(a),
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        data_range=1,
        channel_axis=-1,
        full=full,
    )


@pytest.mark.parametrize("height,width", [(32, 32), (48, 64), (64, 40), (16, 16)])
def test_psnr_ssim_match_skimage(height, width):
    hr = _smooth_images(2, height, width, seed=height)
    sr = _noisy(hr, 0.05, seed=width)
    psnr, ssim = psnr_per_image(sr, hr), ssim_per_image(sr, hr)
    for i in range(2):
        assert psnr[i].item() == pytest.approx(
            peak_signal_noise_ratio(_hwc(hr[i]), _hwc(sr[i]), data_range=1), abs=1e-4
        )
        assert ssim[i].item() == pytest.approx(_skimage_ssim(sr[i], hr[i]), abs=1e-4)


def test_psnr_ssim_match_skimage_on_bicubic_degradation():
    hr = _smooth_images(1, 64, 64, seed=3)
    hr = (hr + 0.1 * torch.sin(torch.arange(64.0) / 2)).clamp(0, 1)  # some fine detail to lose
    lr = F.interpolate(hr, scale_factor=0.25, mode="bicubic", antialias=True, align_corners=False)
    bicubic = F.interpolate(lr, size=(64, 64), mode="bicubic", align_corners=False).clamp(0, 1)
    assert psnr_per_image(bicubic, hr).item() == pytest.approx(
        peak_signal_noise_ratio(_hwc(hr[0]), _hwc(bicubic[0]), data_range=1), abs=1e-4
    )
    assert ssim_per_image(bicubic, hr).item() == pytest.approx(
        _skimage_ssim(bicubic[0], hr[0]), abs=1e-4
    )


def test_ssim_rejects_images_smaller_than_window():
    image = torch.rand(1, 3, 10, 20)
    with pytest.raises(ValueError, match="10x20"):
        ssim_per_image(image, image)


def test_identical_images_give_finite_psnr():
    image = _smooth_images(1, 16, 16, seed=0)
    assert math.isfinite(psnr_per_image(image, image).item())
    assert ssim_per_image(image, image).item() == pytest.approx(1.0)


def _disc_fov(height: int, width: int) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    disc = (yy - height / 2) ** 2 + (xx - width / 2) ** 2 < (0.35 * min(height, width)) ** 2
    return disc.float().view(1, 1, height, width)


def test_fov_metrics_match_skimage_on_fov_pixels():
    hr = _smooth_images(1, 64, 64, seed=5)
    sr = _noisy(hr, 0.04, seed=6)
    fov = _disc_fov(64, 64)
    inside = fov[0, 0].bool().numpy()
    expected_psnr = peak_signal_noise_ratio(_hwc(hr[0])[inside], _hwc(sr[0])[inside], data_range=1)
    assert psnr_per_image(sr, hr, fov).item() == pytest.approx(expected_psnr, abs=1e-4)
    _, full_map = _skimage_ssim(sr[0], hr[0], full=True)
    expected_ssim = full_map[5:-5, 5:-5][inside[5:-5, 5:-5]].mean()
    assert ssim_per_image(sr, hr, fov).item() == pytest.approx(expected_ssim, abs=1e-4)


def test_fov_restricts_the_measurement():
    hr = _smooth_images(2, 48, 48, seed=7)
    sr = _noisy(hr, 0.04, seed=8)
    fov = _disc_fov(48, 48).expand(2, 1, 48, 48)
    # pixels beyond the 11x11 SSIM window (5 px, square) around the FOV: touch neither metric
    near_fov = ndimage.binary_dilation(fov[0, 0].numpy() > 0, structure=np.ones((11, 11)))
    far_outside = torch.from_numpy(~near_fov)
    changed = sr.clone()
    changed[:, :, far_outside] = 1.0 - changed[:, :, far_outside]
    for per_image in (psnr_per_image, ssim_per_image):
        assert torch.equal(per_image(changed, hr, fov), per_image(sr, hr, fov))
        assert not torch.equal(per_image(changed, hr), per_image(sr, hr))


def _split_sr(sr, hr, lesion_masks=None) -> dict:
    """A split's SR numbers as evaluation reports them (engine/evaluator.py), one batch, no FOV."""
    masks = torch.zeros(sr.shape[0], 4, *sr.shape[2:]) if lesion_masks is None else lesion_masks
    split = _PerImageSR()
    split.add(sr, hr, None, masks)
    return split.result()


def test_split_sr_metrics_are_per_image_means_not_pooled():
    hr = _smooth_images(2, 32, 32, seed=9)
    sr = torch.stack([_noisy(hr[0], 0.01, seed=1), _noisy(hr[1], 0.2, seed=2)])
    per_image = [peak_signal_noise_ratio(_hwc(hr[i]), _hwc(sr[i]), data_range=1) for i in range(2)]
    pooled = peak_signal_noise_ratio(hr.numpy(), sr.numpy(), data_range=1)
    result = _split_sr(sr, hr)
    assert result["n"] == 2
    assert result["psnr"] == pytest.approx(np.mean(per_image), abs=1e-4)
    assert abs(result["psnr"] - pooled) > 1.0
    assert result["ssim"] == pytest.approx(
        np.mean([_skimage_ssim(sr[i], hr[i]) for i in range(2)]), abs=1e-4
    )


def test_lesion_region_dilates_with_resolution():
    masks = torch.zeros(1, 4, 512, 512)
    masks[0, 2, 100, 200] = 1  # one EX pixel; radius round(4 * 512 / 1024) = 2 -> 5x5 square
    assert lesion_region(masks).sum().item() == 25
    small = torch.zeros(1, 4, 32, 32)
    small[0, 0, 10, 10] = 1  # radius rounds to 0, floored at 1 -> 3x3
    assert lesion_region(small).sum().item() == 9


def test_psnr_lesion_over_dilated_lesions_of_images_with_lesions():
    hr = _smooth_images(2, 64, 64, seed=11)
    sr = _noisy(hr, 0.05, seed=12)
    masks = torch.zeros(2, 4, 64, 64)
    masks[0, 1, 20:24, 30:35] = 1
    masks[0, 3, 40, 10] = 1
    result = _split_sr(sr, hr, masks)
    union = masks[0].amax(0).numpy() > 0
    region = ndimage.binary_dilation(union, structure=np.ones((3, 3)))
    expected = peak_signal_noise_ratio(_hwc(hr[0])[region], _hwc(sr[0])[region], data_range=1)
    assert result["psnr_lesion"] == pytest.approx(expected, abs=1e-4)
    assert result["n_lesion"] == 1
    assert math.isnan(_split_sr(sr, hr, torch.zeros_like(masks))["psnr_lesion"])


# ------------------------------------------------------------------------------------------------
# Segmentation
# ------------------------------------------------------------------------------------------------


def _segmentation_sample(
    n: int = 3, size: int = 24, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Masks with blobs, probabilities correlated with them, and a few invalid channels."""
    g = torch.Generator().manual_seed(seed)
    masks = (F.avg_pool2d(torch.rand(n, 4, size, size, generator=g), 5, 1, 2) > 0.58).float()
    probs = (0.5 * masks + 0.6 * torch.rand(n, 4, size, size, generator=g)).clamp(0, 1)
    valid = torch.ones(n, 4, dtype=torch.bool)
    valid[0, 3] = False
    valid[1, 0] = False
    return probs, masks, valid


def segmentation_metrics(probs, masks, valid, num_bins: int = 1000) -> dict:
    """``SegmentationMetrics`` of one batch."""
    metrics = SegmentationMetrics(num_lesions=probs.shape[1], num_bins=num_bins)
    metrics.update(probs, masks, valid)
    return metrics.compute()


def _pooled_pixels(probs, masks, valid, lesion):
    keep = valid[:, lesion]
    return masks[keep, lesion].flatten().numpy(), probs[keep, lesion].flatten().double().numpy()


def test_binned_aupr_auc_equal_sklearn_on_bin_centres():
    probs, masks, valid = _segmentation_sample()
    bins = 1000
    probs = ((probs * bins).floor().clamp(max=bins - 1) + 0.5) / bins
    result = segmentation_metrics(probs, masks, valid, num_bins=bins)
    for lesion, name in enumerate(("MA", "HE", "EX", "SE")):
        truth, score = _pooled_pixels(probs, masks, valid, lesion)
        assert result[name]["aupr"] == pytest.approx(
            average_precision_score(truth, score), abs=1e-6
        )
        assert result[name]["auc"] == pytest.approx(roc_auc_score(truth, score), abs=1e-6)
        assert result[name]["prevalence"] == pytest.approx(truth.mean())
        assert result[name]["n_images"] == int(valid[:, lesion].sum())


def test_binned_aupr_auc_close_to_sklearn_on_continuous_probs():
    probs, masks, valid = _segmentation_sample(seed=1)
    result = segmentation_metrics(probs, masks, valid)
    for lesion, name in enumerate(("MA", "HE", "EX", "SE")):
        truth, score = _pooled_pixels(probs, masks, valid, lesion)
        assert result[name]["aupr"] == pytest.approx(
            average_precision_score(truth, score), abs=1e-2
        )
        assert result[name]["auc"] == pytest.approx(roc_auc_score(truth, score), abs=1e-2)


def test_invalid_channels_are_ignored():
    probs, masks, valid = _segmentation_sample(seed=2)
    scrambled_probs, scrambled_masks = probs.clone(), masks.clone()
    scrambled_probs[~valid] = torch.rand_like(scrambled_probs[~valid])
    scrambled_masks[~valid] = 1.0 - scrambled_masks[~valid]
    assert segmentation_metrics(scrambled_probs, scrambled_masks, valid) == segmentation_metrics(
        probs, masks, valid
    )
    assert segmentation_metrics(
        scrambled_probs, scrambled_masks, torch.ones_like(valid)
    ) != segmentation_metrics(probs, masks, torch.ones_like(valid))


def test_dice_hand_cases():
    probs = torch.zeros(3, 4, 8, 8)
    masks = torch.zeros(3, 4, 8, 8)
    masks[0, 0, 0, 0:4] = 1
    probs[0, 0, 0, 2:6] = 0.9  # 2 of 4 GT pixels plus 2 false positives: 2*2 / (4+4)
    masks[1, 0, 5, 5] = 1
    probs[1, 0, 5, 5] = 0.5  # the threshold itself counts as positive: Dice 1
    probs[2, 0] = 1.0  # empty GT: skipped, whatever is predicted
    probs[0, 1, 3, 3] = 0.9  # HE has no GT anywhere -> NaN
    valid = torch.ones(3, 4, dtype=torch.bool)
    valid[:, 3] = False  # SE annotated nowhere
    result = segmentation_metrics(probs, masks, valid)
    assert result["MA"]["dice"] == pytest.approx((0.5 + 1.0) / 2)
    assert math.isnan(result["HE"]["dice"]) and math.isnan(result["HE"]["aupr"])
    assert result["HE"]["n_images"] == 3
    assert all(math.isnan(result["SE"][k]) for k in ("aupr", "auc", "dice", "prevalence"))
    assert result["SE"]["n_images"] == 0
    assert result["mean"]["dice"] == pytest.approx(0.75)


def test_streaming_equals_one_update():
    probs, masks, valid = _segmentation_sample(n=5, seed=3)
    streamed = SegmentationMetrics()
    for start in (0, 2, 3):
        stop = {0: 2, 2: 3, 3: 5}[start]
        streamed.update(probs[start:stop], masks[start:stop], valid[start:stop])
    once = segmentation_metrics(probs, masks, valid)
    for name, values in once.items():
        for key, value in values.items():
            assert streamed.compute()[name][key] == pytest.approx(value, abs=1e-12, nan_ok=True)


def test_curves_are_consistent_with_compute():
    probs, masks, valid = _segmentation_sample(seed=4)
    metrics = SegmentationMetrics()
    metrics.update(probs, masks, valid)
    curves, result = metrics.curves(), metrics.compute()
    for name in ("MA", "HE", "EX", "SE"):
        curve = curves[name]
        assert curve["recall"][0] == 0.0 and curve["recall"][-1] == pytest.approx(1.0)
        assert np.all(np.diff(curve["recall"]) >= 0) and np.all(np.diff(curve["fpr"]) >= 0)
        assert curve["aupr"] == result[name]["aupr"]
        assert auc(curve["fpr"], curve["tpr"]) == pytest.approx(result[name]["auc"])


def test_segmentation_rejects_bad_shapes():
    probs, masks, valid = _segmentation_sample()
    with pytest.raises(ValueError, match="valid"):
        segmentation_metrics(probs, masks, valid[:, :3])
