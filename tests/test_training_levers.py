"""Training levers of issue 14 (each off by default): label smoothing, the ordinal loss and threshold
decoding fitted on the training split, carried with the model to export and predict, and the
config checks of every lever. The EMA and flip test-time augmentation: tests/test_ema_tta.py."""

from __future__ import annotations

import pytest
import torch
from photo_fixtures import tiny_checkpoint
from torch.nn import functional as F
from torch.utils.data import Subset

from engine import export
from engine.builders import build_loader, build_model, stage_subset
from engine.checkpoint import CheckpointError, load_checkpoint, load_model_state, save_checkpoint
from engine.config import ConfigError, load_config
from engine.evaluator import evaluate
from engine.predictor import BatchGrader
from engine.testing import load_trained
from engine.trainer import Trainer
from evaluation.metrics import _quadratic_kappa, grading_metrics
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


@pytest.mark.parametrize("stage", ["cls", "joint"])
def test_threshold_images_fits_on_an_even_spread_of_the_training_images(tmp_path, stage):
    overrides = [*CLS_RUN, f"run.out_dir={tmp_path}", "model.grade_decoding=thresholds"]
    trainer = Trainer(load_config(None, [*overrides, "train.threshold_images=3"]))
    trainer._prepare_stage(stage)
    trainer._cache_frozen_outputs(stage)
    trainer.validate(stage)
    images = stage_subset(trainer.train_set, stage)
    keep = torch.linspace(0, len(images) - 1, 3).round().long().tolist()
    assert keep[0] == 0 and keep[-1] == len(images) - 1  # first, middle, last
    spread = Subset(images, keep)
    by_hand = evaluate(
        trainer.model,
        build_loader(spread, 8, False, 0),
        trainer.device,
        "hr" if stage == "cls" else "lr",
    )
    assert by_hand.grades.numel() == 3
    assert torch.equal(
        trainer.model.grade_thresholds, fit_thresholds(by_hand.probs, by_hand.grades)
    )
    with pytest.raises(ConfigError, match="train.threshold_images"):
        load_config(None, [*overrides, "train.threshold_images=-1"])


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


def test_a_stage_eval_every_overrides_the_global_one(tmp_path):
    """train.cls.eval_every=2 over train.eval_every=1: a 3-epoch stage validates after epochs 2
    and 3 (its last) only; unset, the stage follows train.eval_every."""
    config = load_config(
        None,
        [
            *CLS_RUN,
            f"run.out_dir={tmp_path}",
            "run.name=every2",
            "train.eval_every=1",
            "train.cls.eval_every=2",
            "train.cls.epochs=3",
        ],
    )
    Trainer(config).fit()
    lines = (config.run_dir / "log.csv").read_text().splitlines()
    column = lines[0].split(",").index("val_qwk")
    validated = [line.split(",")[column] != "" for line in lines[1:]]
    assert validated == [False, True, True]
    with pytest.raises(ConfigError, match="train.seg.eval_every must be >= 0"):
        load_config(None, [*TINY, "train.seg.eval_every=-2"])


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


def _isr_and_seg_losses(tmp_path, name, *overrides):
    """The segmentation loss of one isr step and of one seg step, from the same seeded weights."""
    from tests.test_methods import random_batch, tiny

    trainer = Trainer(load_config(None, tiny(tmp_path, f"run.name={name}", *overrides)))
    trainer.crop_generator = torch.Generator().manual_seed(0)
    batch = random_batch()
    seg_losses = []
    for stage in ("isr", "seg"):
        trainer._prepare_stage(stage)  # a step backpropagates; the weights stay as they were
        step = {"isr": Trainer.step_isr, "seg": Trainer.step_seg}[stage]
        seg_losses.append(step(trainer, trainer._batch(batch, stage))["seg"].detach())
    return seg_losses


def test_isr_seg_loss_sets_the_isr_stage_loss_alone(tmp_path):
    """loss.isr_seg_loss replaces loss.seg_loss in the isr stage only (where the seg loss trains
    the ISR net too); the seg stage keeps loss.seg_loss. null keeps loss.seg_loss everywhere."""
    focal = _isr_and_seg_losses(tmp_path, "focal", "loss.seg_loss=dice_focal")
    bce = _isr_and_seg_losses(tmp_path, "bce", "loss.seg_loss=dice_bce")
    mixed = _isr_and_seg_losses(
        tmp_path, "mixed", "loss.seg_loss=dice_bce", "loss.isr_seg_loss=dice_focal"
    )
    torch.testing.assert_close(mixed[0], focal[0])
    assert not torch.allclose(mixed[0], bce[0])
    torch.testing.assert_close(mixed[1], bce[1])
    assert not torch.allclose(mixed[1], focal[1])
    with pytest.raises(ConfigError, match=r"^loss.isr_seg_loss must be one of .*'dice'"):
        load_config(None, ["loss.isr_seg_loss=dice"])
