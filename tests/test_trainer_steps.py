"""The stage steps: which sub-nets get gradients, and that the joint step's grader follows CE alone."""

import pytest
import torch
from torch import nn

from engine.config import load_config
from engine.trainer import Trainer, _eval_mode
from models.losses import grading_loss
from tests.conftest import TINY


def _trainer(tmp_path):
    config = load_config(None, [*TINY, f"run.out_dir={tmp_path}", "model.grader_dropout=0"])
    trainer = Trainer(config)
    trainer.class_weights = None  # random batches below: no dataset needed
    trainer.crop_generator = torch.Generator().manual_seed(0)
    return trainer


def _batch(n=2, size=64, scale=4):
    torch.manual_seed(1)
    masks = (torch.rand(n, 4, size, size) > 0.95).float()
    return {
        "hr": torch.rand(n, 3, size, size),
        "lr": torch.rand(n, 3, size // scale, size // scale),
        "masks": masks,
        "mask_valid": torch.ones(n, 4, dtype=torch.bool),
        "fov": torch.ones(n, 1, size, size),
        "grade": torch.tensor([0, 3][:n]),
    }


def _has_grad(module):
    return any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())


@pytest.mark.parametrize(
    "stage, trained, frozen",
    [
        ("isr", ("isr", "seg"), ("grader", "cam_fusion")),
        ("seg", ("seg",), ("isr", "grader", "cam_fusion")),
        ("cls", ("grader", "cam_fusion"), ("isr", "seg")),
        ("joint", ("isr", "grader"), ("seg", "cam_fusion")),
    ],
)
def test_each_stage_trains_its_subnets_only(tmp_path, stage, trained, frozen):
    trainer = _trainer(tmp_path)
    trainer._prepare_stage(stage)
    losses = getattr(trainer, f"step_{stage}")(trainer._batch(_batch(), stage))
    assert all(torch.isfinite(value) for value in losses.values())
    for name in trained:
        assert _has_grad(getattr(trainer.model, name)), name
    for name in frozen:
        assert not _has_grad(getattr(trainer.model, name)), name
        assert not getattr(trainer.model, name).training, name


def test_joint_step_grader_follows_grading_loss_only_and_isr_gets_task_aware(tmp_path):
    trainer = _trainer(tmp_path)
    trainer._prepare_stage("joint")
    batch = _batch()
    losses = trainer.step_joint(batch)
    assert losses["task_aware"] > 0 and losses["seg_aware"] >= 0
    grader_grads = [p.grad.clone() for p in trainer.model.grader.parameters()]
    isr_grads = [p.grad.clone() for p in trainer.model.isr.parameters()]
    trainer.model.zero_grad(set_to_none=True)
    # The grader's gradient is exactly that of the grading loss on the SR path.
    model = trainer.model
    ce = grading_loss(model.grade_image(model.isr(batch["lr"])).grade_logits, batch["grade"])
    expected = torch.autograd.grad(ce, list(model.grader.parameters()))
    for got, want in zip(grader_grads, expected):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    # The ISR net's gradient changes when the task-aware loss is switched off: it reaches the ISR net.
    trainer.config.loss.task_aware_weight = 0.0
    trainer.step_joint(batch)
    without = [p.grad for p in trainer.model.isr.parameters()]
    assert any(not torch.allclose(a, b) for a, b in zip(isr_grads, without))


@pytest.mark.parametrize("flip", [False, True])
def test_training_batches_are_flipped_only_when_configured(tmp_path, flip):
    config = load_config(None, [*TINY, f"run.out_dir={tmp_path}", f"data.flip={flip}"])
    trainer = Trainer(config)
    trainer.crop_generator = torch.Generator().manual_seed(0)
    batch = _batch(n=2)
    batch["hr"][1] = batch["hr"][0]
    batch["masks"][1] = batch["masks"][0]
    out = trainer._batch({key: value.clone() for key, value in batch.items()}, "cls")
    if not flip:
        assert torch.equal(out["hr"], batch["hr"]) and torch.equal(out["masks"], batch["masks"])
        return
    # Rows of the draw: left-right, top-bottom; columns: samples.
    draws = torch.rand((2, 2), generator=torch.Generator().manual_seed(0)) < 0.5
    for i in range(2):
        expected_hr, expected_masks = batch["hr"][i], batch["masks"][i]
        if draws[0, i]:
            expected_hr, expected_masks = expected_hr.flip(-1), expected_masks.flip(-1)
        if draws[1, i]:
            expected_hr, expected_masks = expected_hr.flip(-2), expected_masks.flip(-2)
        assert torch.equal(out["hr"][i], expected_hr) and torch.equal(
            out["masks"][i], expected_masks
        )
    assert bool(draws.any()), "seed 0 should flip something"


