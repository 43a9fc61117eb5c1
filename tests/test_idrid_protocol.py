"""The IDRiD protocol of docs/RESULTS.md: presets, the committed split, and the metrics on real masks.

The split and metric tests read the shared IDRiD training parts (../shared/data/idrid) and skip
without them; the preset and split-file checks run everywhere.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from sklearn.metrics import average_precision_score

from data.datasets import idrid
from data.maskbits import unpack_planes
from data.prepare import preprocess
from data.records import LESIONS
from data.splits import (
    SplitSettings,
    check_groups,
    compute_folds,
    compute_split,
    default_split_file,
    keep_in_train,
    load_groups,
    read_folds_file,
    read_split_file,
)
from engine.builders import build_model
from engine.config import CONFIG_DIR, load_config
from evaluation.metrics import SegmentationMetrics, lesion_region, psnr_per_image, ssim_per_image

REAL = Path(__file__).resolve().parents[2] / "shared/data/idrid"
needs_real = pytest.mark.skipif(
    not REAL.is_dir(), reason=f"real IDRiD training parts not found at {REAL}"
)


def _shapes(config) -> dict[str, tuple[int, ...]]:
    return {key: tuple(value.shape) for key, value in build_model(config).state_dict().items()}


def test_idrid_presets_follow_the_protocol():
    root = ["data.root=/path/to/IDRiD"]  # required for a public dataset, not read here
    small = load_config(CONFIG_DIR / "idrid_small.yaml", root)
    paper = load_config(CONFIG_DIR / "idrid.yaml", root)
    assert (small.data.dataset, small.data.hr_size, small.data.scale) == ("idrid", 512, 4)
    assert (paper.data.dataset, paper.data.hr_size, paper.data.scale) == ("idrid", 1024, 4)
    assert small.model.seg_width <= 2
    assert small.data.jpeg_quality == 90  # the 18 MB cache that travels
    # The embedded demo's nets with the grader at full width, so a demo run trained with
    # model.grader_width=1 can start it (train.init_from, pretrained_model/README.md).
    demo_full_width = load_config(CONFIG_DIR / "demo.yaml", ["model.grader_width=1"])
    assert _shapes(small) == _shapes(demo_full_width)
    assert _shapes(small) != _shapes(load_config(CONFIG_DIR / "demo.yaml"))


def test_committed_idrid_split_is_intact_and_sized():
    roles = read_split_file(
        default_split_file("idrid")
    )  # refuses an edited file (SHA-256 in its header)
    counts = Counter((sample_id.split("/")[1], role) for sample_id, role in roles.items())
    assert counts == {
        ("grading", "train"): 328,
        ("grading", "val"): 79,
        ("grading", "excluded"): 6,
        ("segmentation", "train"): 44,
        ("segmentation", "val"): 10,
    }
    check_groups(
        roles, load_groups("idrid"), "splits/idrid.csv"
    )  # no duplicate group crosses sides
    assert all(roles[sample_id] == "train" for sample_id in keep_in_train("idrid"))


@needs_real
def test_committed_split_is_regenerated_from_the_data_and_stratified():
    records = idrid.index(REAL).records
    settings = SplitSettings(
        val_fraction=0.2, test_fraction=0.2, seed=0, keep_in_train=keep_in_train("idrid")
    )
    groups = load_groups("idrid")
    roles = compute_split(records, settings, groups)
    assert roles == compute_split(
        list(reversed(records)), settings, groups
    )  # deterministic, order-free
    assert roles == read_split_file(default_split_file("idrid"))  # the committed file is this split
    assert compute_folds(records, 5, settings, groups) == read_folds_file(
        default_split_file("idrid").with_name("idrid_folds.csv")
    )
    # Each grade gives about 20% of its graded photographs to val (whole duplicate groups move,
    # the embedded dataset's background images stay in train).
    free = Counter(r.grade for r in records if r.part == "grading" and roles[r.id] != "excluded")
    val = Counter(r.grade for r in records if r.part == "grading" and roles[r.id] == "val")
    for grade, size in free.items():
        assert abs(val[grade] - 0.2 * size) <= 2, (grade, val[grade], size)


def _real_samples(
    count: int = 3, size: int = 128
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """HR images ``[N,3,S,S]``, lesion masks ``[N,4,S,S]`` and FOVs of the first segmentation images."""
    records = sorted(
        (r for r in idrid.index(REAL).records if r.part == "segmentation"), key=lambda r: r.id
    )[:count]
    images, masks, fovs = [], [], []
    for record in records:
        hr, bits = preprocess(record, size)
        lesion, fov = unpack_planes(torch.from_numpy(bits))
        images.append(torch.from_numpy(hr).permute(2, 0, 1).float() / 255)
        masks.append(lesion)
        fovs.append(fov)
    return torch.stack(images), torch.stack(masks), torch.stack(fovs)


@needs_real
def test_segmentation_metrics_on_real_masks_match_sklearn():
    _, masks, _ = _real_samples()
    generator = torch.Generator().manual_seed(0)
    blurred = torch.nn.functional.avg_pool2d(masks, 5, stride=1, padding=2)
    noisy = (0.7 * blurred + 0.3 * torch.rand(masks.shape, generator=generator)).clamp(0, 1)
    bins = 1000
    probs = (torch.floor(noisy * bins).clamp(max=bins - 1) + 0.5) / bins  # on bin centres: exact
    valid = torch.ones(masks.shape[:2], dtype=torch.bool)
    metrics = SegmentationMetrics(num_bins=bins)
    metrics.update(probs, masks, valid)
    result = metrics.compute()
    for channel, lesion in enumerate(LESIONS):
        truth = masks[:, channel].flatten().numpy()
        if truth.sum() == 0:
            continue
        expected = average_precision_score(truth, probs[:, channel].flatten().numpy())
        assert result[lesion]["aupr"] == pytest.approx(expected, abs=1e-9)
        dices = []
        for image in range(len(masks)):
            gt = masks[image, channel].numpy() > 0.5
            if gt.any():
                pred = probs[image, channel].numpy() >= 0.5
                dices.append(2 * (pred & gt).sum() / (pred.sum() + gt.sum()))
        assert result[lesion]["dice"] == pytest.approx(np.mean(dices), abs=1e-9)


@needs_real
def test_sr_metrics_on_real_images_match_skimage():
    hr, masks, fov = _real_samples()
    lr = torch.nn.functional.interpolate(hr, scale_factor=0.25, mode="bicubic", antialias=True)
    sr = torch.nn.functional.interpolate(lr, scale_factor=4, mode="bicubic").clamp(0, 1)
    psnr = psnr_per_image(sr, hr, fov)
    ssim = ssim_per_image(sr, hr, fov)
    region = lesion_region(masks, fov)
    psnr_lesion = psnr_per_image(sr, hr, region)
    radius = max(1, round(4 * hr.shape[-1] / 1024))
    for i in range(len(hr)):
        a, b = sr[i].permute(1, 2, 0).double().numpy(), hr[i].permute(1, 2, 0).double().numpy()
        inside = fov[i, 0].numpy() > 0.5
        assert float(psnr[i]) == pytest.approx(
            peak_signal_noise_ratio(b[inside], a[inside], data_range=1), abs=1e-3
        )
        _, full = structural_similarity(
            b,
            a,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            data_range=1,
            channel_axis=-1,
            full=True,
        )
        assert float(ssim[i]) == pytest.approx(
            full[5:-5, 5:-5][inside[5:-5, 5:-5]].mean(), abs=1e-5
        )
        union = masks[i].numpy().max(axis=0) > 0.5
        lesions = ndimage.binary_dilation(union, structure=np.ones((2 * radius + 1,) * 2)) & inside
        assert lesions.any()
        assert float(psnr_lesion[i]) == pytest.approx(
            peak_signal_noise_ratio(b[lesions], a[lesions], data_range=1), abs=1e-3
        )
