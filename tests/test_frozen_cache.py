"""Frozen nets' outputs computed once per stage (train.cache_frozen) give the steps and the
validation what computing them every time gives, follow the batch's flips, and are rebuilt
when the frozen weights change."""

import copy

import pytest
import torch

from engine.config import load_config
from engine.frozen_cache import FrozenOutputs, IndexedDataset, weights_fingerprint
from engine.trainer import Trainer
from tests.conftest import TINY
from tests.test_fast_paths import FP32_GRAD_RTOL, assert_matches_reference


def _trainer(tmp_path, *overrides):
    config = load_config(
        None, [*TINY, f"run.out_dir={tmp_path}", "model.grader_dropout=0", *overrides]
    )
    return Trainer(config)


def _first_batch(trainer, stage):
    loader = trainer.train_loader(stage)
    loader.sampler.set_epoch(0)
    return next(iter(loader))


def _step(trainer, stage, batch):
    trainer.model.zero_grad(set_to_none=True)
    trainer.crop_generator = torch.Generator().manual_seed(0)
    losses = getattr(trainer, f"step_{stage}")(trainer._batch(batch, stage))
    grads = {
        name: p.grad.detach().double()
        for name, p in trainer.model.named_parameters()
        if p.grad is not None
    }
    return {key: value.detach().double() for key, value in losses.items()}, grads


@pytest.mark.parametrize("stage, train_input", [("cls", "hr"), ("cls", "lr"), ("joint", "hr")])
def test_cached_outputs_give_the_losses_and_gradients_of_the_uncached_step(
    tmp_path, stage, train_input
):
    trainer = _trainer(tmp_path, f"train.input={train_input}")
    trainer._prepare_stage(stage)
    trainer._cache_frozen_outputs(stage)
    assert trainer.frozen_train is not None
    expected_keys = (
        {"lesion_logits", "stage_image"}
        if (stage, train_input) == ("cls", "lr")
        else {"lesion_logits"}
    )
    assert set(trainer.frozen_train.tensors) == expected_keys
    assert len(trainer.frozen_train) == len(trainer.train_set)
    batch = _first_batch(trainer, stage)
    assert "index" in batch
    assert "lesion_logits" in trainer._batch(batch, stage)
    state = copy.deepcopy(
        trainer.model.state_dict()
    )  # a step moves the BatchNorm running statistics
    cached = _step(trainer, stage, batch)
    trainer.model.load_state_dict(state)
    trainer.frozen_train = None  # the uncached path: the frozen nets run inside the step
    assert "lesion_logits" not in trainer._batch(batch, stage)
    uncached = _step(trainer, stage, batch)
    assert_matches_reference(*cached, *uncached, loss_rtol=1e-5, grad_rtol=FP32_GRAD_RTOL)


def test_the_cache_follows_the_batch_flips(tmp_path):
    trainer = _trainer(tmp_path, "data.flip=true", "train.cls.batch_size=8")
    trainer._prepare_stage("cls")
    trainer._cache_frozen_outputs("cls")
    batch = _first_batch(trainer, "cls")
    trainer.crop_generator = torch.Generator().manual_seed(3)
    flipped = trainer._batch(batch, "cls")
    rows = trainer.frozen_train.lookup(batch["index"])["lesion_logits"]
    kinds = set()
    for i in range(len(batch["index"])):
        for dims in ((), (-1,), (-2,), (-1, -2)):
            hr = batch["hr"][i].flip(dims) if dims else batch["hr"][i]
            if torch.equal(flipped["hr"][i], hr):
                expected = rows[i].flip(dims) if dims else rows[i]
                assert torch.equal(flipped["lesion_logits"][i], expected), (
                    f"sample {i}: map not flipped with the image {dims}"
                )
                kinds.add(dims)
                break
        else:
            raise AssertionError(f"sample {i}: no flip of the image matches")
    assert len(kinds) > 1  # the draw flipped some samples and not others


