"""Ablation study: every row of `Ablation study/rows.yaml` resolves to DeepMT-DR with one switch,
builds, trains one tiny step per stage and evaluates; the switches do what the rows say."""

from pathlib import Path

import pytest
import torch

import tests.test_methods as steps
from engine.config import load_config
from engine.table_runner import load_table
from models.baselines import BicubicUpsampler

ROWS = Path(__file__).resolve().parents[1] / "Ablation study" / "rows.yaml"
TABLE = load_table(ROWS)
BY_NAME = {row.name: row for row in TABLE.rows}


def _config(tmp_path, name):
    row = BY_NAME[name]
    return load_config(None, steps.tiny(tmp_path, *row.overrides), method=row.method)


def test_rows_are_deepmt_dr_with_at_most_one_switch():
    assert TABLE.reference == "full" and BY_NAME["full"].overrides == ()
    assert set(BY_NAME) >= {
        "full",
        "no_isr",
        "no_seg",
        "no_task_aware",
        "no_seg_aware",
        "last_stage_cam",
        "cam_any_dr",
        "scale_x2",
        "scale_x8",
    }
    for row in TABLE.rows:
        assert row.method == "deepmt_dr" and len(row.overrides) <= 1 and row.summary


@pytest.mark.parametrize("name", list(BY_NAME))
def test_ablation_trains_one_step_per_stage_and_evaluates(tmp_path, name):
    config = _config(tmp_path, name)
    trainer, trained, metrics = steps.one_step_per_stage_then_evaluate(config)
    model = trainer.model
    expected = {"no_isr": ["seg", "cls", "joint"], "no_seg": ["isr", "cls", "joint"]}.get(
        name, ["isr", "seg", "cls", "joint"]
    )
    assert trained == expected
    assert isinstance(model.isr, BicubicUpsampler) == (name == "no_isr")
    assert model.use_lesions == (name != "no_seg")
    assert model.cam_stages == ("last" if name == "last_stage_cam" else "all")
    assert config.data.scale == {"scale_x2": 2, "scale_x8": 8}.get(name, 4)
    assert metrics["sr"]["sr"]["n"] == 2


def _joint_losses(tmp_path, name):
    trainer = steps.Trainer(_config(tmp_path, name))
    trainer.class_weights = None
    trainer._prepare_stage("joint")
    return trainer.step_joint(steps.random_batch())


def test_loss_switches_remove_exactly_their_loss(tmp_path):
    full = _joint_losses(tmp_path, "full")
    assert {"ce", "pixel", "tv", "seg_aware", "task_aware"} <= set(full)
    assert "task_aware" not in _joint_losses(tmp_path, "no_task_aware")
    assert "seg_aware" not in _joint_losses(tmp_path, "no_seg_aware")
    assert set(_joint_losses(tmp_path, "no_isr")) == {
        "loss",
        "ce",
    }  # no ISR net: the grader's CE alone


def test_last_stage_cam_is_the_last_stages_gradcam_and_reaches_the_isr(tmp_path):
    trainer = steps.Trainer(_config(tmp_path, "last_stage_cam"))
    model = trainer.model.eval()
    lr = torch.rand(2, 3, 16, 16, requires_grad=True)
    result = model.grade_image(model.isr(lr))
    attention = model.attention_map(result)
    assert (
        attention.shape == (2, 1, 64, 64) and 0 <= attention.min() and attention.max() <= 1 + 1e-6
    )
    model.cam_stages = "all"  # same weights and forward, fused multi-scale CAM: a different map
    assert not torch.allclose(model.attention_map(result), attention)
    (gradient,) = torch.autograd.grad(attention.square().sum(), lr)
    assert gradient.abs().sum() > 0


def test_last_stage_cam_skips_training_the_fusion(tmp_path):
    trainer = steps.Trainer(_config(tmp_path, "last_stage_cam"))
    trainer.class_weights = None
    trainer._prepare_stage("cls")
    assert "cam_fusion" not in trainer.step_cls(steps.random_batch())
