"""Two models' predictions compared on the same photographs (evaluation/paired_compare.py and
scripts/compare_predictions.py): alignment, the held-out subset, and the paired numbers."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from data.records import DataError
from data.splits import SplitSettings, write_split_file
from engine.cli import run_cli
from evaluation.intervals import summary_metrics
from evaluation.paired_compare import align, compare, held_out
from evaluation.prediction_csv import GradedRows, read_graded
from scripts.compare_predictions import main as compare_main


def write_test_csv(path: Path, ids, grades, probs) -> Path:
    """A test.py-style predictions CSV (argmax grades)."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "grade", "predicted", *[f"p{k}" for k in range(probs.shape[1])]])
        for key, grade, row in zip(ids, grades, probs):
            writer.writerow([key, grade, int(np.argmax(row)), *[f"{p:.6f}" for p in row]])
    return path


def random_model(rng, grades, skill: float) -> np.ndarray:
    """Probabilities that put ``skill`` extra mass on the true grade."""
    probs = rng.dirichlet(np.ones(5), size=len(grades))
    probs[np.arange(len(grades)), grades] += skill
    return probs / probs.sum(1, keepdims=True)


@pytest.fixture
def two_models(tmp_path):
    rng = np.random.default_rng(0)
    ids = [f"img{i:03d}" for i in range(60)]
    grades = np.arange(60) % 5
    good = write_test_csv(tmp_path / "good.csv", ids, grades, random_model(rng, grades, 1.5))
    # B has a different order and ten images A lacks; its first image has no reference grade.
    ids_b = ids[::-1] + [f"extra{i}" for i in range(10)]
    grades_b = np.concatenate([grades[::-1], np.zeros(10, dtype=int)])
    grades_b[0] = -1
    probs_b = random_model(rng, grades_b.clip(0), 0.2)
    weak = write_test_csv(tmp_path / "weak.csv", ids_b, grades_b, probs_b)
    return good, weak, ids, grades


def test_align_keeps_common_graded_images_in_a_order(two_models):
    good, weak, ids, grades = two_models
    aligned = align(read_graded(good), read_graded(weak))
    assert aligned.keys == ids[:-1]  # the last of A is B's first row, whose reference is unknown
    assert np.array_equal(aligned.grades, grades[:-1])
    assert aligned.b.keys == aligned.keys
    only = align(read_graded(good), read_graded(weak), only={"img001", "img007", "nope"})
    assert only.keys == ["img001", "img007"]


def test_align_refuses_disagreeing_references_and_empty_overlap(two_models, tmp_path):
    good, _, ids, grades = two_models
    other = grades.copy()
    other[3] = (other[3] + 1) % 5
    changed = write_test_csv(tmp_path / "changed.csv", ids, other, np.full((60, 5), 0.2))
    with pytest.raises(DataError, match="img003: reference grade"):
        align(read_graded(good), read_graded(changed))
    disjoint = write_test_csv(tmp_path / "d.csv", ["zz"], np.array([1]), np.full((1, 5), 0.2))
    with pytest.raises(DataError, match="no graded image in common"):
        align(read_graded(good), read_graded(disjoint))


def test_paired_difference_is_the_point_difference_and_zero_for_a_model_against_itself(
    two_models,
):
    good, weak, _, _ = two_models
    aligned = align(read_graded(good), read_graded(weak))
    result = compare(aligned, n_resamples=300)
    a = summary_metrics(aligned.grades, aligned.a.predicted, aligned.a.probs, 0.5)
    b = summary_metrics(aligned.grades, aligned.b.predicted, aligned.b.probs, 0.5)
    assert result["difference"]["qwk"]["difference"] == pytest.approx(a["qwk"] - b["qwk"])
    assert result["a"]["qwk"]["value"] == pytest.approx(a["qwk"])
    assert a["qwk"] > b["qwk"]  # the planted skill shows
    low, high = result["difference"]["qwk"]["low"], result["difference"]["qwk"]["high"]
    assert low <= a["qwk"] - b["qwk"] <= high
    same = compare(align(read_graded(good), read_graded(good)), n_resamples=300)
    assert same["difference"]["qwk"]["difference"] == 0
    assert same["difference"]["qwk"]["p_value"] == 1


def test_groups_are_resampled_whole():
    """Four copies of one photograph in a group of their own: the group count says so."""
    keys = ["a1", "a2", "a3", "a4", "b", "c", "d", "e"]
    grades = np.array([0, 0, 0, 0, 1, 2, 3, 4])
    probs = np.eye(5)[grades] * 0.8 + 0.04
    rows = GradedRows(keys, grades, grades.copy(), probs)
    aligned = align(rows, rows)
    groups = {"a1": "a", "a2": "a", "a3": "a", "a4": "a"}
    assert compare(aligned, groups, n_resamples=200)["groups"] == 5
    assert compare(aligned, None, n_resamples=200)["groups"] == 8


def test_held_out_drops_every_copy_of_a_photograph_trained_on():
    groups = {"x1": "x", "x2": "x"}  # x2 is a copy of x1
    old = {"x1": "train", "y": "val", "z": "train"}
    new = {"x2": "val", "y": "val", "z": "val", "w": "excluded"}
    assert held_out(["x2", "y", "z", "w"], [old, new], groups) == {"y", "w"}
    assert held_out(["x2", "y"], [new], groups) == {"x2", "y"}


def test_cli_prints_the_table_writes_json_and_applies_held_out(two_models, tmp_path, capsys):
    good, weak, ids, _ = two_models
    split = tmp_path / "split.csv"
    roles = {key: ("train" if i < 30 else "val") for i, key in enumerate(ids)}
    write_split_file(split, "idrid", roles, SplitSettings())
    out = tmp_path / "cmp.json"
    arguments = [str(good), str(weak), "--names", "big,small", "--held-out", str(split)]
    arguments += ["--json", str(out), "--resamples", "200", "--groups", str(tmp_path / "no.csv")]
    assert run_cli(compare_main, arguments) == 0
    shown = capsys.readouterr().out
    assert "| qwk |" in shown and "big minus small" in shown
    assert json.loads(out.read_text())["images"] == 29  # ids 30..58 (59 has no reference in B)
    with pytest.raises(SystemExit):
        compare_main([str(good), str(weak), "--names", "one"])
    assert "--names needs two" in capsys.readouterr().err
