"""Losses: the Dice optimum, invalid channels ignored, unknown grades ignored, class weights."""

from functools import partial

import pytest
import torch

from models.losses import (
    class_weights_from_counts,
    dice_loss,
    focal_loss,
    grading_loss,
    pixel_loss,
    seg_aware_loss,
    segmentation_loss,
    tv_loss,
    weighted_bce_loss,
)


def _masks():
    masks = torch.zeros(2, 4, 8, 8)
    masks[:, :, 2:5, 2:5] = 1
    return masks


def test_dice_is_near_zero_for_a_confident_correct_prediction():
    masks, valid = _masks(), torch.ones(2, 4, dtype=torch.bool)
    logits = (masks * 2 - 1) * 20
    assert dice_loss(logits, masks, valid) < 1e-3  # upstream's per-pixel form bottomed out at 0.32
    assert dice_loss(-logits, masks, valid) > 0.9


def test_invalid_channels_are_ignored():
    masks, valid = _masks(), torch.ones(2, 4, dtype=torch.bool)
    valid[:, 1] = False
    logits = torch.randn(2, 4, 8, 8)
    changed = logits.clone()
    changed[:, 1] = 50  # garbage on the invalid channel only
    weighted = partial(segmentation_loss, kind="dice_bce", pos_weight=7.0)
    for loss in (dice_loss, focal_loss, segmentation_loss, weighted):
        torch.testing.assert_close(loss(logits, masks, valid), loss(changed, masks, valid))


def test_weighted_bce_matches_torch_in_float64_and_weights_lesion_pixels():
    masks, valid = _masks().double(), torch.ones(2, 4, dtype=torch.bool)
    logits = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(
        logits, masks, pos_weight=torch.tensor(5.0, dtype=torch.float64)
    )
    torch.testing.assert_close(weighted_bce_loss(logits, masks, valid, 5.0), expected)
    # A missed lesion pixel costs pos_weight times a false alarm of the same confidence.
    valid_one = torch.ones(1, 1, dtype=torch.bool)
    lesion, background = torch.ones(1, 1, 1, 1), torch.zeros(1, 1, 1, 1)
    miss = weighted_bce_loss(torch.full((1, 1, 1, 1), -3.0), lesion, valid_one, 5.0)
    alarm = weighted_bce_loss(torch.full((1, 1, 1, 1), 3.0), background, valid_one, 5.0)
    torch.testing.assert_close(miss, 5 * alarm)
    dice = dice_loss(logits, masks, valid)
    torch.testing.assert_close(
        segmentation_loss(logits, masks, valid, "dice_bce", 5.0), dice + expected
    )
    with pytest.raises(ValueError, match="not one of"):
        segmentation_loss(logits, masks, valid, "bce")


def test_focal_loss_down_weights_easy_pixels():
    masks, valid = _masks(), torch.ones(2, 4, dtype=torch.bool)
    easy = (masks * 2 - 1) * 5
    assert focal_loss(easy, masks, valid) < focal_loss(torch.zeros_like(easy), masks, valid) / 100


def test_grading_loss_ignores_unknown_and_matches_weighted_ce():
    logits = torch.randn(4, 5)
    grades = torch.tensor([0, 3, -1, 4])
    weights = torch.tensor([1.0, 2, 3, 4, 5])
    known = grades >= 0
    expected = torch.nn.functional.cross_entropy(logits[known], grades[known], weight=weights)
    torch.testing.assert_close(grading_loss(logits, grades, weights), expected)
    assert grading_loss(logits, torch.full((4,), -1), weights) == 0


def test_class_weights_inverse_frequency():
    weights = class_weights_from_counts(torch.tensor([100, 10, 50, 0, 40]))
    assert weights[3] == 0
    assert weights[1] / weights[0] == pytest.approx(10)
    assert weights[weights > 0].mean() == pytest.approx(1)


def test_pixel_tv_and_seg_aware():
    a = torch.rand(1, 3, 8, 8)
    assert pixel_loss(a, a) == 0 and pixel_loss(a, a, "l1") == 0
    assert tv_loss(torch.ones(1, 3, 8, 8)) == 0 and tv_loss(a) > 0
    with pytest.raises(ValueError, match="pixel loss"):
        pixel_loss(a, a, "l3")
    sr_logits = torch.randn(1, 4, 8, 8, requires_grad=True)
    hr_logits = torch.randn(1, 4, 8, 8, requires_grad=True)
    seg_aware_loss(sr_logits, hr_logits).backward()
    assert sr_logits.grad.abs().sum() > 0 and hr_logits.grad is None


def test_dice_pools_the_batch_so_empty_images_do_not_dominate():
    masks = torch.zeros(4, 1, 8, 8)
    masks[0, 0, 2:5, 2:5] = 1  # one image of four has the lesion
    valid = torch.ones(4, 1, dtype=torch.bool)
    perfect = (masks * 2 - 1) * 20
    assert dice_loss(perfect, masks, valid) < 1e-3
    # Predicting nothing anywhere is as bad as it gets for the batch, not 3/4 right.
    assert dice_loss(torch.full_like(masks, -20.0), masks, valid) > 0.85
