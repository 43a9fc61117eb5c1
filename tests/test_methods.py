"""Compared methods: every method builds, trains one tiny step per stage and evaluates; the
recipes resolve as documented; Chen et al.'s net, the ResNet-50 grader and the bicubic stand-in."""

import json

import pytest
import torch

import test as test_cli
import train as train_cli
from chen_net import ChenNet, tf_same_pad
from data.degrade import bicubic_upsample
from engine.cli import run_cli
from engine.config import ConfigError, load_config
from engine.evaluator import evaluate
from engine.methods import METHODS
from engine.trainer import TRAINABLE, Trainer
from models import create_model
from models.baselines import BicubicUpsampler
from models.grading import ResNetGrader
from tests.conftest import TINY


def random_batch(n=2, size=64, scale=4):
    """A labelled batch of random images, as the loader collates them."""
    generator = torch.Generator().manual_seed(1)
    return {
        "hr": torch.rand(n, 3, size, size, generator=generator),
        "lr": torch.rand(n, 3, size // scale, size // scale, generator=generator),
        "masks": (torch.rand(n, 4, size, size, generator=generator) > 0.95).float(),
        "mask_valid": torch.ones(n, 4, dtype=torch.bool),
        "fov": torch.ones(n, 1, size, size),
        "grade": torch.tensor([0, 3][:n]),
        "id": [f"img{i}" for i in range(n)],
    }


def one_step_per_stage_then_evaluate(config) -> tuple[Trainer, list[str], dict]:
    """One optimiser step of every stage the config runs (as Trainer.fit does), then an evaluation
    in the config's test mode. Returns the trainer, the stages that trained and the metrics."""
    trainer = Trainer(config)
    trainer.class_weights = None  # random batches: no dataset needed
    trainer.crop_generator = torch.Generator().manual_seed(0)
    batch = random_batch(scale=config.data.scale)
    trained = []
    for stage in config.stages_to_run():
        if trainer.untrainable(stage):
            continue
        optimizers = trainer._prepare_stage(stage)
        losses = getattr(trainer, f"step_{stage}")(trainer._batch(batch, stage))
        assert losses and all(torch.isfinite(value) for value in losses.values()), (stage, losses)
        for name in TRAINABLE[stage]:
            module = getattr(trainer.model, name)
            if name in optimizers and name != "cam_fusion":
                assert any(
                    p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters()
                ), (stage, name)
        for optimizer in optimizers.values():
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        trained.append(stage)
    metrics = evaluate(trainer.model, [batch], trainer.device, config.test.input).metrics
    assert metrics["grading"]["n"] == 2 and 0 <= metrics["grading"]["accuracy"] <= 1
    assert ("sr" in metrics) == (config.test.input == "lr")
    assert ("segmentation" in metrics) == config.model.use_lesions
    return trainer, trained, metrics


def tiny(tmp_path, *extra):
    # One thread: on a shared 2-core machine two OpenMP threads per process can run 30x slower.
    return [*TINY, f"run.out_dir={tmp_path}", "model.grader_dropout=0", "run.threads=1", *extra]


EXPECTED = {
    # method: (stages that train, ISR kind, lesion maps, grader class, train.input, test.input)
    "deepmt_dr": (["isr", "seg", "cls", "joint"], "net", True, "GradingNet", "hr", "lr"),
    "lr_cls": (["cls"], "bicubic", False, "GradingNet", "lr", "lr"),
    "hr_then_lr_cls": (["cls", "joint"], "bicubic", False, "GradingNet", "hr", "lr"),
    "hr_cls": (["cls"], "bicubic", False, "GradingNet", "hr", "hr"),
    "sr_then_cls": (["isr", "cls"], "net", False, "GradingNet", "lr", "lr"),
    "seg_then_cls": (["seg", "cls"], "bicubic", True, "GradingNet", "lr", "lr"),
    "chen": (["cls"], "bicubic", False, "ChenNet", "lr", "lr"),
    "resnet50_cls": (["cls"], "bicubic", False, "ResNetGrader", "lr", "lr"),
}


def test_every_method_is_in_the_expectations():
    assert set(EXPECTED) == set(METHODS)


@pytest.mark.parametrize("name", list(EXPECTED))
def test_method_trains_one_step_per_stage_and_evaluates(tmp_path, name):
    stages, isr, lesions, grader, train_input, test_input = EXPECTED[name]
    config = load_config(None, tiny(tmp_path), method=name)
    assert (config.method, config.model.isr, config.model.use_lesions) == (name, isr, lesions)
    assert (config.train.input, config.test.input) == (train_input, test_input)
    trainer, trained, _ = one_step_per_stage_then_evaluate(config)
    assert trained == stages
    assert type(trainer.model.grader).__name__ == grader
    assert isinstance(trainer.model.isr, BicubicUpsampler) == (isr == "bicubic")


def test_cls_stage_on_lr_input_grades_the_frozen_isr_output(tmp_path):
    trainer = Trainer(load_config(None, tiny(tmp_path), method="sr_then_cls"))
    trainer.class_weights = None
    trainer._prepare_stage("cls")
    seen = []
    grade = trainer.model.grade_with_lesions
    trainer.model.grade_with_lesions = lambda image, lesions: (
        seen.append(image) or grade(image, lesions)
    )
    batch = random_batch()
    trainer.step_cls(batch)
    torch.testing.assert_close(seen[0], trainer.model.isr(batch["lr"]))
    assert not seen[0].requires_grad and not any(
        p.grad is not None for p in trainer.model.isr.parameters()
    )


def test_method_sits_between_preset_and_command_line(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text(
        "model:\n  use_lesions: true\ntrain:\n  cls: {epochs: 4}\n  joint: {epochs: 2}\n"
    )
    config = load_config(preset, method="lr_cls")
    assert config.model.use_lesions is False  # the method overrides the preset
    assert (
        config.train.cls.epochs == 6
    )  # single-stage grader: cls + joint epochs, as DeepMT-DR's grader sees
    config = load_config(preset, ["model.use_lesions=true", "train.cls.epochs=3"], method="lr_cls")
    assert (
        config.model.use_lesions is True and config.train.cls.epochs == 3
    )  # the command line wins
    assert load_config(preset, ["method=chen"]).model.grader == "chen_net"
    assert load_config(preset).train.cls.epochs == 4 and load_config(preset).method == "deepmt_dr"


def test_every_method_accepts_a_preset_with_a_leaky_grader_head(tmp_path):
    """The table preset gives ResNet graders a LeakyReLU head; Chen's net keeps its published one."""
    preset = tmp_path / "p.yaml"
    preset.write_text("model:\n  grader_head_activation: leaky_relu\n")
    heads = {
        name: load_config(preset, method=name).model.grader_head_activation for name in METHODS
    }
    assert heads.pop("chen") == "relu" and set(heads.values()) == {"leaky_relu"}


@pytest.mark.parametrize(
    "argv, message",
    [
        ({"method": "nope"}, "unknown method 'nope'"),
        ({"overrides": ["train.stage=cls,isr"]}, "in the order isr, seg, cls, joint"),
        ({"overrides": ["train.stage=cls,cls"]}, "each stage once"),
        ({"overrides": ["train.stage=isr,warmup"]}, "train.stage must be one of"),
        ({"overrides": ["model.grader=vgg"]}, "model.grader must be one of"),
        ({"overrides": ["model.isr=srgan"]}, "model.isr must be one of"),
        ({"overrides": ["train.input=sr"]}, "train.input must be one of"),
        ({"overrides": ["test.input=sr"]}, "test.input must be one of"),
        ({"overrides": ["model.cam_stages=first"]}, "model.cam_stages must be one of"),
    ],
)
def test_bad_method_settings_name_the_key(argv, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, argv.get("overrides", ()), method=argv.get("method"))


def test_stage_list_runs_in_order(tmp_path):
    assert load_config(None, ["train.stage=seg,joint"]).stages_to_run() == ["seg", "joint"]


def test_train_cli_method_then_test_cli_uses_the_methods_input(tmp_path, tiny_overrides, capsys):
    argv = [
        "--quiet",
        "--method",
        "hr_cls",
        "--name",
        "hr",
        "train.max_steps_per_epoch=1",
        *tiny_overrides,
        "run.threads=1",
    ]
    assert run_cli(train_cli.main, argv) == 0
    assert "training hr_cls" in capsys.readouterr().out
    run = tmp_path / "runs" / "hr"
    assert [line.split(",")[0] for line in (run / "log.csv").read_text().splitlines()[1:]] == [
        "cls"
    ]
    argv = [
        "--quiet",
        "--name",
        "hr",
        "--out-dir",
        str(tmp_path / "runs"),
        "--figures",
        str(tmp_path / "f"),
        "--samples",
        "1",
    ]
    assert run_cli(test_cli.main, argv) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["input"] == "hr" and metrics["method"] == "hr_cls" and "sr" not in metrics
    assert len(list((tmp_path / "f" / "hr" / "samples").glob("*.png"))) == 1


# ------------------------------------------------------------------------------ the nets themselves
def test_chen_net_layer_sizes_follow_the_published_table():
    net = ChenNet(num_classes=5).eval()
    logits, features = net.forward_features(torch.rand(2, 3, 224, 224))
    assert logits.shape == (2, 5)
    assert [tuple(f.shape[1:]) for f in features] == [
        (96, 28, 28),
        (192, 14, 14),
        (192, 7, 7),
        (192, 4, 4),
    ]
    assert net.block1[0](torch.rand(1, 3, 224, 224)).shape[-2:] == (56, 56)  # conv 11x11 / 4, SAME
    assert net.head[0].in_features == 3072 and net.head[0].out_features == 256
    assert isinstance(net.head[1], torch.nn.LeakyReLU) and net.head[1].negative_slope == 0.1


def test_chen_net_resizes_any_input_and_takes_lesion_channels():
    net = ChenNet(num_lesions=4).eval()
    assert net(torch.rand(1, 7, 128, 128)).shape == (1, 5)
    assert net(torch.rand(1, 7, 300, 300)).shape == (1, 5)
    with pytest.raises(ValueError, match="7 input channels"):
        net(torch.rand(1, 3, 128, 128))
    with pytest.raises(ValueError, match="no published ImageNet weights"):
        ChenNet(pretrained_path="weights.pth")


def test_chen_net_conv_and_pool_pad_like_tensorflow_same():
    x = torch.arange(1, 50, dtype=torch.float32).view(1, 1, 7, 7)
    padded = tf_same_pad(x, kernel=3, stride=2)  # TF: total pad 2 -> 1 before, 1 after
    assert padded.shape[-2:] == (9, 9)
    padded = tf_same_pad(
        torch.zeros(1, 1, 224, 224), kernel=11, stride=4
    )  # total 7: 3 before, 4 after
    assert padded.shape[-2:] == (231, 231)
    net = ChenNet()
    pooled = net.block3[-1](-torch.ones(1, 1, 4, 4))  # padded cells must never win the max
    assert pooled.shape[-2:] == (2, 2) and bool((pooled == -1).all())


def test_chen_net_lrn_is_tensorflows_default():
    """TF: x / (1 + 1 * sum over channels c-5..c+5 of x^2) ** 0.5."""
    lrn = ChenNet().block1[2]
    x = torch.rand(1, 20, 3, 3)
    squares = torch.nn.functional.pad(x.pow(2), (0, 0, 0, 0, 5, 5))
    window = torch.stack([squares[:, c : c + 11].sum(1) for c in range(20)], dim=1)
    torch.testing.assert_close(lrn(x), x / (1 + window).pow(0.5))


def test_chen_net_dropout_only_in_training():
    net = ChenNet()
    x = torch.rand(2, 3, 64, 64)
    net.eval()
    torch.testing.assert_close(net(x), net(x))
    net.train()
    assert not torch.allclose(net(x), net(x))


def test_resnet50_grader_shapes_weights_and_widened_stem(tmp_path):
    from torchvision.models import resnet50

    net = ResNetGrader(num_lesions=4, hidden=32).eval()
    logits, features = net.forward_features(torch.rand(1, 7, 64, 64))
    assert logits.shape == (1, 5) and [f.shape[1] for f in features] == [256, 512, 1024, 2048]
    reference = resnet50(weights=None)
    path = tmp_path / "resnet50.pth"
    torch.save(reference.state_dict(), path)
    loaded = create_model("resnet50", num_lesions=4, pretrained_path=str(path))
    torch.testing.assert_close(loaded.layer4[0].conv1.weight, reference.layer4[0].conv1.weight)
    torch.testing.assert_close(loaded.stem.weight[:, :3], reference.conv1.weight)
    assert loaded.stem.weight[:, 3:].abs().sum() == 0
    with pytest.raises(FileNotFoundError, match="resnet50"):
        ResNetGrader(pretrained_path=tmp_path / "absent.pth")


def test_bicubic_stand_in_is_the_evaluations_bicubic_baseline():
    lr = torch.rand(2, 3, 8, 8)
    upsampler = BicubicUpsampler(scale=4)
    torch.testing.assert_close(upsampler(lr), bicubic_upsample(lr, 4))
    assert not list(upsampler.parameters())
