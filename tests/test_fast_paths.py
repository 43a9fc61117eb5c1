"""Each speed switch (config.run, model.seg_checkpoint) leaves one step equal to the plain path,
and the steps never move a tensor to the host (the CPU stand-in for CUDA's sync debug mode)."""

import contextlib

import pytest
import torch

from engine.config import STAGES, load_config
from engine.trainer import Trainer
from models import lesion_seg
from tests.conftest import TINY
from tests.test_trainer_steps import _batch


def _trainer(tmp_path, *overrides):
    config = load_config(
        None,
        [*TINY, f"run.out_dir={tmp_path}", "model.grader_dropout=0", "run.threads=1", *overrides],
    )
    trainer = Trainer(config)
    trainer.class_weights = None  # random batches: no dataset needed
    trainer.crop_generator = torch.Generator().manual_seed(0)
    return trainer


def _step(trainer, stage, batch=None, dtype=None):
    """One step's losses and the trained sub-nets' gradients (unscaled when a GradScaler scaled them).

    ``dtype=torch.float64`` runs the same step with the model and batch in float64: the reference
    every path is compared against.
    """
    trainer.model.zero_grad(set_to_none=True)
    batch = _batch() if batch is None else batch
    if dtype is not None:
        trainer.model.to(dtype)
        batch = {
            key: value.to(dtype) if torch.is_tensor(value) and value.is_floating_point() else value
            for key, value in batch.items()
        }
    trainer._prepare_stage(stage)
    trainer.crop_generator = torch.Generator().manual_seed(0)
    with trainer.autocast():
        losses = getattr(trainer, f"step_{stage}")(trainer._batch(batch, stage))
    scale = float(trainer.scaler.get_scale()) if trainer.scaler.is_enabled() else 1.0
    grads = {
        name: p.grad.detach().double() / scale
        for name, p in trainer.model.named_parameters()
        if p.grad is not None
    }
    return {key: value.detach().double() for key, value in losses.items()}, grads


def assert_matches_reference(losses, grads, ref_losses, ref_grads, loss_rtol, grad_rtol=None):
    """Losses within ``loss_rtol`` of the float64 reference; each gradient tensor within
    ``grad_rtol`` in norm, relative to its own norm plus its sub-net's typical gradient at its
    size (so a gradient that is zero in exact arithmetic, e.g. a bias before BatchNorm, is judged
    by the scale of its neighbours, not by its own round-off).

    No fixed absolute tolerance: this holds wherever oneDNN picks another kernel (AMX, AVX-512, AVX2).
    """
    for key in ("loss", "ce", "pixel", "seg"):
        if key in ref_losses:
            error = float((losses[key] - ref_losses[key]).abs())
            assert error <= loss_rtol * float(ref_losses[key].abs()), (
                f"loss {key}: {float(losses[key])} vs {float(ref_losses[key])}"
            )
    assert grads.keys() == ref_grads.keys()
    if grad_rtol is None:
        return
    nets: dict[str, list[str]] = {}
    for name in ref_grads:
        nets.setdefault(name.split(".")[0], []).append(name)
    for names in nets.values():
        norm = torch.sqrt(sum(ref_grads[name].square().sum() for name in names))
        count = sum(ref_grads[name].numel() for name in names)
        for name in names:
            scale = ref_grads[name].norm() + norm * (ref_grads[name].numel() / count) ** 0.5
            error = (grads[name] - ref_grads[name]).norm()
            assert error <= grad_rtol * scale, (
                f"gradient {name}: relative error {float(error / scale):.2e} > {grad_rtol}"
            )


FP32_GRAD_RTOL = 1e-3  # measured worst over the fp32 paths on an AVX-512 CPU: 9e-5


@pytest.mark.parametrize(
    "overrides, loss_rtol",
    [
        ([], 1e-4),
        (["run.channels_last=true"], 1e-4),
        (["model.seg_checkpoint=true"], 1e-4),
        (["run.compile=true", "run.compile_backend=aot_eager"], 1e-4),
        (["run.amp=true", "run.amp_dtype=bfloat16"], 0.1),  # bf16 keeps 8 bits of mantissa
        (["run.amp=true", "run.amp_dtype=float16"], 0.02),
    ],
    ids=["fp32", "channels_last", "seg_checkpoint", "compile", "bf16", "fp16"],
)
def test_fast_path_step_matches_the_float64_reference(tmp_path, overrides, loss_rtol):
    reference = _trainer(tmp_path)
    fast = _trainer(tmp_path, *overrides)
    # The joint step runs every sub-net; seg checkpointing and compilation (seconds per graph)
    # are checked on it alone.
    single = overrides[:1] in (["model.seg_checkpoint=true"], ["run.compile=true"])
    stages = ("joint",) if single else ("joint", "isr")
    for stage in stages:
        ref_losses, ref_grads = _step(reference, stage, dtype=torch.float64)
        reference.model.float()
        losses, grads = _step(fast, stage)
        # Gradients agree as well on the fp32 paths; reduced precision is checked through the losses.
        assert_matches_reference(
            losses,
            grads,
            ref_losses,
            ref_grads,
            loss_rtol,
            FP32_GRAD_RTOL if loss_rtol < 1e-2 else None,
        )


@pytest.mark.parametrize("bug", ["transposed_input", "perturbed_weight"])
def test_the_reference_comparison_catches_a_broken_path(tmp_path, bug):
    """A planted bug of the kind a fast path could have (a memory-format slip that transposes the
    image; a weight off by 1%) fails the same comparison."""
    reference, broken = _trainer(tmp_path), _trainer(tmp_path)
    batch = _batch()
    ref_losses, ref_grads = _step(reference, "joint", batch, dtype=torch.float64)
    if bug == "transposed_input":
        batch = {**batch, "lr": batch["lr"].transpose(-1, -2), "hr": batch["hr"].transpose(-1, -2)}
    else:
        with torch.no_grad():
            broken.model.grader.stem.weight.mul_(1.01)
    losses, grads = _step(broken, "joint", batch)
    with pytest.raises(AssertionError):
        assert_matches_reference(losses, grads, ref_losses, ref_grads, 1e-4, FP32_GRAD_RTOL)


