"""engine/inference.py: one inferer for test.py (the evaluator), predict.py and the panels; one
decoder (data/decode.py) for dataset images and photographs; one referable rule."""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import pytest
import torch
from conftest import TINY
from PIL import Image

from data.datasets.base import read_image
from data.photo import read_photo
from engine.builders import build_dataset, build_loader, build_model
from engine.config import load_config
from engine.evaluator import evaluate
from engine.inference import Inferer, release_calibration
from engine.predictor import BatchGrader
from evaluation.referable import is_referable, referable_probability


@pytest.fixture(scope="module")
def tiny():
    config = load_config(None, [*TINY, "model.grade_decoding=thresholds"])
    torch.manual_seed(0)
    model = build_model(config).eval()
    model.grade_thresholds.copy_(torch.tensor([0.6, 1.4, 2.2, 3.1]))
    batch = next(iter(build_loader(build_dataset(config, "val"), 4, False, 0)))
    hr8 = (batch["hr"] * 255).round().to(torch.uint8)  # an HR tensor a photograph can be
    return config, model, batch, hr8


def _one_batch(batch, hr8, inferer):
    """The dataset batch with its HR image replaced by ``hr8`` and its LR made from it."""
    hr = hr8.float() / 255
    return [{**batch, "hr": hr, "lr": inferer.degrade(hr)}]


@pytest.mark.parametrize("tta", [False, True])
def test_evaluator_and_predict_grader_give_the_same_probabilities(tiny, tta):
    config, model, batch, hr8 = tiny
    grader = BatchGrader(model, config, "lr", tta=tta, amp="off")
    predicted = grader(hr8, torch.ones(hr8.shape[0], 1, *hr8.shape[-2:], dtype=torch.bool))
    evaluated = evaluate(
        model, _one_batch(batch, hr8, grader.inferer), torch.device("cpu"), "lr", tta=tta
    )
    torch.testing.assert_close(evaluated.probs, predicted["probabilities"], rtol=0, atol=1e-4)
    assert torch.equal(evaluated.predicted, predicted["grades"])
    # The fp64 reference of the unflipped pass: the inferer adds nothing of its own.
    if not tta:
        reference = _float64_probabilities(config, model, grader.inferer.degrade(hr8.float() / 255))
        torch.testing.assert_close(
            predicted["probabilities"].double(), reference, rtol=0, atol=1e-4
        )


def _float64_probabilities(config, model, lr):
    """The unflipped pass in float64, by hand (no inferer)."""
    double = build_model(config).double().eval()
    double.load_state_dict(model.state_dict())
    with torch.no_grad():
        image = double.isr(lr.double())
        return torch.softmax(double.grade_image(image).grade_logits, dim=1)


def test_temperature_calibrates_probabilities_but_never_moves_a_grade(tiny):
    config, model, batch, hr8 = tiny
    plain = Inferer(model, config, "lr", amp=False)(hr8)
    hot = Inferer(model, config, "lr", amp=False, temperature=2.5)(hr8)
    torch.testing.assert_close(
        hot.probabilities, torch.softmax(plain.view_logits[0] / 2.5, dim=1), rtol=0, atol=1e-6
    )
    assert torch.equal(hot.grades, plain.grades)
    # Flatter probabilities: the top class loses mass.
    assert (hot.probabilities.max(1).values < plain.probabilities.max(1).values).all()
    torch.testing.assert_close(hot.p_referable, hot.probabilities[:, 2:].sum(1))
    with pytest.raises(ValueError, match="temperature"):
        Inferer(model, config, "lr", amp=False, temperature=0)


def test_cam_explains_the_decoded_grade_of_the_unflipped_view(tiny):
    config, model, batch, hr8 = tiny
    model.requires_grad_(False)
    result = Inferer(model, config, "hr", tta=True, amp=False)(hr8, cam=True)
    assert result.cam.shape == (4, 64, 64)
    assert float(result.cam.min()) >= 0 and float(result.cam.max()) <= 1 + 1e-6
    assert result.lr is None and result.view_logits.shape[0] == 4
    # HR mode grades the HR image itself.
    torch.testing.assert_close(result.image, hr8.float() / 255)
    model.requires_grad_(True)


def test_an_inferer_without_config_needs_the_lr_image(tiny):
    _, model, _, hr8 = tiny
    inferer = Inferer(model, None, "lr", autocast=nullcontext)
    with pytest.raises(ValueError, match="pass the LR image"):
        inferer(hr8)


def test_release_calibration_reads_the_release_metadata():
    assert release_calibration({}) == (1.0, None)
    state = {"release": {"calibration": {"temperature": 1.7}, "referable_threshold": 0.31}}
    assert release_calibration(state) == (1.7, 0.31)


def test_the_referable_rule_is_p_referable_at_the_models_threshold():
    probs = torch.tensor([[0.5, 0.05, 0.45, 0.0, 0.0], [0.1, 0.5, 0.2, 0.1, 0.1]])
    p = referable_probability(probs)
    torch.testing.assert_close(p, torch.tensor([0.45, 0.40]))
    assert is_referable(p).tolist() == [False, False]
    assert is_referable(p, 0.42).tolist() == [True, False]
    assert is_referable(referable_probability(probs.numpy()), 0.4).tolist() == [True, True]
    with pytest.raises(ValueError, match="referable DR"):
        referable_probability(torch.ones(2, 2))


def test_dataset_images_and_photographs_decode_alike(tmp_path):
    """One decoder: a 16-bit grey PNG and an EXIF-rotated JPEG read the same by the dataset
    loaders (data/datasets/base.read_image) and by predict.py (data/photo.read_photo)."""
    grey = (np.arange(40 * 30, dtype=np.uint16).reshape(30, 40) * 50).astype(np.uint16)
    Image.fromarray(grey).save(tmp_path / "grey16.png")
    rng = np.random.default_rng(0)
    colour = rng.integers(0, 255, (24, 48, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees: stored landscape, shown portrait
    Image.fromarray(colour).save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    for name in ("grey16.png", "rotated.jpg"):
        dataset_view = read_image(tmp_path / name)
        photo_view, size = read_photo(tmp_path / name)
        assert np.array_equal(dataset_view, photo_view)
        assert size == dataset_view.shape[:2]
    assert read_image(tmp_path / "rotated.jpg").shape == (48, 24, 3)  # upright
    assert read_image(tmp_path / "grey16.png")[0, 1, 0] == round(50 / 65535 * 255)


def test_the_report_calls_referral_by_the_models_threshold_and_flags_disagreement(tmp_path):
    from evaluation.report import PredictionReport

    report = PredictionReport(tmp_path / "report.html", "t", [], referable_threshold=0.3)
    probabilities = [0.3, 0.3, 0.2, 0.1, 0.1]
    for index, (grade, p) in enumerate([(1, 0.4), (2, 0.2), (0, 0.1)]):
        report.add(
            {
                "index": index,
                "path": f"photo{index}.jpg",
                "status": "ok",
                "reason": "",
                "grade": grade,
                "probabilities": probabilities,
                "p_referable": p,
                "flags": [],
            }
        )
    html = report.close().read_text()
    assert "referable DR (p_referable &gt;= 0.300)" in html or "p_referable >= 0.300" in html
    assert html.count("<b>refer</b>") == 1
    assert html.count("grade and referral disagree") == 2  # grade 1 referred; grade 2 not
