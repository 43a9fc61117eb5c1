"""train.py and test.py end to end on tiny images, resume, and bad input at the command line."""

import csv
import json

import pytest
import torch

import test as test_cli
import train as train_cli
from engine.checkpoint import load_checkpoint, save_checkpoint
from engine.cli import run_cli


def _train(argv):
    return run_cli(train_cli.main, ["--quiet", *argv])


def test_train_all_stages_then_test(tmp_path, tiny_overrides, capsys):
    assert _train(["--name", "e2e", "train.max_steps_per_epoch=2", *tiny_overrides]) == 0
    run = tmp_path / "runs" / "e2e"
    for stage in ("isr", "seg", "cls", "joint"):
        assert (run / "checkpoints" / f"{stage}_last.pt").is_file()
    assert (run / "config.yaml").is_file() and (run / "checkpoints" / "best.pt").is_file()
    log = (run / "log.csv").read_text().splitlines()
    assert len(log) == 5 and log[0].startswith("stage,epoch")
    assert list((run / "tensorboard").iterdir())
    figures = tmp_path / "figures"
    argv = [
        "--quiet",
        "--name",
        "e2e",
        "--out-dir",
        str(tmp_path / "runs"),
        "--figures",
        str(figures),
        "--samples",
        "2",
    ]
    assert run_cli(test_cli.main, argv) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["split"] == "test" and metrics["grading"]["n"] == 4
    assert set(metrics["sr"]) == {"sr", "bicubic"} and set(metrics["segmentation"]) >= {
        "MA",
        "HE",
        "EX",
        "SE",
    }
    mechanism = metrics["mechanism"]  # the task-aware loss's signals (engine/mechanism.py)
    assert (
        mechanism["n"] == 4
        and -1 <= mechanism["cam_pearson"] <= 1
        and 0 <= mechanism["cam_top_iou"] <= 1
    )
    assert mechanism["task_gap"] == pytest.approx(mechanism["qwk_sr"] - mechanism["qwk_hr"])
    page = (figures / "e2e" / "report.html").read_text()
    assert (
        "Task-aware mechanism" in page
        and "Intervals and calibration" in page
        and "reliability diagram" in page
    )
    qwk = metrics["intervals"]["qwk"]
    assert qwk["low"] <= qwk["value"] <= qwk["high"] and qwk["value"] == pytest.approx(
        metrics["grading"]["qwk"], abs=1e-9
    )
    assert (
        0 <= metrics["calibration"]["ece"] <= 1
        and sum(metrics["calibration"]["reliability"]["count"]) == 4
    )
    assert metrics["operating_points"][0]["specificity"] >= 0.9 or metrics["operating_points"] == []
    assert "QWK" in capsys.readouterr().out
    for name in ("confusion_matrix.png", "roc_curves.png", "lesion_pr_curves.png"):
        assert (figures / "e2e" / name).stat().st_size > 0
    assert len(list((figures / "e2e" / "samples").glob("*.png"))) == 2
    assert len((run / "predictions_test.csv").read_text().splitlines()) == 5
    # The one referable rule in test.py's CSV: p_referable = p2 + p3 + p4, referable at 0.5.
    with (run / "predictions_test.csv").open(newline="") as file:
        for row in csv.DictReader(file):
            score = sum(float(row[f"p{c}"]) for c in (2, 3, 4))
            assert float(row["p_referable"]) == pytest.approx(score, abs=2e-5)
            assert row["referable"] == str(int(float(row["p_referable"]) >= 0.5))
    # A stage's checkpoint (ISR alone, before the joint stage) gets its own files.
    final = (run / "metrics.json").read_text()
    stage_argv = [
        *argv[:5],
        "--checkpoint",
        str(run / "checkpoints" / "isr_best.pt"),
        "--split",
        "val",
        "--samples",
        "0",
    ]
    assert run_cli(test_cli.main, stage_argv) == 0
    assert json.loads((run / "metrics_val_lr_isr_best.json").read_text())["stage"] == "isr"
    assert (run / "predictions_val_isr_best.csv").is_file() and (
        run / "metrics.json"
    ).read_text() == final


