"""bench/naive_step.py, the published per-image step, as an oracle for the batched path."""

import torch

from bench.naive_step import naive_joint_step, naive_stage_cam
from models.cam import stage_cams, target_weights
from tests.test_fast_paths import _trainer
from tests.test_trainer_steps import _batch


def test_per_channel_gradcam_loop_matches_the_batched_cams(tmp_path):
    model = _trainer(tmp_path).model.eval()  # eval: BatchNorm keeps the samples independent
    result = model.grade_image(torch.rand(3, 3, 64, 64))
    weights = target_weights(result.grade_logits, "any_dr")
    batched = stage_cams(result.grade_logits, result.features, weights)
    gradients = torch.autograd.grad((result.grade_logits * weights).sum(), result.features)
    for stage, (activation, gradient) in enumerate(zip(result.features, gradients)):
        for index in range(3):
            naive = naive_stage_cam(activation[index : index + 1], gradient[index : index + 1])
            torch.testing.assert_close(
                naive, batched[stage][index : index + 1], rtol=1e-4, atol=1e-5
            )


def test_naive_joint_step_gives_the_project_step_gradients(tmp_path):
    """With one image BatchNorm sees the same batch in both, so losses and gradients must agree."""
    batch = {key: value[:1] for key, value in _batch().items()}
    project, naive = _trainer(tmp_path), _trainer(tmp_path)
    project._prepare_stage("joint")
    losses = project.step_joint(project._batch(batch, "joint"))
    naive._prepare_stage("joint")
    naive_losses = naive_joint_step(
        naive.model, batch, naive.config.loss, naive.config.model.cam_target
    )
    assert losses["task_aware"] > 0
    for key in ("loss", "ce", "pixel", "seg_aware", "task_aware"):
        assert abs(float(losses[key].detach()) - naive_losses[key]) <= 1e-4 * max(
            1.0, abs(naive_losses[key])
        ), key
    reference = dict(naive.model.named_parameters())
    compared = 0
    for name, param in project.model.named_parameters():
        if param.grad is not None:
            torch.testing.assert_close(
                reference[name].grad, param.grad, rtol=1e-3, atol=1e-6, msg=name
            )
            compared += 1
    assert compared == len([p for p in project.model.isr.parameters()]) + len(
        [p for p in project.model.grader.parameters()]
    )


def test_naive_task_aware_loss_and_its_isr_gradient_are_zero_when_sr_is_hr(tmp_path):
    """Issue 25 in the reference too: both CAMs from the eval-mode grader (dropout 0.5 here)."""
    from tests.test_trainer_steps import _isr_grad_norm, _sr_equals_hr_batch, _task_aware_trainer

    trainer = _task_aware_trainer(tmp_path)
    losses = naive_joint_step(
        trainer.model,
        _sr_equals_hr_batch(trainer, n=1),
        trainer.config.loss,
        trainer.config.model.cam_target,
    )
    assert losses["task_aware"] <= 1e-10
    assert _isr_grad_norm(trainer.model) <= 1e-8
    assert trainer.model.grader.training and not trainer.model.seg.training
