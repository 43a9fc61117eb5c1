"""evaluation.report: figures are written and readable, the table shows what it is given."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from evaluation.metrics import SegmentationMetrics, grading_metrics, roc_curves
from evaluation.report import (
    format_metrics_table,
    plot_confusion,
    plot_lesion_pr,
    plot_roc,
    plot_sample_panel,
)

NAN = float("nan")


def _grading():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 5, 80)
    logits = rng.normal(0, 1, (80, 5))
    logits[np.arange(80), y] += 1.5
    return y, np.exp(logits) / np.exp(logits).sum(1, keepdims=True)


def _segmentation(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    masks = (F.avg_pool2d(torch.rand(2, 4, 32, 32, generator=g), 5, 1, 2) > 0.58).float()
    probs = (0.5 * masks + 0.6 * torch.rand(2, 4, 32, 32, generator=g)).clamp(0, 1)
    valid = torch.tensor([[True, True, True, False], [True, True, True, False]])
    return probs, masks, valid


def _assert_png(path, mode: str = "RGBA") -> None:
    assert path.exists() and path.stat().st_size > 0
    with Image.open(path) as image:
        assert image.format == "PNG" and image.mode == mode
        assert min(image.size) >= 200


def test_table_shows_given_numbers_and_nan():
    y, probs = _grading()
    grading = grading_metrics(y, probs)
    grading["referable_auc"] = NAN
    sr = {
        "sr": {"psnr": 31.234, "ssim": 0.8765, "n": 3, "psnr_lesion": 28.5},
        "bicubic": {"psnr": 29.011, "ssim": 0.8123, "n": 3, "psnr_lesion": NAN},
    }
    segmentation = {
        "MA": {"aupr": 0.4321, "auc": 0.9876, "dice": 0.3333, "prevalence": 0.00123, "n_images": 3},
        "SE": {"aupr": NAN, "auc": NAN, "dice": NAN, "prevalence": NAN, "n_images": 0},
        "mean": {"aupr": 0.4321, "auc": 0.9876, "dice": 0.3333},
    }
    table = format_metrics_table({"grading": grading, "sr": sr, "segmentation": segmentation})
    for number in (
        f"{grading['qwk']:.4f}",
        f"{grading['accuracy']:.4f}",
        f"{grading['macro_f1']:.4f}",
        "31.23",
        "0.8765",
        "28.50",
        "29.01",
        "0.4321",
        "0.9876",
        "0.3333",
        "1.23e-03",
    ):
        assert number in table
    assert "n/a" in table and "nan" not in table.lower().replace("n/a", "")
    confusion_line = next(line for line in table.splitlines() if line.startswith("0 "))
    assert confusion_line.split()[1:] == [str(v) for v in grading["confusion"][0]]


@pytest.mark.parametrize("section", ["grading", "sr", "segmentation"])
def test_table_with_one_section(section):
    y, probs = _grading()
    sr = {"psnr": 30.1, "ssim": 0.91, "psnr_lesion": 28.4, "n": 1, "n_lesion": 1}
    bicubic = {"psnr": 27.5, "ssim": 0.85, "psnr_lesion": NAN, "n": 1, "n_lesion": 0}
    full = {
        "grading": grading_metrics(y, probs),
        "sr": {"sr": sr, "bicubic": bicubic},
        "segmentation": SegmentationMetrics().compute(),
    }
    table = format_metrics_table({section: full[section]})
    assert table.count("==") == 2
    if section == "segmentation":
        assert table.count("n/a") >= 4 * 4  # nothing accumulated: every lesion metric undefined


def test_plot_confusion_and_roc(tmp_path):
    y, probs = _grading()
    confusion = grading_metrics(y, probs)["confusion"]
    _assert_png(
        plot_confusion(confusion, tmp_path / "a" / "confusion.png", class_names=list("01234"))
    )
    _assert_png(plot_roc(roc_curves(y, probs), tmp_path / "b" / "roc.png"))


def test_plot_lesion_pr(tmp_path):
    metrics = SegmentationMetrics()
    metrics.update(*_segmentation())
    _assert_png(plot_lesion_pr(metrics.curves(), tmp_path / "pr" / "lesion_pr.png"))


@pytest.mark.parametrize("with_cam,as_numpy", [(True, False), (False, True)])
def test_plot_sample_panel(tmp_path, with_cam, as_numpy):
    probs, masks, _ = _segmentation()
    hr = F.interpolate(
        torch.rand(1, 3, 4, 4), size=(32, 32), mode="bicubic", align_corners=False
    ).clamp(0, 1)[0]
    lr = F.interpolate(hr[None], scale_factor=0.25, mode="bicubic", antialias=True)[0].clamp(0, 1)
    bicubic = F.interpolate(lr[None], size=(32, 32), mode="bicubic", align_corners=False)[0].clamp(
        0, 1
    )
    sr = 0.5 * bicubic + 0.5 * hr
    images = [lr, bicubic, sr, hr, probs[0], masks[0]]
    if as_numpy:
        images = [x.numpy() for x in images]
    cam = torch.rand(1, 32, 32) if with_cam else None
    path = plot_sample_panel(
        tmp_path / "panels" / "s0.png",
        *images,
        cam=cam,
        title="id 0: grade 2 -> 2",
        lesion_valid=[True, True, True, False],
    )
    _assert_png(path)


def test_sample_panel_without_lesion_maps(tmp_path):
    """A segmentation-ablated model has no lesion maps: the panel shows the image row only."""
    from PIL import Image as PILImage

    from evaluation.report import plot_sample_panel

    hr = torch.rand(3, 32, 32)
    path = plot_sample_panel(
        tmp_path / "p.png",
        torch.rand(3, 8, 8),
        hr,
        hr,
        hr,
        torch.zeros(0, 32, 32),
        torch.zeros(4, 32, 32),
    )
    with PILImage.open(path) as image:
        assert image.size[0] > image.size[1]  # one row of panels