def test_resume_continues_where_it_stopped(tmp_path, tiny_overrides):
    common = ["--stage", "cls", *tiny_overrides, "train.max_steps_per_epoch=2"]
    assert _train(["--name", "straight", *common, "train.cls.epochs=2"]) == 0
    assert _train(["--name", "split", *common, "train.cls.epochs=1"]) == 0
    assert _train(["--name", "split", "--resume", *common, "train.cls.epochs=2"]) == 0
    straight = load_checkpoint(tmp_path / "runs" / "straight" / "checkpoints" / "last.pt")
    resumed = load_checkpoint(tmp_path / "runs" / "split" / "checkpoints" / "last.pt")
    assert straight["epoch"] == resumed["epoch"] == 2 and straight["step"] == resumed["step"]
    for key, value in straight["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    log = (tmp_path / "runs" / "split" / "log.csv").read_text().splitlines()
    assert len(log) == 3  # header + epoch 1 + epoch 2, nothing repeated


def test_existing_run_is_not_overwritten(tmp_path, tiny_overrides, capsys):
    argv = ["--name", "keep", "--stage", "seg", "train.max_steps_per_epoch=1", *tiny_overrides]
    assert _train(argv) == 0
    last = tmp_path / "runs" / "keep" / "checkpoints" / "last.pt"
    before = last.read_bytes()
    assert _train(argv) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert last.read_bytes() == before


@pytest.mark.parametrize(
    "override, message",
    [
        ("data.bogus=1", "unknown config key 'data.bogus'"),
        ("data.scale=3", "data.scale must be one of"),
        ("data.hr_size=-16", "data.hr_size must be positive"),
        ("train.cls.batch_size=0", "batch_size must be positive"),
    ],
)
def test_train_bad_config_is_one_line_exit_2(tmp_path, tiny_overrides, capsys, override, message):
    assert _train(["--name", "bad", *tiny_overrides, override]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err
    assert not (tmp_path / "runs" / "bad").exists()


def test_test_cli_missing_and_foreign_checkpoints(tmp_path, capsys):
    assert run_cli(test_cli.main, ["--quiet", "--checkpoint", str(tmp_path / "none.pt")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    assert run_cli(test_cli.main, ["--quiet", "--checkpoint", str(foreign)]) == 2
    assert "not a DeepMT-DR checkpoint" in capsys.readouterr().err


def test_test_cli_checkpoint_not_matching_its_config(tmp_path, tiny_overrides, capsys):
    assert (
        _train(["--name", "m", "--stage", "seg", "train.max_steps_per_epoch=1", *tiny_overrides])
        == 0
    )
    path = tmp_path / "runs" / "m" / "checkpoints" / "last.pt"
    state = load_checkpoint(path)
    state["config"]["model"]["seg_width"] = (
        0.5  # the weights no longer fit the declared architecture
    )
    tampered = save_checkpoint(state, tmp_path / "tampered.pt")
    assert run_cli(test_cli.main, ["--quiet", "--checkpoint", str(tampered)]) == 2
    err = capsys.readouterr().err
    assert "tampered.pt does not match the requested model" in err and "shape mismatch" in err


def test_amp_and_channels_last_switches_run_on_cpu(tmp_path, tiny_overrides):
    """AMP is a no-op on the CPU and channels_last a layout change: the joint step must still train."""
    argv = [
        "--name",
        "fast",
        "--stage",
        "joint",
        "train.max_steps_per_epoch=1",
        "run.amp=true",
        "run.channels_last=true",
        *tiny_overrides,
    ]
    assert _train(argv) == 0
    state = load_checkpoint(tmp_path / "runs" / "fast" / "checkpoints" / "joint_last.pt")
    assert state["stage"] == "joint" and state["step"] == 1


def test_segmentation_ablated_run_skips_the_seg_stage(tmp_path, tiny_overrides):
    argv = [
        "--name",
        "noseg",
        "train.max_steps_per_epoch=1",
        "model.use_lesions=false",
        *tiny_overrides,
    ]
    assert _train(argv) == 0
    checkpoints = tmp_path / "runs" / "noseg" / "checkpoints"
    assert not (checkpoints / "seg_last.pt").exists()
    assert load_checkpoint(checkpoints / "last.pt")["stage"] == "joint"
    argv = [
        "--quiet",
        "--name",
        "noseg",
        "--out-dir",
        str(tmp_path / "runs"),
        "--figures",
        str(tmp_path / "fig"),
        "--samples",
        "1",
    ]
    assert run_cli(test_cli.main, argv) == 0
    metrics = json.loads((tmp_path / "runs" / "noseg" / "metrics.json").read_text())
    assert "segmentation" not in metrics and metrics["grading"]["n"] == 4