def test_cls_validation_with_cached_lesion_maps_equals_the_plain_one(tmp_path):
    cached = _trainer(tmp_path, "train.cache_frozen=true")
    plain = _trainer(tmp_path, "train.cache_frozen=false")
    plain.model.load_state_dict(cached.model.state_dict())
    for trainer in (cached, plain):
        trainer._prepare_stage("cls")
    first = cached.validate("cls")
    assert cached.frozen_val is not None and len(cached.frozen_val) == len(cached.val_set)
    kept = cached.frozen_val
    again = cached.validate("cls")
    assert cached.frozen_val is kept  # same weights: computed once for the stage
    reference = plain.validate("cls")
    assert plain.frozen_val is None
    for metrics in (first, again):
        for key in ("qwk", "accuracy", "macro_auc"):
            assert metrics["grading"][key] == pytest.approx(reference["grading"][key], abs=1e-6)
        assert metrics["segmentation"]["mean"]["aupr"] == pytest.approx(
            reference["segmentation"]["mean"]["aupr"], rel=1e-5
        )


def test_the_cache_is_reused_for_the_same_weights_and_rebuilt_for_new_ones(tmp_path):
    trainer = _trainer(tmp_path)
    trainer._prepare_stage("cls")
    trainer._cache_frozen_outputs("cls")
    first = trainer.frozen_train
    trainer._prepare_stage("joint")
    trainer._cache_frozen_outputs("joint")
    assert (
        trainer.frozen_train is first
    )  # joint needs the same HR lesion maps from the same seg net
    with torch.no_grad():
        trainer.model.seg.heads[0].bias.add_(1.0)
    trainer._cache_frozen_outputs("joint")
    assert trainer.frozen_train is not first
    assert not torch.equal(
        trainer.frozen_train.tensors["lesion_logits"], first.tensors["lesion_logits"]
    )
    trainer._prepare_stage("seg")
    trainer._cache_frozen_outputs("seg")  # the seg net trains: nothing frozen to cache
    assert trainer.frozen_train is None


def test_a_cache_over_budget_or_switched_off_falls_back_to_the_plain_step(tmp_path):
    for overrides in (["train.cache_max_gb=0"], ["train.cache_frozen=false"]):
        trainer = _trainer(tmp_path, *overrides)
        trainer._prepare_stage("cls")
        trainer._cache_frozen_outputs("cls")
        assert trainer.frozen_train is None
        batch = trainer._batch(_first_batch(trainer, "cls"), "cls")
        assert "lesion_logits" not in batch
        assert torch.isfinite(trainer.step_cls(batch)["loss"])


def test_fingerprint_and_lookup():
    net = torch.nn.Conv2d(3, 4, 1)
    before = weights_fingerprint([net, None])
    assert weights_fingerprint([net]) == before
    with torch.no_grad():
        net.weight[0, 0, 0, 0] += 1e-6
    assert weights_fingerprint([net]) != before
    values = torch.arange(10.0).view(5, 2)
    cache = FrozenOutputs({"x": values})
    assert torch.equal(cache.lookup(torch.tensor([4, 0, 2]))["x"], values[[4, 0, 2]])
    assert torch.equal(cache.rows(1, 3)["x"], values[1:3])
    assert FrozenOutputs.bytes_needed(10, {"a": (4, 8, 8)}, torch.bfloat16) == 10 * 4 * 64 * 2
    assert IndexedDataset([{"a": 1}, {"a": 2}])[1] == {"a": 2, "index": 1}


class _PartlyGraded(torch.utils.data.Dataset):
    """The training set with its first image's grade unknown (a segmentation-only image)."""

    def __init__(self, dataset):
        self.dataset = dataset
        self.grades = [-1, *list(dataset.grades)[1:]]

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        return {**self.dataset[index], "grade": self.grades[index]}


def test_stages_training_on_different_images_get_their_own_cache(tmp_path):
    trainer = _trainer(tmp_path)
    trainer.train_set = _PartlyGraded(trainer.train_set)
    trainer._prepare_stage("cls")
    trainer._cache_frozen_outputs("cls")
    assert len(trainer.frozen_train) == len(trainer.train_set) - 1  # graded images only
    trainer._prepare_stage("joint")
    trainer._cache_frozen_outputs("joint")
    assert len(trainer.frozen_train) == len(trainer.train_set)  # every image: not the cls cache
    loader = trainer.train_loader("joint")
    loader.sampler.set_epoch(0)
    for batch in loader:
        assert trainer._batch(batch, "joint")["lesion_logits"].shape[0] == len(batch["index"])