def test_seg_checkpoint_recomputes_only_while_frozen(tmp_path, monkeypatch):
    trainer = _trainer(tmp_path, "model.seg_checkpoint=true")
    seg = trainer.model.seg
    calls = []

    def counting(block, x, **kwargs):
        calls.append(block)
        return torch.utils.checkpoint.checkpoint(block, x, **kwargs)

    monkeypatch.setattr(lesion_seg, "checkpoint", counting)
    x = torch.rand(1, 3, 32, 32, requires_grad=True)
    seg.train()(x)
    assert not calls  # training mode: BatchNorm statistics must update once
    seg.eval()(x).sum().backward()
    assert len(calls) == 2 * len(seg.encoders) - 1 + len(seg.ups)  # every block of the frozen net
    assert x.grad is not None


@pytest.mark.parametrize("impl", ["fused", "foreach", "for_loop"])
def test_optimizer_implementations_take_the_same_step(tmp_path, impl):
    results = []
    for setting in ("auto", impl):
        trainer = _trainer(tmp_path, f"run.optimizer_impl={setting}")
        optimizers = trainer._prepare_stage("isr")
        _step(trainer, "isr")
        for optimizer in optimizers.values():
            optimizer.step()
        results.append(
            {name: p.detach().clone() for name, p in trainer.model.isr.named_parameters()}
        )
    for name in results[0]:
        torch.testing.assert_close(
            results[1][name], results[0][name], rtol=1e-5, atol=1e-7, msg=name
        )


HOST_TRANSFERS = ("item", "tolist", "numpy", "cpu", "__bool__", "__int__", "__float__", "__index__")


@contextlib.contextmanager
def _no_host_transfers():
    """Make every tensor -> Python/host conversion raise (what torch.cuda.set_sync_debug_mode catches)."""
    saved = {name: getattr(torch.Tensor, name) for name in HOST_TRANSFERS}

    def refuse(name):
        def method(self, *args, **kwargs):
            raise AssertionError(f"host synchronisation inside the step: Tensor.{name}()")

        return method

    try:
        for name in HOST_TRANSFERS:
            setattr(torch.Tensor, name, refuse(name))
        yield
    finally:
        for name, method in saved.items():
            setattr(torch.Tensor, name, method)


@pytest.mark.parametrize("stage", STAGES)
def test_steps_do_not_synchronise_with_the_host(tmp_path, stage):
    trainer = _trainer(
        tmp_path, "data.flip=true"
    )  # the batch's flips and crops are inside the check too
    trainer._prepare_stage(stage)
    batch = _batch()
    with _no_host_transfers():
        losses = getattr(trainer, f"step_{stage}")(trainer._batch(batch, stage))
    assert torch.isfinite(losses["loss"])


@pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="needs a CUDA device (the CPU test above checks the same steps)",
)
@pytest.mark.parametrize("stage", STAGES)
def test_steps_do_not_synchronise_on_cuda(tmp_path, stage):
    trainer = _trainer(tmp_path, "run.device=cuda", "run.amp=true")
    trainer._prepare_stage(stage)
    batch = trainer._batch(_batch(), stage)  # the host-to-device copy happens before the check
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        with trainer.autocast():
            getattr(trainer, f"step_{stage}")(batch)
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_upsample_slices_batches_past_the_32_bit_limit(monkeypatch):
    """At HR 1024 and batch 16 the decoder's upsample output passes 2^31 elements; slicing the
    batch must not change the result (checked here with a tiny limit)."""
    up = lesion_seg.Upsample2x()
    x = torch.rand(5, 3, 4, 4, requires_grad=True).contiguous(memory_format=torch.channels_last)
    whole = up(x)
    monkeypatch.setattr(
        lesion_seg.Upsample2x, "max_elements", 2 * 4 * x[0].numel()
    )  # two images per slice
    sliced = up(x)
    assert torch.equal(sliced, whole)
    (grad_whole,) = torch.autograd.grad(whole.square().sum(), x)
    (grad_sliced,) = torch.autograd.grad(sliced.square().sum(), x)
    assert torch.equal(grad_whole, grad_sliced)


def test_fp16_training_loop_uses_the_grad_scaler(tmp_path):
    """float16 autocast scales the loss and unscales before clipping; the step stays finite."""
    trainer = _trainer(
        tmp_path,
        "run.amp=true",
        "run.amp_dtype=float16",
        "train.clip_grad=1.0",
        "train.max_steps_per_epoch=1",
    )
    assert trainer.scaler.is_enabled()
    before = {name: p.detach().clone() for name, p in trainer.model.isr.named_parameters()}
    trainer.class_weights = None
    optimizers = trainer._prepare_stage("isr")
    trainer.train_one_epoch("isr", 0, optimizers, loader=_OneBatch(_batch()))
    changed = [
        name for name, p in trainer.model.isr.named_parameters() if not torch.equal(p, before[name])
    ]
    assert changed and all(torch.isfinite(p).all() for p in trainer.model.isr.parameters())


class _OneBatch(list):
    """A one-batch 'loader' with the sampler hook train_one_epoch calls."""

    def __init__(self, batch):
        super().__init__([batch])
        self.sampler = type("Sampler", (), {"set_epoch": lambda self, epoch: None})()
