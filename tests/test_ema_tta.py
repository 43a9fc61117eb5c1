"""Training levers of issue 14, continued (tests/test_training_levers.py has the losses, threshold
decoding and its fitting, and the config checks): the EMA of the weights (validated, saved, resumed
bitwise, never read on the host) and flip test-time augmentation (the mean of the flipped passes,
test.py --tta and the names of its results)."""

from __future__ import annotations

import json
import math
import os
import signal

import pytest
import torch
from photo_fixtures import tiny_checkpoint

import test as test_cli
import train as train_cli
from engine import trainer as trainer_module
from engine.builders import build_dataset, build_loader, build_model
from engine.checkpoint import load_checkpoint
from engine.cli import run_cli
from engine.config import load_config
from engine.evaluator import evaluate
from engine.reliability import PREEMPTED_EXIT_CODE
from engine.testing import metrics_file
from engine.trainer import Trainer
from engine.tta import FLIPS
from evaluation.metrics import SegmentationMetrics
from tests.conftest import TINY

CLS_RUN = [
    *TINY,
    "run.threads=1",
    "train.stage=cls",
    "train.cls.batch_size=2",
    "train.max_steps_per_epoch=3",
]


# ----------------------------------------------------------------------------- EMA
TRAINED = ("grader.", "cam_fusion.")


def _trained_tensors(model) -> dict[str, torch.Tensor]:
    return {
        k: v.detach().double().clone()
        for k, v in model.state_dict().items()
        if k.startswith(TRAINED) and v.is_floating_point()
    }


def test_ema_weights_are_validated_and_saved_and_skipped_steps_leave_them(tmp_path, monkeypatch):
    decay = 0.6
    trainer = Trainer(
        load_config(
            None,
            [*CLS_RUN, f"run.out_dir={tmp_path}", f"train.ema_decay={decay}", "train.cls.epochs=1"],
        )
    )
    reference = _trained_tensors(trainer.model)  # the stage's incoming weights
    apply_gradients, step_cls, steps = trainer._apply_gradients, trainer.step_cls, []

    def poisoned_second_step(batch):
        losses = step_cls(batch)
        if len(steps) == 1:
            next(trainer.model.grader.parameters()).grad.fill_(math.nan)
        return losses

    def recorded(*args):
        found_inf = apply_gradients(*args)
        steps.append((float(found_inf), _trained_tensors(trainer.model)))
        return found_inf

    monkeypatch.setattr(trainer, "step_cls", poisoned_second_step)
    monkeypatch.setattr(trainer, "_apply_gradients", recorded)
    validated = []
    evaluate_ = trainer_module.evaluate
    monkeypatch.setattr(
        trainer_module,
        "evaluate",
        lambda model, *a, **k: (
            validated.append(_trained_tensors(model)) or evaluate_(model, *a, **k)
        ),
    )
    trainer.fit()
    assert [skipped for skipped, _ in steps] == [0.0, 1.0, 0.0]
    for skipped, raw in steps:  # float64 by hand; a skipped step moves nothing
        if not skipped:
            reference = {k: decay * reference[k] + (1 - decay) * raw[k] for k in reference}
    raw = steps[-1][1]
    last = load_checkpoint(tmp_path / "demo" / "checkpoints" / "last.pt")
    best = load_checkpoint(tmp_path / "demo" / "checkpoints" / "best.pt")
    assert "raw_model" in last and "raw_model" not in best
    for key, expected in reference.items():
        scale = float(expected.abs().max()) + 1e-12
        torch.testing.assert_close(last["model"][key].double(), expected, rtol=0, atol=1e-6 * scale)
        torch.testing.assert_close(
            validated[0][key], expected, rtol=0, atol=1e-6 * scale
        )  # what validation scored
        assert torch.equal(best["model"][key], last["model"][key])
        assert torch.equal(last["raw_model"][key].double(), raw[key])
    assert any(
        not torch.equal(last["model"][k].double(), raw[k]) for k in raw if k.endswith("weight")
    )  # averaged != raw


def test_ema_update_reads_nothing_on_the_host(tmp_path, monkeypatch):
    from engine.ema import WeightEMA

    model = build_model(load_config(None, TINY))
    ema = WeightEMA(model, ("grader",), 0.9)
    with monkeypatch.context() as patch:
        for name in (
            "item",
            "tolist",
            "numpy",
            "cpu",
            "__bool__",
            "__int__",
            "__float__",
            "__index__",
        ):
            patch.setattr(
                torch.Tensor,
                name,
                lambda *a, name=name, **k: pytest.fail(f"host read: Tensor.{name}()"),
            )
        ema.update(torch.zeros(()))
        ema.update(torch.ones(()))


def test_resume_continues_the_ema_bitwise(tmp_path, monkeypatch):
    run = [*CLS_RUN, "train.cls.epochs=2", "train.ema_decay=0.7", f"run.out_dir={tmp_path}"]
    assert run_cli(train_cli.main, ["--quiet", "--name", "straight", *run]) == 0
    calls, step_cls = [], Trainer.step_cls

    def preempted_at_the_fourth_step(self, batch):
        calls.append(1)
        if len(calls) == 5:  # the second epoch's second step
            os.kill(os.getpid(), signal.SIGTERM)
        return step_cls(self, batch)

    monkeypatch.setattr(Trainer, "step_cls", preempted_at_the_fourth_step)
    assert run_cli(train_cli.main, ["--quiet", "--name", "resumed", *run]) == PREEMPTED_EXIT_CODE
    recovery = load_checkpoint(tmp_path / "resumed" / "checkpoints" / "recovery.pt")
    assert recovery["position"]["batches"] == 2 and "raw_model" in recovery
    monkeypatch.undo()
    assert run_cli(train_cli.main, ["--quiet", "--resume", "--name", "resumed", *run]) == 0
    straight = load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.pt")
    resumed = load_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.pt")
    for part in ("model", "raw_model"):
        for key, value in straight[part].items():
            assert torch.equal(value, resumed[part][key]), (part, key)
    assert not torch.equal(
        straight["model"]["grader.head.3.weight"], straight["raw_model"]["grader.head.3.weight"]
    )


