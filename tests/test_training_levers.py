"""Training levers of issue 14 (each off by default): label smoothing, the ordinal loss and threshold
decoding fitted on the training split, the EMA of the weights, and flip test-time augmentation."""

from __future__ import annotations

import json
import math
import os
import signal

import pytest
import torch
from photo_fixtures import tiny_checkpoint
from torch.nn import functional as F

import test as test_cli
import train as train_cli
from engine import export
from engine import trainer as trainer_module
from engine.builders import build_dataset, build_loader, build_model, stage_subset
from engine.checkpoint import CheckpointError, load_checkpoint, load_model_state, save_checkpoint
from engine.cli import run_cli
from engine.config import ConfigError, load_config
from engine.evaluator import evaluate
from engine.predictor import BatchGrader
from engine.reliability import PREEMPTED_EXIT_CODE
from engine.testing import load_trained, metrics_file
from engine.trainer import Trainer
from engine.tta import FLIPS
from evaluation.metrics import SegmentationMetrics, _quadratic_kappa, grading_metrics
from evaluation.thresholds import fit_thresholds
from models.losses import grading_loss, ordinal_loss
from models.ordinal import decode_grades, default_thresholds, expected_grade
from tests.conftest import TINY

CLS_RUN = [
    *TINY,
    "run.threads=1",
    "train.stage=cls",
    "train.cls.batch_size=2",
    "train.max_steps_per_epoch=3",
]


# ----------------------------------------------------------------------------- losses
def test_label_smoothing_is_torchs_weighted_cross_entropy_on_the_graded_rows():
    torch.manual_seed(0)
    logits, grades = torch.randn(6, 5), torch.tensor([0, 4, -1, 2, 2, -1])
    weights = torch.tensor([1.0, 2.0, 0.5, 1.5, 3.0])
    known = grades >= 0
    expected = F.cross_entropy(logits[known], grades[known], weight=weights, label_smoothing=0.2)
    torch.testing.assert_close(grading_loss(logits, grades, weights, label_smoothing=0.2), expected)
    assert not torch.allclose(
        grading_loss(logits, grades, weights), expected
    )  # the smoothing changes it
    torch.testing.assert_close(
        grading_loss(logits, grades, weights, 0.0),
        F.cross_entropy(logits[known], grades[known], weight=weights),
    )


def test_ordinal_loss_is_smooth_l1_of_the_expected_grade():
    probs = torch.tensor([[1.0, 0, 0, 0, 0], [0.5, 0, 0, 0, 0.5], [0, 0, 0, 0, 1.0], [0.2] * 5])
    logits = probs.clamp_min(1e-12).log()
    grades = torch.tensor([0, 0, 1, -1])
    # expected grades 0, 2, 4: errors 0, 2, 3 -> SmoothL1 0, 1.5, 2.5; the ungraded row is ignored
    torch.testing.assert_close(
        ordinal_loss(logits, grades), torch.tensor(4.0 / 3), atol=1e-5, rtol=0
    )
    assert float(ordinal_loss(logits, torch.full((4,), -1))) == 0.0


# ----------------------------------------------------------------------------- decoding
def test_threshold_decoding_cuts_the_expected_grade_where_argmax_takes_the_mode():
    probs = torch.tensor(
        [
            [0.0, 0.0, 1.0, 0.0, 0.0],  # sure: both say 2
            [0.5, 0.0, 0.0, 0.0, 0.5],  # bimodal: argmax 0 (first), expected grade 2
            [0.4, 0.35, 0.25, 0.0, 0.0],  # expected 0.85: argmax 0, rounded 1
            [0.5, 0.5, 0.0, 0.0, 0.0],  # expected 0.5 exactly: rounds half up
            [0.0, 0.0, 0.0, 0.45, 0.55],  # expected 3.55: both say 4
        ]
    )
    assert decode_grades(probs).tolist() == [2, 0, 0, 0, 4]
    assert decode_grades(probs, default_thresholds(5)).tolist() == [2, 2, 1, 1, 4]
    assert decode_grades(probs, torch.tensor([0.9, 1.5, 2.5, 3.6])).tolist() == [2, 2, 0, 0, 3]
    metrics = grading_metrics(torch.tensor([2, 2, 1, 1, 4]), probs, default_thresholds(5))
    assert metrics["accuracy"] == 1.0 and metrics["thresholds"] == [0.5, 1.5, 2.5, 3.5]
    assert grading_metrics(torch.tensor([2, 2, 1, 1, 4]), probs)["accuracy"] == 0.4


