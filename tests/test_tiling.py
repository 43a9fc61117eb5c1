"""models/tiling.py: tiled segmentation over large images, and the inferer using it (issue 28)."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY
from torch import nn

from engine.builders import build_model
from engine.config import ConfigError, load_config
from engine.inference import Inferer
from models.tiling import tiled_apply, window_starts


def test_windows_cover_the_image_with_the_last_flush():
    assert window_starts(100, 40, 10) == [0, 30, 60]
    assert window_starts(96, 32, 0) == [0, 32, 64]
    assert window_starts(30, 40, 10) == [0]
    for size, tile, overlap in ((257, 64, 16), (512, 128, 32), (1000, 256, 64)):
        starts = window_starts(size, tile, overlap)
        covered = torch.zeros(size, dtype=torch.bool)
        for start in starts:
            covered[start : start + tile] = True
        assert covered.all() and starts[-1] + tile == size
        assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:]))


def test_a_pointwise_net_is_unchanged_by_tiling():
    """Blending is a weighted mean of identical values for a per-pixel net: exact."""
    torch.manual_seed(0)
    net = nn.Conv2d(3, 4, 1)
    image = torch.rand(2, 3, 70, 90)
    with torch.no_grad():
        torch.testing.assert_close(tiled_apply(net, image, 32, 8, batch=3), net(image))


def test_a_convolutional_net_agrees_with_the_whole_image_away_from_seams():
    """With overlap beyond the receptive field, the blend equals the whole-image output up to the
    padding effects the ramp weights down (small against the output's scale)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 2, 3, padding=1))
    image = torch.rand(1, 3, 96, 96)
    with torch.no_grad():
        whole, tiled = net(image), tiled_apply(net, image, 48, 16)
    scale = whole.abs().max()
    assert (tiled - whole).abs().max() < 0.05 * scale
    # Without blending (overlap 0) the seams show the windows' zero padding.
    with torch.no_grad():
        hard = tiled_apply(net, image, 48, 0)
    assert (hard - whole).abs().max() > (tiled - whole).abs().max()


def test_the_inferer_tiles_segmentation_by_the_config():
    config = load_config(None, [*TINY, "test.seg_tile=32", "test.seg_tile_overlap=8"])
    torch.manual_seed(0)
    model = build_model(config).eval()
    hr = torch.rand(2, 3, 64, 64)
    tiled = Inferer(model, config, "hr", amp=False)
    whole = Inferer(model, config, "hr", amp=False, seg_tile=(0, 0))
    assert tiled.seg_tile == (32, 8)
    with torch.no_grad():
        expected = torch.sigmoid(tiled_apply(model.segment, hr, 32, 8))
    torch.testing.assert_close(tiled(hr).lesions, expected)
    assert not torch.allclose(whole(hr).lesions, expected)
    with pytest.raises(ConfigError, match="seg_tile_overlap"):
        load_config(None, [*TINY, "test.seg_tile=32", "test.seg_tile_overlap=32"])
