"""Lesion contrast kept at a resolution (evaluation/lesion_resolution.py, scripts/lesion_resolution.py)."""

import numpy as np
import pytest
from test_dataset_idrid import make_idrid

from evaluation.lesion_resolution import contrast_retention
from scripts import lesion_resolution

N = 256


def _disc(centre: tuple[int, int], radius: float) -> np.ndarray:
    yy, xx = np.mgrid[:N, :N]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


def _scene():
    """A grey plane with a dark 3-px dot (an MA) and a dark 40-px disc (a haemorrhage)."""
    dot, disc = _disc((60, 60), 1.5), _disc((160, 160), 20)
    green = np.full((N, N), 120.0, dtype=np.float32)
    green[dot | disc] = 60.0
    return green, dot, disc, ~(dot | disc)


def test_full_size_keeps_all_contrast():
    green, dot, disc, background = _scene()
    kept = contrast_retention(green, dot | disc, background, [N])[N]
    assert kept.shape == (2,)
    np.testing.assert_allclose(kept, 1.0, atol=1e-5)


def test_small_lesion_fades_before_large_one():
    green, dot, disc, background = _scene()
    sizes = [N // 8, N // 4, N // 2]
    dot_kept = contrast_retention(green, dot, background, sizes)
    disc_kept = contrast_retention(green, disc, background, sizes)
    # At 1/8 the 3-px dot is under half a pixel wide and nearly gone; the 40-px disc is 5 px wide.
    assert dot_kept[N // 8][0] < 0.2 and disc_kept[N // 8][0] > 0.5
    assert disc_kept[N // 4][0] > 0.8 and dot_kept[N // 4][0] < 0.2
    # Less resolution never shows the dot better.
    assert dot_kept[N // 8][0] < dot_kept[N // 4][0] < dot_kept[N // 2][0] <= 1.0 + 1e-6


def test_lesions_without_contrast_or_ring_are_left_out():
    green, dot, disc, background = _scene()
    flat = np.full_like(green, 120.0)
    assert contrast_retention(flat, dot | disc, background, [N // 2])[N // 2].size == 0
    assert contrast_retention(green, dot, np.zeros_like(background), [N // 2])[N // 2].size == 0


def test_rejects_planes_of_other_shapes():
    green, dot, _, background = _scene()
    with pytest.raises(ValueError, match="square"):
        contrast_retention(green[:, :-1], dot[:, :-1], background[:, :-1], [64])


def test_cli_prints_a_table_for_a_dataset(tmp_path, capsys):
    root = make_idrid(tmp_path / "idrid")
    assert lesion_resolution.main(["--data-root", str(root), "--sizes", "16,32"]) == 0
    out = capsys.readouterr().out
    assert "images with masks" in out and "| lesion |" in out and "16 px | 32 px" in out


def test_cli_names_a_bad_argument(capsys):
    with pytest.raises(SystemExit):
        lesion_resolution.main(["--sizes", "128,big"])
    assert "--sizes" in capsys.readouterr().err