def test_the_model_decodes_by_its_config_and_its_thresholds_reach_the_cam_target():
    argmax = build_model(load_config(None, TINY))
    ordinal = build_model(load_config(None, [*TINY, "model.grade_decoding=thresholds"]))
    probs = torch.tensor([[0.5, 0.0, 0.0, 0.0, 0.5]])
    assert argmax.predict_grades(probs).tolist() == [0] and ordinal.predict_grades(
        probs
    ).tolist() == [2]
    ordinal.grade_thresholds.copy_(torch.tensor([0.5, 1.5, 2.1, 3.5]))
    assert ordinal.predict_grades(torch.tensor([[0.0, 0.0, 0.8, 0.2, 0.0]])).tolist() == [
        3
    ]  # expected 2.2 >= 2.1
    with pytest.raises(ConfigError, match="model.grade_decoding must be one of argmax, thresholds"):
        load_config(None, [*TINY, "model.grade_decoding=round"])


# ----------------------------------------------------------------------------- fitting
def _compressed_case():
    """Predictions that rank the grades right but squeeze the expected grade around 2."""
    torch.manual_seed(0)
    labels = torch.arange(5).repeat_interleave(12)
    centre = 1.6 + 0.2 * labels.double() + 0.03 * torch.randn(labels.shape, dtype=torch.float64)
    spread = (centre - 1) / 2  # the mass on grades 1 and 3 whose mean is `centre`
    probs = torch.stack(
        [
            torch.zeros_like(centre),
            1 - spread,
            torch.zeros_like(centre),
            spread,
            torch.zeros_like(centre),
        ],
        dim=1,
    )
    return probs.float(), labels


def test_fitted_thresholds_raise_the_training_qwk_and_keep_their_order():
    probs, labels = _compressed_case()
    default = _quadratic_kappa(
        labels.numpy(), decode_grades(probs, default_thresholds(5)).numpy(), 5
    )
    thresholds = fit_thresholds(probs, labels)
    fitted = _quadratic_kappa(labels.numpy(), decode_grades(probs, thresholds).numpy(), 5)
    assert thresholds.dtype == torch.float32 and bool((thresholds[1:] > thresholds[:-1]).all())
    assert default < 0.5 and fitted > 0.9
    assert torch.equal(fit_thresholds(probs, labels), thresholds)  # deterministic
    # Ungraded rows do not count; one graded class: nothing to fit.
    assert torch.equal(
        fit_thresholds(torch.cat([probs, probs[:3]]), torch.cat([labels, torch.full((3,), -1)])),
        thresholds,
    )
    assert torch.equal(
        fit_thresholds(probs[:5], torch.zeros(5, dtype=torch.long)), default_thresholds(5)
    )


class _Relabeled(torch.utils.data.Dataset):
    """A dataset with every known grade moved by one (mod 5): other labels, same images."""

    def __init__(self, dataset):
        self.dataset = dataset
        self.grades = [(g + 1) % 5 if g >= 0 else g for g in dataset.grades]

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        return {**self.dataset[index], "grade": torch.tensor(self.grades[index])}


@pytest.mark.parametrize("stage", ["cls", "joint"])
def test_thresholds_are_fitted_on_the_training_images_only(tmp_path, stage):
    trainer = Trainer(
        load_config(None, [*CLS_RUN, f"run.out_dir={tmp_path}", "model.grade_decoding=thresholds"])
    )
    trainer._prepare_stage(stage)
    trainer._cache_frozen_outputs(stage)
    before = trainer.validate(stage)
    thresholds = trainer.model.grade_thresholds.clone()
    mode = "hr" if stage == "cls" else "lr"
    train_loader = build_loader(stage_subset(trainer.train_set, stage), 8, False, 0)
    by_hand = evaluate(
        trainer.model,
        train_loader,
        trainer.device,
        mode,
        frozen=trainer.frozen_train if stage == "cls" else None,
    )
    assert torch.equal(thresholds, fit_thresholds(by_hand.probs, by_hand.grades))
    assert not torch.equal(thresholds, default_thresholds(5))  # the fit moved them
    trainer.model.grade_thresholds.copy_(default_thresholds(5))
    trainer.__dict__["val_set"] = _Relabeled(trainer.val_set)
    after = trainer.validate(stage)
    assert torch.equal(
        trainer.model.grade_thresholds, thresholds
    )  # other validation labels, same thresholds
    assert (
        after["grading"]["confusion"] != before["grading"]["confusion"]
    )  # ... which validation did see
    assert after["grading"]["thresholds"] == thresholds.tolist()


