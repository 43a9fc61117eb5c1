"""Cross-validation study: spec, fold split files, weight transfer, records, resume-by-record, tables."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from data.splits import read_split_file, write_folds_file
from engine.builders import build_model
from engine.checkpoint import load_checkpoint, save_checkpoint
from engine.config import ConfigError, load_config
from engine.cv_study import (
    CVRunner,
    config_hash,
    fold_split_file,
    load_study,
    transferred_init,
    write_record,
)
from engine.logging import log_facts
from evaluation.cv_results import (
    markdown,
    read_records,
    study_summary,
    supplementary_markdown,
    supplementary_summary,
)
from evaluation.cv_tables import cv_answer
from evaluation.statistics import summary_metrics

ROOT = Path(__file__).resolve().parents[1]


def _study_file(tmp_path: Path, rows: str) -> Path:
    ids = [f"toy/grading/train/{i:03d}" for i in range(20)]
    folds = {image_id: i % 4 for i, image_id in enumerate(ids)}
    folds["toy/grading/train/019"] = -1
    write_folds_file(tmp_path / "folds.csv", "toy", folds, 4, 0)
    text = (
        f"preset: configs/demo.yaml\nfolds_file: {tmp_path / 'folds.csv'}\nreference: a\n"
        "overrides: [train.eval_every=1000]\n"
        'shared:\n  base:\n    method: deepmt_dr\n    overrides: ["train.stage=isr,seg,cls"]\n'
        f"rows:\n{rows}"
    )
    (tmp_path / "study.yaml").write_text(text)
    return tmp_path / "study.yaml"


ROWS = "  a:\n    method: deepmt_dr\n    start: base\n    overrides: [train.stage=joint]\n  b:\n    method: lr_cls\n"


def test_study_spec_and_its_errors(tmp_path):
    study = load_study(_study_file(tmp_path, ROWS))
    assert list(study.rows) == ["a", "b"] and study.rows["a"].start == "base"
    assert study.shared["base"].overrides == ("train.stage=isr,seg,cls",)
    with pytest.raises(ConfigError, match="starts from 'nope'"):
        load_study(_study_file(tmp_path, "  a:\n    method: deepmt_dr\n    start: nope\n"))
    with pytest.raises(ConfigError, match="rows.a needs a 'method'"):
        load_study(_study_file(tmp_path, "  a:\n    overrides: []\n"))
    path = _study_file(tmp_path, ROWS)
    path.write_text(path.read_text() + "pairs:\n  - [b, a]\n")
    assert load_study(path).pairs == (("b", "a"),)
    path.write_text(path.read_text() + "  - [b, nope]\n")
    with pytest.raises(ConfigError, match=r"pairs entry \['b', 'nope'\] must be"):
        load_study(path)


def test_fold_split_files_hold_out_one_fold_and_exclude_conflicts(tmp_path):
    study = load_study(_study_file(tmp_path, ROWS))
    roles = read_split_file(fold_split_file(study, 2, tmp_path / "out"))
    assert sorted(i for i, r in roles.items() if r == "val") == [
        f"toy/grading/train/{i:03d}" for i in (2, 6, 10, 14, 18)
    ]
    assert roles["toy/grading/train/019"] == "excluded"
    assert sum(r == "train" for r in roles.values()) == 14


def test_shared_weights_are_transferred_by_name_and_shape(tmp_path):
    base = load_config(ROOT / "configs/demo.yaml", ["data.hr_size=32", "data.crop_size=32"])
    torch.manual_seed(1)
    source_model = build_model(base)
    save_checkpoint(
        {"model": source_model.state_dict(), "config": base.to_dict()}, tmp_path / "base.pt"
    )
    no_lesions = load_config(
        ROOT / "configs/demo.yaml",
        ["data.hr_size=32", "data.crop_size=32", "model.use_lesions=false"],
    )
    state = load_checkpoint(
        transferred_init(tmp_path / "base.pt", no_lesions, tmp_path / "init.pt")
    )["model"]
    source = source_model.state_dict()
    isr_keys = [k for k in state if k.startswith("isr.")]
    assert isr_keys and all(torch.equal(state[k], source[k]) for k in isr_keys)
    first_conv = next(k for k in state if k.startswith("grader.") and state[k].dim() == 4)
    assert (
        state[first_conv].shape[1] == 3 and source[first_conv].shape[1] > 3
    )  # a new grader: image only
    assert not any(k.startswith("seg.") for k in state)
    build_model(no_lesions).load_state_dict(state)  # exactly the row's model


def test_config_hash_ignores_where_and_how_fast(tmp_path):
    config = load_config(ROOT / "configs/demo.yaml")
    moved = load_config(
        ROOT / "configs/demo.yaml", ["run.out_dir=/elsewhere", "run.threads=2", "run.name=x"]
    )
    changed = load_config(ROOT / "configs/demo.yaml", ["loss.task_aware_weight=0"])
    assert config_hash(config) == config_hash(moved) != config_hash(changed)


def _fake_record(records: Path, row: str, fold: int, ids, grades, probs, predicted, **meta) -> None:
    source = records.parent / f"{row}{fold}.csv"
    with open(source, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "grade", "predicted", "p0", "p1", "p2", "p3", "p4", "extra"])
        for i, g, q, p in zip(ids, grades, predicted, probs):
            writer.writerow([i, g, q, *[f"{v:.6f}" for v in p], "x"])
    write_record(records, row, fold, source, {"wall_seconds": 60.0, "cpu": "test CPU", **meta})


def _predictions(n: int, seed: int, signal: float):
    rng = np.random.default_rng(seed)
    grades = rng.integers(0, 5, n)
    logits = rng.normal(size=(n, 5)) + signal * np.eye(5)[grades]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return grades, probs, probs.argmax(1)


def test_records_pool_into_paired_intervals_and_skip_what_is_done(tmp_path):
    records = tmp_path / "records"
    records.mkdir()
    study = load_study(_study_file(tmp_path, ROWS))
    rng_ids = [f"toy/grading/train/{i:03d}" for i in range(120)]
    for fold in (0, 1):
        ids = rng_ids[fold * 60 : (fold + 1) * 60]
        grades, probs_a, pred_a = _predictions(60, fold, signal=3.0)
        _, probs_b, pred_b = _predictions(60, fold + 10, signal=0.0)
        _fake_record(records, "a", fold, ids, grades, probs_a, pred_a)
        # Only b's fold 1 record has the grader's training CE (older records do not).
        ce = {"grader_train_ce": 1.6} if fold == 1 else {}
        _fake_record(records, "b", fold, ids, grades, probs_b, pred_b, **ce)
    _fake_record(
        records, "a", 2, rng_ids[:5], [0] * 5, np.full((5, 5), 0.2), [0] * 5
    )  # b has no fold 2
    for row in ("a", "b"):  # a held-out segmentation-only photograph (grade -1) in each record
        with open(records / row / "fold1.csv", "a", newline="") as handle:
            csv.writer(handle).writerow(["toy/segmentation/train/s1", -1, 0, *[0.2] * 5])
    with open(records / "a" / "fold0.csv") as handle:
        assert next(csv.reader(handle)) == [
            "id",
            "grade",
            "predicted",
            "p0",
            "p1",
            "p2",
            "p3",
            "p4",
        ]
    runner = CVRunner(study, "unused", tmp_path / "runs", records)
    assert runner.pending(["a", "b"], [0, 1, 2, 3]) == [(2, "b"), (3, "a"), (3, "b")]
    summary = study_summary(
        records, ["a", "b"], "a", groups={}, n_resamples=300, pairs=(("b", "a"),)
    )
    assert summary["folds"] == [0, 1] and summary["images"] == 120  # only the folds every row has
    found = read_records(records, ["a"])
    grades = np.concatenate([found["a"][f].grades for f in (0, 1)])
    probs = np.concatenate([found["a"][f].probs for f in (0, 1)])
    predicted = np.concatenate([found["a"][f].predicted for f in (0, 1)])
    expected = summary_metrics(grades, predicted, probs, 0.5)
    assert summary["rows"]["a"]["intervals"]["qwk"]["value"] == pytest.approx(
        expected["qwk"], abs=1e-9
    )
    difference = summary["differences"]["b"]["qwk"]
    assert difference["low"] > 0 and difference["p_value"] < 0.01  # a informative, b at chance
    reverse = summary["pairs"][("b", "a")]["qwk"]  # b minus a: the same resamples, sign flipped
    assert reverse["difference"] == pytest.approx(-difference["difference"], abs=1e-12)
    assert reverse["high"] == pytest.approx(-difference["low"], abs=1e-12)
    table = markdown(summary, {"a": "row a", "b": "row b"}, "a")
    summary["total_folds"] = 4
    table = markdown(summary, {"a": "row a", "b": "row b"}, "a")
    assert "| a | " in table and "| b | " in table and "Folds 0, 1 of 4" in table
    assert "grader train CE |" in table.splitlines()[0]
    assert "| b minus a | " in table
    row_a, row_b = (next(x for x in table.splitlines() if x.startswith(f"| {r} |")) for r in "ab")
    assert row_a.endswith("| - |") and row_b.endswith("| 1.60 (fold 1) |")
    meta = json.loads((records / "a" / "fold0.json").read_text())
    assert meta["cpu"] == "test CPU"


def test_a_run_another_process_trains_is_waited_for_not_touched(tmp_path, monkeypatch):
    import engine.cv_study as cv
    from data.lock import FolderLock

    config = load_config(ROOT / "configs/demo.yaml", [f"run.out_dir={tmp_path}", "run.name=shared"])
    (config.run_dir / "checkpoints").mkdir(parents=True)
    (config.run_dir / "checkpoints" / "partial").write_text("the other process's work")
    other = FolderLock(tmp_path / "shared.lock", "the other process").acquire()

    def other_finishes(seconds):
        (config.run_dir / "checkpoints" / "best.pt").write_text("weights")
        (config.run_dir / "checkpoints" / "done").write_text("finished\n")
        other.release()

    monkeypatch.setattr(cv.time, "sleep", other_finishes)
    monkeypatch.setattr(
        cv, "Trainer", lambda *a, **k: pytest.fail("must not train a run another process holds")
    )
    runner = CVRunner(
        load_study(_study_file(tmp_path, ROWS)), "unused", tmp_path, tmp_path / "records"
    )
    assert runner._train(config) == config.run_dir / "checkpoints" / "best.pt"
    assert (config.run_dir / "checkpoints" / "partial").is_file()


def test_a_study_with_no_common_fold_says_what_is_recorded(tmp_path):
    records = tmp_path / "records"
    ids = [f"toy/grading/train/{i:03d}" for i in range(10)]
    grades, probs, predicted = _predictions(10, 0, signal=1.0)
    _fake_record(records, "a", 0, ids, grades, probs, predicted)
    _fake_record(records, "b", 1, ids, grades, probs, predicted)
    summary = study_summary(records, ["a", "b", "c"], "a", groups={}, n_resamples=50)
    text = markdown(summary, {"a": "", "b": "", "c": ""}, "a")
    assert "No fold has a record of every row yet" in text
    assert "recorded so far: a fold 0; b fold 1)" in text
    empty = study_summary(tmp_path / "none", ["a"], "a", groups={}, n_resamples=50)
    assert markdown(empty, {"a": ""}, "a").startswith("No (row, fold) record yet")


def test_log_facts_reads_training_time_and_the_last_grader_ce(tmp_path):
    assert log_facts(tmp_path) == (None, None)  # no log.csv: nothing to say
    (tmp_path / "log.csv").write_text(
        "stage,epoch,seconds,train_ce\nisr,0,10.5,\ncls,0,20.0,1.61\ncls,1,30.0,1.20\njoint,0,5.0,\n"
    )
    seconds, train_ce = log_facts(tmp_path)
    assert seconds == pytest.approx(65.5) and train_ce == pytest.approx(1.20)


def test_a_supplementary_row_is_compared_on_the_folds_it_has(tmp_path):
    records = tmp_path / "records"
    records.mkdir()
    ids = [f"toy/grading/train/{i:03d}" for i in range(120)]
    for fold in (0, 1):
        grades, probs, predicted = _predictions(60, fold, signal=3.0)
        _fake_record(records, "a", fold, ids[fold * 60 : (fold + 1) * 60], grades, probs, predicted)
        _, probs_b, pred_b = _predictions(60, fold + 10, signal=0.0)
        _fake_record(records, "b", fold, ids[fold * 60 : (fold + 1) * 60], grades, probs_b, pred_b)
    grades, _, _ = _predictions(60, 0, signal=3.0)  # the same photographs and grades as a's fold 0
    _, probs, predicted = _predictions(60, 7, signal=0.0)
    _fake_record(records, "s", 0, ids[:60], grades, probs, predicted, grader_train_ce=1.55)
    extra = supplementary_summary(records, ["s", "t"], "a", {}, [0, 1, 2], n_resamples=300)
    assert extra["t"] == {"folds": []}  # nothing recorded yet
    entry = extra["s"]
    assert entry["folds"] == [0] and entry["images"] == 60  # fold 0 only: a's fold 1 is not paired
    found = read_records(records, ["a"])
    own = summary_metrics(found["a"][0].grades, found["a"][0].predicted, found["a"][0].probs, 0.5)
    assert entry["reference_intervals"]["qwk"]["value"] == pytest.approx(own["qwk"], abs=1e-9)
    assert entry["difference"]["qwk"]["low"] > 0  # a informative, s at chance
    table = supplementary_markdown(extra, "a")
    assert "| s | 0 | 60 |" in table and "| 1.55 |" in table and "| t | none yet |" in table
    summary = study_summary(records, ["a", "b"], "a", groups={}, n_resamples=300)
    summary["supplementary"] = extra
    answer = cv_answer(summary, {"a": [0, 1], "b": [0, 1]}, [0, 1], "a", baseline="b", ablation="-")
    assert "Against the supplementary row `s`, on the 60 photographs of fold 0:" in answer
    assert "DeepMT-DR **beats** it too" in answer