# ----------------------------------------------------------------------------- TTA
@pytest.mark.parametrize("mode", ["lr", "hr"])
def test_tta_probabilities_are_the_mean_of_the_flipped_passes(mode):
    config = load_config(None, TINY)
    torch.manual_seed(0)
    model = build_model(config).eval()
    loader = build_loader(build_dataset(config, "val"), 4, False, 0)
    plain = evaluate(model, loader, torch.device("cpu"), mode)
    flipped = evaluate(model, loader, torch.device("cpu"), mode, tta=True)
    batch = next(iter(loader))
    source = batch["lr"] if mode == "lr" else batch["hr"]
    views = []
    with torch.no_grad():
        for dims in FLIPS:
            view = source.flip(dims) if dims else source
            image = model.isr(view) if mode == "lr" else view
            views.append(torch.softmax(model.grade_image(image).grade_logits, dim=1))
    torch.testing.assert_close(plain.probs, views[0], rtol=0, atol=1e-6)  # off: the unflipped pass
    torch.testing.assert_close(flipped.probs, sum(views) / 4, rtol=0, atol=1e-6)
    assert not torch.allclose(flipped.probs, plain.probs, atol=1e-4)
    # SR metrics are the unflipped pass's; segmentation scores the lesion maps averaged over the
    # views, each flipped back (engine/inference.py's policy, as predict.py's).
    assert json.dumps(flipped.metrics.get("sr"), sort_keys=True) == json.dumps(
        plain.metrics.get("sr"), sort_keys=True
    )
    by_hand = SegmentationMetrics(num_lesions=4, device=torch.device("cpu"))
    with torch.no_grad():
        for batch in loader:
            source = batch["lr"] if mode == "lr" else batch["hr"]
            maps = []
            for dims in FLIPS:
                view = source.flip(dims) if dims else source
                image = model.isr(view) if mode == "lr" else view
                lesions = torch.sigmoid(model.segment(image))
                maps.append(lesions.flip(dims) if dims else lesions)
            by_hand.update(sum(maps) / 4, batch["masks"], batch["mask_valid"])
    expected = by_hand.compute()
    for lesion, values in flipped.metrics["segmentation"].items():
        for key in ("aupr", "auc"):
            assert values[key] == pytest.approx(expected[lesion][key], rel=1e-4, nan_ok=True)


def test_test_py_tta_flag_is_recorded_next_to_the_plain_evaluation(tmp_path):
    run = tmp_path / "runs" / "tiny"
    checkpoint = tiny_checkpoint(run / "checkpoints" / "best.pt")
    argv = [
        "--quiet",
        "--checkpoint",
        str(checkpoint),
        "--split",
        "val",
        "--samples",
        "0",
        "--figures",
        str(tmp_path / "fig"),
    ]
    assert run_cli(test_cli.main, argv) == 0
    assert run_cli(test_cli.main, [*argv, "--tta"]) == 0
    plain, flipped = (
        json.loads((run / "metrics_val_lr.json").read_text()),
        json.loads((run / "metrics_val_lr_tta.json").read_text()),
    )
    assert (plain["tta"], flipped["tta"]) == (
        False,
        True,
    )  # --tta does not overwrite the plain evaluation
    assert (run / "predictions_val.csv").read_text() != (
        run / "predictions_val_tta.csv"
    ).read_text()
    assert (
        test_cli.get_args_parser().parse_args([]).tta is None
    )  # without --tta / --no-tta: the run's test.tta


def test_metrics_file_names_tta_only_when_it_differs_from_the_run(tmp_path):
    assert (
        metrics_file(tmp_path, "test", "lr", "lr", "best.pt", tta=True, test_tta=True).name
        == "metrics.json"
    )
    assert (
        metrics_file(tmp_path, "test", "lr", "lr", "best.pt", tta=True).name
        == "metrics_test_lr_tta.json"
    )
    assert (
        metrics_file(tmp_path, "val", "hr", "lr", "cls_best.pt", tta=False, test_tta=True).name
        == "metrics_val_hr_no_tta_cls_best.json"
    )


def test_test_py_writes_into_the_run_folder_that_holds_the_checkpoint(tmp_path, monkeypatch):
    """A copied run (another machine, a table's --reuse-from) gets its results, not the folder recorded at training."""
    copy = tmp_path / "elsewhere" / "copied_run"
    checkpoint = tiny_checkpoint(copy / "checkpoints" / "best.pt")
    monkeypatch.chdir(tmp_path)
    argv = [
        "--quiet",
        "--checkpoint",
        str(checkpoint),
        "--split",
        "val",
        "--samples",
        "0",
        "--figures",
        str(tmp_path / "fig"),
    ]
    assert run_cli(test_cli.main, argv) == 0
    assert sorted(path.name for path in tmp_path.rglob("metrics*.json")) == ["metrics_val_lr.json"]
    assert (copy / "metrics_val_lr.json").is_file() and (copy / "predictions_val.csv").is_file()
