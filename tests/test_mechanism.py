"""The task-aware loss's signals: SR-vs-HR CAM agreement and the task gap (engine/mechanism.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from engine.builders import build_dataset, build_loader, build_model
from engine.config import load_config
from engine.mechanism import cam_agreement, mechanism_signals
from tests.conftest import TINY


def _reference(
    a: np.ndarray, b: np.ndarray, fov: np.ndarray, top: float = 0.10
) -> tuple[float, float, float]:
    """float64 numpy: MSE, Pearson and top-10% IoU over the FOV pixels of one image."""
    x, y = a[fov], b[fov]
    top_x, top_y = a >= np.quantile(x, 1 - top), b >= np.quantile(y, 1 - top)
    top_x, top_y = top_x & fov, top_y & fov
    return (
        float(((x - y) ** 2).mean()),
        float(np.corrcoef(x, y)[0, 1]),
        float((top_x & top_y).sum() / (top_x | top_y).sum()),
    )


def test_cam_agreement_matches_a_float64_reference():
    generator = torch.Generator().manual_seed(0)
    a = torch.rand(3, 1, 16, 16, generator=generator)
    b = (0.6 * a + 0.4 * torch.rand(3, 1, 16, 16, generator=generator)).clamp(0, 1)
    fov = torch.zeros(3, 1, 16, 16)
    fov[:, :, 2:14, 3:15] = 1
    fov[1, :, :8] = 0  # another field of view per image
    result = cam_agreement(a, b, fov)
    for i in range(3):
        mse, pearson, iou = _reference(
            a[i, 0].double().numpy(), b[i, 0].double().numpy(), fov[i, 0].numpy() > 0.5
        )
        scale = float(a.abs().max())
        assert result["mse"][i].item() == pytest.approx(mse, abs=1e-6 * scale**2)
        assert result["pearson"][i].item() == pytest.approx(pearson, abs=1e-6)
        assert result["top_iou"][i].item() == pytest.approx(iou, abs=1e-6)
    same = cam_agreement(a, a, fov)
    assert (
        torch.all(same["mse"] == 0)
        and torch.allclose(same["pearson"], torch.ones(3))
        and torch.all(same["top_iou"] == 1)
    )
    flat = cam_agreement(torch.zeros_like(a), a, fov)
    assert torch.isnan(flat["pearson"]).all()  # a flat map has no correlation, not 0


def test_sr_equal_to_hr_agrees_perfectly_and_has_no_task_gap():
    config = load_config(None, [*TINY, "model.grade_decoding=argmax"])
    torch.manual_seed(0)
    model = build_model(config)
    model.isr = nn.Identity()  # SR := the input, and the input is HR below
    dataset = build_dataset(config, "val")
    batches = [{**batch, "lr": batch["hr"]} for batch in build_loader(dataset, 4, False, 0)]
    signals = mechanism_signals(model, batches, torch.device("cpu"), config.model.cam_target)
    assert signals["n"] == len(dataset)
    assert signals["cam_mse"] == pytest.approx(0.0, abs=1e-10)
    assert signals["cam_top_iou"] == pytest.approx(1.0)
    assert signals["task_gap"] == pytest.approx(0.0, abs=1e-12)
    blurred = [
        {**batch, "lr": torch.nn.functional.avg_pool2d(batch["hr"], 5, 1, 2)} for batch in batches
    ]
    degraded = mechanism_signals(model, blurred, torch.device("cpu"), config.model.cam_target)
    assert degraded["cam_mse"] > 1e-6  # the same grader explains a blurred image differently