def test_eval_every_zero_never_validates_but_still_fits_thresholds(tmp_path):
    config = load_config(
        None,
        [
            *CLS_RUN,
            f"run.out_dir={tmp_path}",
            "run.name=novalid",
            "model.grade_decoding=thresholds",
            "train.eval_every=0",
            "train.cls.epochs=2",
        ],
    )
    Trainer(config).fit()
    checkpoints = config.run_dir / "checkpoints"
    assert not (checkpoints / "best.pt").exists() and (checkpoints / "last.pt").is_file()
    header = (config.run_dir / "log.csv").read_text().splitlines()[0]
    assert not any(column.startswith("val_") for column in header.split(","))
    state = load_checkpoint(checkpoints / "last.pt")["model"]
    assert not torch.equal(
        state["grade_thresholds"], default_thresholds(5)
    )  # fitted at the stage's end
    with pytest.raises(ConfigError, match="eval_every must be >= 0"):
        load_config(None, [*TINY, "train.eval_every=-1"])


# ----------------------------------------------------------------------------- carried with the model
def test_thresholds_survive_save_load_export_and_reach_predict(tmp_path):
    checkpoint = tiny_checkpoint(
        tmp_path / "runs" / "ord" / "checkpoints" / "best.pt", ["model.grade_decoding=thresholds"]
    )
    state = load_checkpoint(checkpoint)
    cuts = torch.tensor([0.3, 1.2345678, 2.5, 3.1])
    state["model"]["grade_thresholds"] = cuts
    save_checkpoint(state, checkpoint)
    model, config, _ = load_trained(checkpoint, "cpu")
    assert torch.equal(model.grade_thresholds, cuts) and model.grade_decoding == "thresholds"
    exported = export.export_release(checkpoint, tmp_path / "release" / "ord.pt")
    assert load_checkpoint(exported.path)["model"]["grade_thresholds"].dtype == torch.float32
    released, _, _ = load_trained(exported.path, "cpu")
    assert torch.equal(released.grade_thresholds, cuts)  # float32 exactly, not float16-rounded
    images = torch.randint(0, 256, (3, 3, 64, 64), dtype=torch.uint8)
    result = BatchGrader(released, config, "lr", amp="off")(
        images, torch.ones(3, 1, 64, 64, dtype=torch.bool)
    )
    assert torch.equal(result["grades"], decode_grades(result["probabilities"], cuts))


def test_a_checkpoint_from_before_the_thresholds_loads_with_the_defaults(tmp_path):
    model = build_model(load_config(None, [*TINY, "model.grade_decoding=thresholds"]))
    old = {key: value for key, value in model.state_dict().items() if key != "grade_thresholds"}
    model.grade_thresholds.fill_(7.0)
    fresh = build_model(load_config(None, [*TINY, "model.grade_decoding=thresholds"]))
    load_model_state(fresh, old, "old.pt")
    assert torch.equal(fresh.grade_thresholds, default_thresholds(5))
    del old["grader.head.3.bias"]
    with pytest.raises(
        CheckpointError,
        match=r"old.pt does not match the requested model; missing: grader.head.3.bias",
    ):
        load_model_state(fresh, old, "old.pt")


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


# ----------------------------------------------------------------------------- config
@pytest.mark.parametrize(
    "override, message",
    [
        ("loss.label_smoothing=1.0", "loss.label_smoothing must be in [0, 1)"),
        ("loss.ordinal_weight=-0.1", "loss.ordinal_weight must be >= 0"),
        ("train.ema_decay=1", "train.ema_decay must be in [0, 1)"),
        ("test.tta=maybe", "config key 'test.tta' expects"),
    ],
)
def test_bad_lever_values_name_their_key(override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace(")", r"\)")):
        load_config(None, [*TINY, override])


def test_every_lever_is_off_by_default():
    config = load_config("configs/paper.yaml")
    assert (
        config.loss.label_smoothing,
        config.loss.ordinal_weight,
        config.train.ema_decay,
        config.test.tta,
    ) == (0.0, 0.0, 0.0, False)
    assert config.model.grade_decoding == "argmax" and expected_grade(torch.eye(5)).tolist() == [
        0,
        1,
        2,
        3,
        4,
    ]
