"""Release checkpoints: export -> load gives the training checkpoint's predictions (fp16 tolerance),
the registry's SHA-256 check, finding checkpoints by name, and test.py on the user's copy of a dataset."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from photo_fixtures import textured_fundus, tiny_checkpoint
from PIL import Image
from test_dataset_idrid import make_idrid

import predict as predict_cli
import test as test_cli
from engine import export, release
from engine.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from engine.cli import run_cli
from engine.predictor import BatchGrader
from engine.testing import load_trained


@pytest.fixture
def run_dir(tmp_path):
    """A run folder as train.py and test.py leave it: config, log, checkpoints, metrics files."""
    run = tmp_path / "runs" / "tiny"
    tiny_checkpoint(run / "checkpoints" / "best.pt")
    (run / "config.yaml").write_text("method: deepmt_dr\n")
    (run / "log.csv").write_text(
        "stage,epoch,val_qwk,train_loss\njoint,1,0.61,0.3\njoint,2,0.55,0.2\n"
    )
    (run / "metrics_val_lr.json").write_text(
        json.dumps(
            {
                "split": "val",
                "input": "lr",
                "grading": {"n": 81, "qwk": 0.61, "accuracy": 0.5, "confusion": [[1]]},
                "segmentation": {"MA": {"aupr": 0.1}, "mean": {"aupr": 0.2}},
            }
        )
    )
    (run / "metrics_val_lr_isr_best.json").write_text(
        json.dumps({"split": "val", "grading": {"qwk": 0.1}})
    )
    return run


def _grade(checkpoint, images):
    model, config, _ = load_trained(checkpoint, "cpu")
    fov = torch.ones(images.shape[0], 1, *images.shape[-2:], dtype=torch.bool)
    return BatchGrader(model, config, "lr", amp="off")(images, fov)


def test_export_round_trip_gives_the_training_checkpoints_predictions(tmp_path, run_dir, capsys):
    out = tmp_path / "pretrained_model" / "tiny_release.pt"
    assert (
        run_cli(
            export.main,
            [str(run_dir), "--out", str(out), "--train-command", "python train.py --name tiny"],
        )
        == 0
    )
    printed = capsys.readouterr().out
    state = load_checkpoint(out)
    assert "optimizers" not in state and "rng" not in state
    assert all(
        t.dtype == torch.float16
        for key, t in state["model"].items()
        if t.is_floating_point() and key not in export.FLOAT32_KEYS
    )
    assert (
        state["model"]["grade_thresholds"].dtype == torch.float32
    )  # decision cut points keep float32
    assert out.stat().st_size < 0.6 * (run_dir / "checkpoints" / "best.pt").stat().st_size
    info = state["release"]
    assert info["name"] == "tiny_release" and info["input"] == {
        "lr_size": 16,
        "hr_size": 64,
        "scale": 4,
        "test_input": "lr",
        "test_tta": False,
        "num_classes": 5,
    }
    assert info["train_command"] == "python train.py --name tiny" and info[
        "export_command"
    ].startswith("python -m engine.export")
    assert (
        info["commit"] and info["data"]["dataset"] == "synthetic" and "CC0" in info["data"]["terms"]
    )
    assert set(info["metrics"]) == {"metrics_val_lr.json", "log.csv"}  # not the ISR stage's file
    assert info["metrics"]["metrics_val_lr.json"]["grading"]["qwk"] == 0.61
    assert info["metrics"]["log.csv"] == {"stage": "joint", "epoch": "1", "val_qwk": "0.61"}
    registry = json.loads((out.parent / "RELEASES.json").read_text())
    digest = registry["tiny_release"]["sha256"]
    assert (
        registry["tiny_release"]["file"] == "tiny_release.pt"
        and registry["tiny_release"]["lr_size"] == 16
    )
    assert (
        f"SHA-256 {digest}" in printed
        and "| `tiny_release.pt` | synthetic | LR 16 -> HR 64 (x4) |" in printed
        and digest in printed.splitlines()[-1]
    )
    # Loaded back as float32, the release grades like the training checkpoint.
    model, _, _ = load_trained(out, "cpu")
    assert all(p.dtype == torch.float32 for p in model.parameters())
    images = (
        torch.from_numpy(textured_fundus(64, 64, seed=5)).permute(2, 0, 1)[None].repeat(2, 1, 1, 1)
    )
    images[1] = images[1].flip(-1)
    original, released = _grade(run_dir / "checkpoints" / "best.pt", images), _grade(out, images)
    torch.testing.assert_close(
        released["probabilities"], original["probabilities"], atol=2e-3, rtol=0
    )
    torch.testing.assert_close(released["image"], original["image"], atol=2e-3, rtol=0)
    torch.testing.assert_close(released["lesions"], original["lesions"], atol=5e-3, rtol=0)
    assert not torch.equal(
        released["probabilities"], original["probabilities"]
    )  # really fp16 weights


def test_release_hash_check(tmp_path, run_dir, capsys):
    folder = tmp_path / "pretrained_model"
    out = export.export_release(run_dir, folder / "tiny_release.pt").path
    assert release.resolve_checkpoint("tiny_release", folder) == out
    assert release.resolve_checkpoint(out) == out
    # Another valid checkpoint under the released name: its own checksum is fine, the release hash is not.
    save_checkpoint({**load_checkpoint(out), "epoch": 99}, out)
    expected = json.loads((folder / "RELEASES.json").read_text())["tiny_release"]["sha256"]
    actual = release.file_sha256(out)
    with pytest.raises(CheckpointError) as caught:
        release.resolve_checkpoint("tiny_release", folder)
    message = str(caught.value)
    assert str(out) in message and expected in message and actual in message and "\n" not in message
    code = run_cli(
        predict_cli.main,
        [str(tmp_path), "--checkpoint", str(out), "--out", str(tmp_path / "o"), "--quiet"],
    )
    err = capsys.readouterr().err.strip()
    assert (
        code == 2
        and err.startswith("error: ")
        and expected in err
        and actual in err
        and "\n" not in err
    )
    assert not (tmp_path / "o").exists()


def test_checkpoints_by_path_run_folder_and_name(tmp_path, run_dir):
    assert release.resolve_checkpoint(run_dir) == run_dir / "checkpoints" / "best.pt"
    with pytest.raises(
        CheckpointError, match="unknown checkpoint 'nope'.*releases: .*deepmt_dr_idrid_small"
    ):
        release.resolve_checkpoint("nope", tmp_path)
    with pytest.raises(
        CheckpointError,
        match=r"deepmt_dr_idrid_small.safetensors is absent: make it with `python train.py --dataset idrid",
    ):
        release.resolve_checkpoint("deepmt_dr_idrid_small", tmp_path)
    with pytest.raises(CheckpointError, match="without checkpoints/best.pt"):
        release.resolve_checkpoint(tmp_path)
    (tmp_path / "RELEASES.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="is not a release registry"):
        release.resolve_checkpoint("x", tmp_path)


def test_half_weights_keep_values_float16_cannot_hold():
    weights, kept = export.half_weights(
        {"a": torch.tensor([1.0, 70000.0]), "b": torch.ones(2), "n": torch.tensor(3)}
    )
    assert (
        kept == ["a"]
        and weights["a"].dtype == torch.float32
        and weights["b"].dtype == torch.float16
        and weights["n"].dtype == torch.int64
    )


def _idrid_checkpoint(tmp_path, root):
    cache = tmp_path / "cache"
    overrides = [
        "data.dataset=idrid",
        f"data.root={root}",
        f"data.cache_dir={cache}",
        f"data.split_file={tmp_path / 'split.csv'}",
        "data.val_fraction=0.4",
        "data.prepare_workers=1",
        "run.name=idrid_tiny",
    ]
    return tiny_checkpoint(tmp_path / "idrid.pt", overrides)


def test_test_py_on_the_users_copy_of_the_dataset(tmp_path, capsys):
    checkpoint = _idrid_checkpoint(tmp_path, "/nowhere/IDRiD")
    base = [
        "--quiet",
        "--checkpoint",
        str(checkpoint),
        "--figures",
        str(tmp_path / "fig"),
        "--samples",
        "1",
    ]
    assert run_cli(test_cli.main, base) == 2
    err = capsys.readouterr().err.strip()
    assert (
        "/nowhere/IDRiD, the idrid folder recorded in" in err
        and "pass --data-root PATH" in err
        and "\n" not in err
    )
    assert run_cli(test_cli.main, [*base, "--data-root", str(tmp_path / "missing")]) == 2
    assert f"--data-root {tmp_path / 'missing'} does not exist here" in capsys.readouterr().err
    root = make_idrid(tmp_path / "my copy of IDRiD")
    assert run_cli(test_cli.main, [*base, "--dataset", "idrid", "--data-root", str(root)]) == 0
    metrics = json.loads((tmp_path / "runs" / "idrid_tiny" / "metrics_idrid.json").read_text())
    assert metrics["dataset"] == "idrid" and metrics["grading"]["n"] == 2
    report = tmp_path / "fig" / "idrid_tiny" / "idrid" / "report.html"
    assert (
        metrics["report"] == str(report)
        and report.is_file()
        and f"report: {report}" in capsys.readouterr().out
    )
    with (tmp_path / "runs" / "idrid_tiny" / "predictions_test_idrid.csv").open() as file:
        assert len(list(csv.DictReader(file))) == 3  # 2 graded + 1 segmentation image


def test_released_checkpoint_evaluates_under_its_own_name(tmp_path, run_dir, monkeypatch):
    """A release writes runs/<release> in the user's working folder, whatever run.out_dir and
    run.threads the training machine had (they are in the release's config)."""
    folder = tmp_path / "pretrained_model"
    trained_config = load_checkpoint(run_dir / "checkpoints" / "best.pt")["config"]
    assert trained_config["run"]["out_dir"] != "runs"  # the training machine's folder
    export.export_release(run_dir, folder / "tiny_release.pt")
    _, config, _ = load_trained(folder / "tiny_release.pt")
    assert (config.run.out_dir, config.run.threads, config.run.name) == ("runs", 0, "tiny_release")
    monkeypatch.setattr(release, "RELEASE_DIR", folder)
    monkeypatch.chdir(tmp_path / "pretrained_model")
    argv = [
        "--quiet",
        "--checkpoint",
        "tiny_release",
        "--figures",
        str(tmp_path / "fig"),
        "--samples",
        "0",
        "--split",
        "val",
    ]
    assert run_cli(test_cli.main, argv) == 0
    (written,) = tmp_path.rglob("metrics_val_lr_tiny_release.json")
    assert written.parent == tmp_path / "pretrained_model" / "runs" / "tiny_release"


def test_export_tta_makes_flips_the_releases_default_in_test_py(tmp_path, run_dir, monkeypatch):
    (run_dir / "metrics_val_lr_tta.json").write_text(
        json.dumps({"split": "val", "input": "lr", "tta": True, "grading": {"qwk": 0.63}})
    )
    out = tmp_path / "pretrained_model" / "tiny_tta.pt"
    assert run_cli(export.main, [str(run_dir), "--out", str(out), "--tta"]) == 0
    state = load_checkpoint(out)
    assert state["config"]["test"]["tta"] is True and state["release"]["input"]["test_tta"] is True
    assert (
        state["release"]["metrics"]["metrics_val_lr_tta.json"]["grading"]["qwk"] == 0.63
    )  # the TTA evaluation is recorded too
    # test.py: the release's own setting is flips; --no-tta is the other evaluation, under its own name.
    monkeypatch.chdir(tmp_path)  # a release writes runs/<release> in the working folder
    argv = [
        "--quiet",
        "--checkpoint",
        str(out),
        "--figures",
        str(tmp_path / "fig"),
        "--samples",
        "0",
        "--split",
        "val",
    ]
    assert run_cli(test_cli.main, argv) == 0 and run_cli(test_cli.main, [*argv, "--no-tta"]) == 0
    written = {
        path.name: json.loads(path.read_text())["tta"]
        for path in tmp_path.rglob("tiny_tta/metrics*.json")
    }
    assert written == {
        "metrics_val_lr_tiny_tta.json": True,
        "metrics_val_lr_no_tta_tiny_tta.json": False,
    }
    # predict.py stays fast: flips only when asked (--tta), whatever the release's test.tta.
    photo = tmp_path / "photo.png"
    Image.fromarray(textured_fundus(120, 160, seed=3)).save(photo)
    for flag in ("", "--tta"):
        folder = tmp_path / f"pred{flag}"
        assert (
            run_cli(
                predict_cli.main,
                [
                    str(photo),
                    "--checkpoint",
                    str(out),
                    "--out",
                    str(folder),
                    "--quiet",
                    "--workers",
                    "0",
                    "--amp",
                    "off",
                    "--no-panels",
                    *([flag] if flag else []),
                ],
            )
            == 0
        )
        assert ("4 flips" in (folder / "report.html").read_text()) == bool(flag)


def test_photo_fixture_is_gradable():
    Image.fromarray(textured_fundus())  # the fixture the release tests grade is a valid RGB image


_COMMITTED = release.read_registry(release.RELEASE_DIR)


@pytest.mark.parametrize("name", sorted(_COMMITTED))
def test_every_committed_release_opens_by_name_as_its_entry_and_recipe_say(name):
    """Each release in pretrained_model/RELEASES.json loads by name (both files hash-checked) into
    the sizes its entry states, is one whose making the repository knows (RELEASE_RECIPE, whose
    preset builds the same networks), and carries a calibration fitted on validation."""
    from engine.config import load_config

    entry = _COMMITTED[name]
    train_command = release.RELEASE_RECIPE[name][0].split()
    preset = train_command[train_command.index("--config") + 1]
    model, config, _ = load_trained(release.resolve_checkpoint(name), device="cpu")
    assert (config.data.hr_size // config.data.scale, config.data.hr_size) == (
        entry["lr_size"],
        entry["hr_size"],
    )
    assert config.model == load_config(preset, ["data.root=somewhere"]).model
    facts = json.loads((release.RELEASE_DIR / entry["sidecar"]).read_text())["release"]
    calibration = facts["calibration"]
    assert calibration["temperature"] > 0 and 0 < facts["referable_threshold"] < 1
    assert calibration["ece_after"] <= calibration["ece_before"]
    assert entry["bytes"] <= 30e6
