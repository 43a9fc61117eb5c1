"""train.init_from=synthetic: a pre-training run on the embedded dataset, built once, resumed, reused."""

import logging
import shutil

import pytest
import torch
import yaml

import train as train_cli
from engine import pretrain
from engine.checkpoint import CheckpointError, load_checkpoint
from engine.cli import run_cli
from engine.config import ConfigError, load_config
from engine.pretrain import pretraining_config
from engine.trainer import Trainer, run_status

# The pre-training's schedule in these tests: configs/demo.yaml's scaled down like tests/conftest.py TINY,
# with one isr and one cls epoch (the seg and joint stages have none, so they are skipped).
TINY_PRESET = {
    "data": {"n_train": 8, "n_val": 4, "n_test": 4, "crop_size": 32, "backgrounds": "retina"},
    "train": {
        stage: {"epochs": int(stage in ("isr", "cls")), "batch_size": 4, "schedule": "constant"}
        for stage in ("isr", "seg", "cls", "joint")
    },
}


@pytest.fixture
def tiny_preset(tmp_path, monkeypatch):
    preset = tmp_path / "pretrain.yaml"
    preset.write_text(yaml.safe_dump(TINY_PRESET))
    monkeypatch.setattr(pretrain, "PRESET", preset)
    return preset


def _real(tiny_overrides, name, *extra):
    # The real run trains the cls stage alone: the ISR and segmentation nets keep the pre-trained weights.
    return load_config(
        None,
        [
            *tiny_overrides,
            "run.threads=1",
            f"run.name={name}",
            "train.stage=cls",
            "train.init_from=synthetic",
            *extra,
        ],
    )


def test_synthetic_init_builds_the_pretraining_once_then_reuses_it(
    tmp_path, tiny_overrides, tiny_preset, caplog
):
    config = _real(tiny_overrides, "first", "model.isr_channels=12")
    pre = pretraining_config(config)
    assert pre.run_dir.parent == tmp_path / "runs" and pre.run.name.startswith("synthetic_")
    assert pre.model == config.model  # every model.* key, so the shapes match
    assert (pre.data.dataset, pre.data.hr_size, pre.data.scale, pre.data.n_train) == (
        "synthetic",
        64,
        4,
        8,
    )
    assert (pre.run.threads, pre.run.amp, pre.train.init_from) == (1, False, None)
    assert run_status(pre) == "new"

    with caplog.at_level(logging.INFO, logger="engine.trainer"):
        first = Trainer(config)
        first.fit()
    assert f"train.init_from=synthetic: starting the pre-training run {pre.run_dir}" in caplog.text
    assert run_status(pre) == "finished"
    best = pre.run_dir / "checkpoints" / "best.pt"
    pretrained = load_checkpoint(best)["model"]
    for name, value in first.model.isr.state_dict().items():
        assert torch.equal(value, pretrained[f"isr.{name}"]), name
    assert pretrained["isr.head.0.weight"].shape == (
        12,
        3,
        3,
        3,
    )  # the real run's model.isr_channels=12
    stamp, rows = best.stat().st_mtime_ns, (pre.run_dir / "log.csv").read_text()

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="engine.trainer"):
        second = Trainer(_real(tiny_overrides, "second", "model.isr_channels=12"))
        second.fit()
    assert (
        f"train.init_from=synthetic: reusing the finished pre-training run {pre.run_dir}"
        in caplog.text
    )
    assert "starting the pre-training" not in caplog.text and "resuming" not in caplog.text
    assert (
        best.stat().st_mtime_ns == stamp and (pre.run_dir / "log.csv").read_text() == rows
    )  # nothing trained again
    for name, value in second.model.seg.state_dict().items():
        assert torch.equal(value, pretrained[f"seg.{name}"]), name
    assert sorted(path.name for path in (tmp_path / "runs").iterdir()) == sorted(
        ["first", "second", pre.run.name]
    )
    # The global RNG is put back after the pre-training: both runs trained alike.
    for name, value in first.model.grader.state_dict().items():
        assert torch.equal(value, second.model.grader.state_dict()[name]), name

    other = pretraining_config(
        _real(tiny_overrides, "third", "model.isr_channels=12", "train.init_synthetic_hr_size=32")
    )
    assert (
        other.data.hr_size == 32 and other.data.crop_size == 32 and other.run.name != pre.run.name
    )


def test_an_interrupted_pretraining_is_resumed(tmp_path, tiny_overrides, tiny_preset, caplog):
    config = _real(tiny_overrides, "first")
    pre = pretraining_config(config)
    Trainer(pre).fit()
    # As if killed after the isr stage: last.pt back to the isr stage's end, the cls stage's files gone.
    folder = pre.run_dir / "checkpoints"
    for path in folder.glob("cls_*.pt"):
        path.unlink()
    shutil.copyfile(folder / "isr_last.pt", folder / "last.pt")
    shutil.copyfile(folder / "isr_best.pt", folder / "best.pt")
    assert run_status(pre) == "interrupted"
    with caplog.at_level(logging.INFO, logger="engine.trainer"):
        Trainer(config).fit()
    assert (
        f"train.init_from=synthetic: resuming the interrupted pre-training run {pre.run_dir}"
        in caplog.text
    )
    assert run_status(pre) == "finished" and (folder / "cls_best.pt").is_file()
    assert load_checkpoint(folder / "last.pt")["stage"] == "cls"


def test_a_bad_init_from_is_one_line_naming_the_key(tmp_path, tiny_overrides, capsys):
    trainer = Trainer(load_config(None, [*tiny_overrides, "train.init_from=absent.pt"]))
    with pytest.raises(
        CheckpointError,
        match=r"^train.init_from=absent.pt: checkpoint not found: absent.pt; .* or synthetic",
    ):
        trainer.fit()
    code = run_cli(train_cli.main, ["--quiet", *tiny_overrides, "train.init_from=synthtic"])
    err = capsys.readouterr().err
    assert (
        code == 2
        and err.count("\n") == 1
        and err.startswith("error: train.init_from=synthtic: unknown checkpoint 'synthtic'")
        and "a release name or synthetic" in err
    )
    with pytest.raises(
        ConfigError, match="train.init_from=synthetic: the embedded dataset has 5 grades"
    ):
        pretraining_config(
            load_config(None, [*tiny_overrides, "data.num_classes=3", "train.init_from=synthetic"])
        )
    with pytest.raises(ConfigError, match="train.init_synthetic_hr_size must be"):
        load_config(None, ["train.init_synthetic_hr_size=40"])