def test_a_stage_crop_size_overrides_the_data_crop(tmp_path):
    config = load_config(
        None, [*TINY, f"run.out_dir={tmp_path}", "data.crop_size=32", "train.seg.crop_size=48"]
    )
    trainer = Trainer(config)
    trainer.crop_generator = torch.Generator().manual_seed(0)
    assert trainer._batch(_batch(size=64), "seg")["hr"].shape[-1] == 48
    assert trainer._batch(_batch(size=64), "isr")["hr"].shape[-1] == 32


# Issue 25: the task-aware loss compares two CAMs of the same eval-mode grader. The ISR net's
# gradient is then the task-aware loss's alone (every other weight 0), and the grader keeps its
# dropout (0.5), the noise a train-mode CAM would carry.
TASK_AWARE_ONLY = [
    "loss.pixel_weight=0",
    "loss.tv_weight=0",
    "loss.cls_weight=0",
    "loss.seg_aware_weight=0",
    "loss.task_aware_weight=1",
]


def _task_aware_trainer(tmp_path, *overrides):
    trainer = Trainer(
        load_config(
            None,
            [
                *TINY,
                f"run.out_dir={tmp_path}",
                "model.grader_dropout=0.5",
                *TASK_AWARE_ONLY,
                *overrides,
            ],
        )
    )
    trainer.class_weights = None
    trainer._prepare_stage("joint")
    return trainer


def _sr_equals_hr_batch(trainer, n=2):
    """A batch whose HR image is exactly what the ISR net makes of its LR image: SR == HR."""
    batch = _batch(n=n)
    with torch.no_grad():
        batch["hr"] = trainer.model.isr(batch["lr"])
    return batch


def _isr_grad_norm(model) -> float:
    return float(torch.sqrt(sum((p.grad.double() ** 2).sum() for p in model.isr.parameters())))


def _planted_sr_attention(kinds):
    """A mode mismatch to plant: the SR CAM with the grader's ``kinds`` modules in train mode (all
    of them: the CAM of the train-mode forward, as before issue 25), the HR CAM still in eval mode."""

    def sr_attention(self, sr, sr_lesions):
        grader = self.model.grader
        with _eval_mode(grader):
            for module in grader.modules():
                if isinstance(module, kinds):
                    module.train()
            return self.model.attention_map(
                self.model.grade_with_lesions(sr, sr_lesions), self.config.model.cam_target
            )

    return sr_attention


@pytest.mark.parametrize("cam_stages", ["all", "last"])
def test_task_aware_loss_and_its_isr_gradient_are_zero_when_sr_is_hr(tmp_path, cam_stages):
    trainer = _task_aware_trainer(tmp_path, f"model.cam_stages={cam_stages}")
    batch = _sr_equals_hr_batch(trainer)
    losses = trainer.step_joint(batch)
    assert float(losses["task_aware"].detach()) <= 1e-10
    assert _isr_grad_norm(trainer.model) <= 1e-8
    # The grader still trains in train mode (dropout on): the same step again grades differently.
    assert trainer.model.grader.training


@pytest.mark.parametrize(
    "kinds", [nn.Module, nn.Dropout, nn.BatchNorm2d], ids=["train_mode", "dropout", "batchnorm"]
)
def test_a_planted_cam_mode_mismatch_makes_the_sr_equals_hr_loss_non_zero(
    tmp_path, monkeypatch, kinds
):
    """The teeth of the test above: the SR CAM with dropout or batch statistics gives a clearly
    non-zero loss and ISR gradient at SR == HR."""
    monkeypatch.setattr(Trainer, "_sr_attention", _planted_sr_attention(kinds))
    trainer = _task_aware_trainer(tmp_path)
    losses = trainer.step_joint(_sr_equals_hr_batch(trainer))
    assert float(losses["task_aware"].detach()) > 1e-3
    assert _isr_grad_norm(trainer.model) > 1e-5


def test_the_task_aware_cams_leave_every_mode_and_flag_as_they_were(tmp_path, monkeypatch):
    trainer = _task_aware_trainer(tmp_path)
    model = trainer.model
    frozen_norm = next(
        module for module in model.grader.modules() if isinstance(module, nn.BatchNorm2d)
    )
    frozen_norm.eval()  # a frozen BatchNorm inside the training grader stays frozen
    before = {name: module.training for name, module in model.named_modules()}
    grads_on = {name: param.requires_grad for name, param in model.named_parameters()}
    trainer.step_joint(_batch())
    assert {name: module.training for name, module in model.named_modules()} == before
    assert {name: param.requires_grad for name, param in model.named_parameters()} == grads_on

    def fails(*_args, **_kwargs):
        raise RuntimeError("planted")

    monkeypatch.setattr(model, "attention_map", fails)
    with pytest.raises(RuntimeError, match="planted"):
        trainer.step_joint(_batch())
    assert {name: module.training for name, module in model.named_modules()} == before
    assert {name: param.requires_grad for name, param in model.named_parameters()} == grads_on
