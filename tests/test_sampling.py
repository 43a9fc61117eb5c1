"""Class-balanced sampling (data.balanced_sampling): grades drawn about equally often, the same
draws for the same (seed, epoch) on every rank, and a resumed epoch continues them."""

import logging
import math

import torch

from engine.builders import build_loader, dataset_grades
from engine.config import load_config
from engine.distributed import EpochShuffleSampler, World
from engine.sampling import BalancedSampler, balanced_weights
from engine.trainer import Trainer
from tests.conftest import TINY

COUNTS = (60, 6, 20, 4, 10)  # grade 0 common, grade 3 rare
GRADES = [grade for grade, count in enumerate(COUNTS) for _ in range(count)]


def test_each_grade_is_drawn_equally_often():
    grades = torch.tensor(GRADES)
    sampler = BalancedSampler(balanced_weights(GRADES), seed=11)
    draws = []
    for epoch in range(100):
        sampler.set_epoch(epoch)
        epoch_draws = list(sampler)
        assert len(epoch_draws) == len(GRADES) == len(sampler)  # the epoch keeps its length
        draws += epoch_draws
    counts = torch.bincount(grades[torch.tensor(draws)], minlength=len(COUNTS))
    n, p = len(draws), 1 / len(COUNTS)
    tolerance = 4 * math.sqrt(n * p * (1 - p))  # 4 binomial standard deviations
    assert torch.all((counts - n * p).abs() <= tolerance), counts.tolist()
    # Without balancing grade 0 would be 60% of the draws.
    assert counts[0] < 0.3 * n and counts[3] > 0.1 * n


def test_ungraded_images_keep_their_share():
    grades = [0] * 30 + [1] * 10 + [-1] * 10
    weights = balanced_weights(grades)
    share = weights / weights.sum()
    torch.testing.assert_close(
        share[40:].sum().double(), torch.tensor(10 / 50, dtype=torch.float64)
    )
    torch.testing.assert_close(share[:30].sum(), share[30:40].sum())


def test_draws_depend_on_seed_and_epoch_only():
    weights = balanced_weights(GRADES)
    first, second = BalancedSampler(weights, 5), BalancedSampler(weights, 5)
    first.set_epoch(3)
    second.set_epoch(3)
    assert list(first) == list(second) == list(first)
    second.set_epoch(4)
    assert list(first) != list(second)
    assert list(BalancedSampler(weights, 6)) != list(BalancedSampler(weights, 5))


def test_resume_inside_an_epoch_gives_the_rest_of_it():
    sampler = BalancedSampler(balanced_weights(GRADES), 7)
    sampler.set_epoch(2)
    whole = list(sampler)
    sampler.set_epoch(2, start=37)
    assert list(sampler) == whole[37:] and len(sampler) == len(whole) - 37


def test_ranks_deal_one_draw_round_robin():
    weights = balanced_weights(GRADES[:-1])  # 99 images: padded to 3 x 33
    single = BalancedSampler(weights, 9, World(0, 1))
    single.set_epoch(1)
    ranks = []
    for rank in range(3):
        sampler = BalancedSampler(weights, 9, World(rank, 3))
        sampler.set_epoch(1)
        ranks.append(list(sampler))
        assert len(sampler) == 33
    # Every rank draws the same 99 indices from the same generator and takes every third.
    generator = torch.Generator().manual_seed(9 + 1)
    draws = torch.multinomial(weights, 99, replacement=True, generator=generator).tolist()
    assert [draws[rank::3] for rank in range(3)] == ranks


def test_loader_and_trainer_use_it_for_cls_and_joint_only(tmp_path, caplog):
    dataset = list(range(len(GRADES)))
    assert isinstance(
        build_loader(dataset, 4, True, 0, weights=balanced_weights(GRADES)).sampler, BalancedSampler
    )
    assert isinstance(build_loader(dataset, 4, True, 0).sampler, EpochShuffleSampler)
    trainer = Trainer(
        load_config(None, [*TINY, f"run.out_dir={tmp_path}", "data.balanced_sampling=true"])
    )
    with caplog.at_level(logging.WARNING):
        loader = trainer.train_loader("cls")
    assert (
        isinstance(loader.sampler, BalancedSampler)
        and "corrects the grade imbalance twice" in caplog.text
    )
    grades = torch.tensor(dataset_grades(loader.dataset.dataset))
    weights = loader.sampler.weights
    for grade in grades.unique():
        if grade >= 0:
            torch.testing.assert_close(
                weights[grades == grade].sum(), weights[grades == grades[0]].sum()
            )
    assert isinstance(trainer.train_loader("seg").sampler, EpochShuffleSampler)
    caplog.clear()
    quiet = Trainer(
        load_config(
            None,
            [
                *TINY,
                f"run.out_dir={tmp_path}",
                "data.balanced_sampling=true",
                "loss.class_weights=none",
            ],
        )
    )
    with caplog.at_level(logging.WARNING):
        assert isinstance(quiet.train_loader("joint").sampler, BalancedSampler)
    assert "twice" not in caplog.text
