"""train.joint_max_psnr_drop_db: the joint stage's best checkpoint may not lose more SR PSNR than that."""

import csv
import logging
import math

import pytest
import torch

from engine.checkpoint import load_checkpoint
from engine.config import ConfigError, load_config
from engine.evaluator import below_psnr_floor, is_new_best, selection_metric
from engine.trainer import Trainer


def _metrics(qwk: float, psnr: float) -> dict:
    return {
        "mode": "lr",
        "grading": {"qwk": qwk},
        "sr": {"sr": {"psnr": psnr}, "bicubic": {"psnr": 20.0}},
    }


def _new_best(metrics: dict, best: float, psnr_floor: float | None = None) -> bool:
    return is_new_best(selection_metric("joint", metrics), best, metrics, psnr_floor)


def test_an_epoch_under_the_psnr_floor_is_refused_however_well_it_grades():
    under, at, above = _metrics(0.9, 27.49), _metrics(0.6, 27.5), _metrics(0.7, 30.0)
    assert _new_best(under, best=0.5)  # no floor: today's rule, the best QWK
    assert not _new_best(under, best=0.5, psnr_floor=27.5)
    assert below_psnr_floor(under, 27.5) and not below_psnr_floor(at, 27.5)
    assert _new_best(at, best=0.5, psnr_floor=27.5)  # at the floor counts
    assert not _new_best(at, best=0.65, psnr_floor=27.5)  # above it, QWK still decides
    assert _new_best(above, best=0.65, psnr_floor=27.5)
    assert below_psnr_floor(_metrics(0.9, math.nan), 27.5)  # an unknown PSNR does not pass
    assert not _new_best(_metrics(math.nan, 30.0), best=-math.inf, psnr_floor=27.5)
    assert not below_psnr_floor(_metrics(0.9, 10.0), None)


def _rows(run):
    with (run / "log.csv").open(newline="") as file:
        return [row for row in csv.DictReader(file) if row["stage"] == "joint"]


def test_joint_best_is_the_incoming_weights_when_no_epoch_meets_the_floor_and_resume_keeps_it(
    tmp_path, tiny_overrides, caplog
):
    # A negative drop puts the floor 1000 dB above the incoming PSNR: no joint epoch can meet it.
    overrides = [
        *tiny_overrides,
        "run.threads=1",
        "train.stage=joint",
        "run.name=floor",
        "train.joint_max_psnr_drop_db=-1000",
    ]
    trainer = Trainer(load_config(None, overrides))
    incoming = {name: value.clone() for name, value in trainer.model.state_dict().items()}
    with caplog.at_level(logging.INFO, logger="engine.trainer"):
        run = trainer.fit()
    checkpoints = run / "checkpoints"
    best = load_checkpoint(checkpoints / "joint_best.pt")
    assert best["epoch"] == 0 and best["best_epoch"] == 0
    for name, value in incoming.items():
        assert torch.equal(best["model"][name], value), name
    assert load_checkpoint(checkpoints / "best.pt")["epoch"] == 0
    last = load_checkpoint(checkpoints / "last.pt")
    assert last["epoch"] == 1 and any(
        not torch.equal(last["model"][k], v) for k, v in incoming.items()
    )  # it trained
    rows = _rows(run)
    assert (
        [row["epoch"] for row in rows] == ["0", "1"]
        and rows[0]["is_best"] == "1"
        and not rows[1]["is_best"]
    )
    floor = float(rows[0]["val_psnr"]) + 1000
    assert float(rows[0]["val_psnr_floor"]) == pytest.approx(floor) and last[
        "psnr_floor"
    ] == pytest.approx(floor)
    assert "joint epoch 1 cannot be the best checkpoint: val_psnr" in caplog.text
    assert "its best checkpoint is the incoming weights (epoch 0)" in caplog.text
    for name, value in incoming.items():  # the stage ends on its best weights
        assert torch.equal(trainer.model.state_dict()[name], value), name

    caplog.clear()
    resumed = Trainer(load_config(None, [*overrides, "train.joint.epochs=2"]))
    with caplog.at_level(logging.INFO, logger="engine.trainer"):
        resumed.fit(resume=True)
    assert "incoming weights validate" not in caplog.text  # the floor came from the checkpoint
    assert (
        f"joint epoch 2 cannot be the best checkpoint: val_psnr {float(_rows(run)[2]['val_psnr']):.3f} dB is under the floor {floor:.3f} dB"
        in caplog.text
    )
    assert [row["epoch"] for row in _rows(run)] == ["0", "1", "2"]
    assert load_checkpoint(checkpoints / "joint_best.pt")["epoch"] == 0
    assert load_checkpoint(checkpoints / "last.pt")["psnr_floor"] == pytest.approx(floor)


def test_joint_psnr_drop_must_be_a_number():
    with pytest.raises(ConfigError, match="train.joint_max_psnr_drop_db must be"):
        load_config(None, ["train.joint_max_psnr_drop_db=.inf"])
