"""evaluation/calibration.py and the export's calibration: temperature scaling fitted on validation
predictions, the referral threshold fixed at release time, both read back by the inferer."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from photo_fixtures import tiny_checkpoint

from data.records import DataError
from engine import export
from engine.checkpoint import load_checkpoint
from engine.cli import run_cli
from engine.inference import release_calibration as stored_calibration
from evaluation.calibration import (
    fit_temperature,
    read_predictions,
    release_calibration,
    scaled_probabilities,
)


def _sampled(n: int, temperature: float, seed: int = 0):
    """Logits and grades drawn from softmax(logits / temperature): ``temperature`` is the truth."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 3, (n, 5))
    probs = scaled_probabilities(logits, temperature)
    grades = (probs.cumsum(1) > rng.random((n, 1))).argmax(1)
    return logits, grades


@pytest.mark.parametrize("truth", [0.5, 1.0, 2.5])
def test_fit_recovers_a_planted_temperature(truth):
    logits, grades = _sampled(20_000, truth)
    assert fit_temperature(logits, grades) == pytest.approx(truth, rel=0.06)


def test_scaling_keeps_the_ranking_and_is_the_identity_at_one():
    logits, _ = _sampled(50, 1.0)
    softmax = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    np.testing.assert_allclose(scaled_probabilities(logits, 1.0), softmax, rtol=1e-12)
    assert (scaled_probabilities(logits, 3.0).argmax(1) == logits.argmax(1)).all()


def test_release_calibration_lowers_ece_of_overconfident_predictions():
    logits, grades = _sampled(
        4_000, 2.0
    )  # the model's probabilities, softmax(logits), overconfident
    probs = scaled_probabilities(logits, 1.0)
    fitted = release_calibration(grades, probs, specificity=0.9, source="val.csv")
    calibration = fitted["calibration"]
    assert calibration["temperature"] == pytest.approx(2.0, rel=0.1)
    assert calibration["ece_after"] < 0.5 * calibration["ece_before"]
    point = fitted["referable_operating_point"]
    assert point["specificity"] >= 0.9 and 0 < point["sensitivity"] < 1
    calibrated = scaled_probabilities(np.log(probs), calibration["temperature"])[:, 2:].sum(1)
    negatives = grades < 2
    assert (calibrated[negatives] < fitted["referable_threshold"]).mean() >= 0.9


def _write_predictions(path, grades, probs):
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["id", "grade", "predicted", *[f"p{c}" for c in range(probs.shape[1])]])
        for i, (grade, row) in enumerate(zip(grades, probs)):
            writer.writerow([f"img{i}", grade, int(row.argmax()), *[f"{p:.5f}" for p in row]])


def test_read_predictions_drops_unknown_grades_and_names_a_bad_file(tmp_path):
    logits, grades = _sampled(20, 1.0)
    grades[3] = -1
    _write_predictions(tmp_path / "p.csv", grades, scaled_probabilities(logits, 1.0))
    read_grades, probs = read_predictions(tmp_path / "p.csv")
    assert read_grades.shape == (19,) and probs.shape == (19, 5)
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match="bad.csv"):
        read_predictions(tmp_path / "bad.csv")


def test_export_stores_the_temperature_and_threshold_the_inferer_reads(tmp_path, capsys):
    run = tmp_path / "runs" / "tiny"
    tiny_checkpoint(run / "checkpoints" / "best.pt")
    logits, grades = _sampled(400, 2.0)
    _write_predictions(run / "predictions_val.csv", grades, scaled_probabilities(logits, 1.0))
    out = tmp_path / "pretrained_model" / "tiny.pt"
    assert run_cli(export.main, [str(run), "--out", str(out)]) == 0
    assert "temperature" in capsys.readouterr().out
    temperature, threshold = stored_calibration(load_checkpoint(out))
    assert temperature == pytest.approx(2.0, rel=0.2)
    assert 0 < threshold < 1
    # Without validation predictions the release is not calibrated, and says so.
    (run / "predictions_val.csv").unlink()
    plain = tmp_path / "pretrained_model" / "plain.pt"
    assert run_cli(export.main, [str(run), "--out", str(plain)]) == 0
    assert "not calibrated" in capsys.readouterr().out
    assert stored_calibration(load_checkpoint(plain)) == (1.0, None)
