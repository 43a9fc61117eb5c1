"""predict.py on large folders (issue 27): --resume after a kill grades each photograph once, and
file names with HTML or spreadsheet metacharacters come out escaped (report.html) and neutralised
(predictions.csv)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from photo_fixtures import textured_fundus, tiny_checkpoint
from PIL import Image

import predict as predict_cli
from engine import predictor
from engine.cli import run_cli
from engine.predictor import neutralise_cell, restore_cell
from evaluation.report import SORT_SCRIPT

FAST = ["--quiet", "--workers", "0", "--amp", "off", "--batch-size", "2"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt")


@pytest.fixture
def graded(monkeypatch):
    """Counts the photographs the model grades (BatchGrader calls), and can stop the run after
    ``stop_after`` calls with a KeyboardInterrupt, as a kill or Ctrl-C would."""
    counter = {"images": 0, "calls": 0, "stop_after": None}
    original = predictor.BatchGrader.__call__

    def counting(self, hr, fov):
        if counter["stop_after"] is not None and counter["calls"] >= counter["stop_after"]:
            raise KeyboardInterrupt
        counter["calls"] += 1
        counter["images"] += hr.shape[0]
        return original(self, hr, fov)

    monkeypatch.setattr(predictor.BatchGrader, "__call__", counting)
    return counter


def _photos(folder, names):
    folder.mkdir(parents=True, exist_ok=True)
    for seed, name in enumerate(names):
        Image.fromarray(textured_fundus(90, 120, seed=seed)).save(folder / name)
    return [folder / name for name in names]


def _rows(out):
    with (out / "predictions.csv").open(newline="", encoding="utf-8") as file:
        return list(csv.DictReader(file))


def test_resume_after_a_kill_grades_each_photograph_once(tmp_path, checkpoint, graded, capsys):
    paths = _photos(tmp_path / "photos", [f"img_{i}.png" for i in range(7)])
    base = [str(tmp_path / "photos"), "--checkpoint", str(checkpoint), *FAST]
    reference = tmp_path / "reference"
    assert run_cli(predict_cli.main, [*base, "--out", str(reference)]) == 0
    expected = {row["path"]: row for row in _rows(reference)}
    assert graded["images"] == 7

    # A run killed while grading its third batch: four rows flushed, then half of a fifth written.
    out = tmp_path / "out"
    graded.update(images=0, calls=0, stop_after=2)
    with pytest.raises(KeyboardInterrupt):
        run_cli(predict_cli.main, [*base, "--out", str(out)])
    first = _rows(out)
    assert [row["path"] for row in first] == [str(p) for p in paths[:4]]
    fifth = (reference / "predictions.csv").read_text(encoding="utf-8").splitlines()[5]
    with (out / "predictions.csv").open("a", encoding="utf-8", newline="") as file:
        file.write(fifth[: len(fifth) // 2])  # no line end: the kill cut it short

    graded.update(images=0, calls=0, stop_after=None)
    assert run_cli(predict_cli.main, [*base, "--out", str(out), "--resume"]) == 0
    assert graded["images"] == 3  # only the three not yet written
    rows = _rows(out)
    assert sorted(row["path"] for row in rows) == sorted(str(p) for p in paths)  # each exactly once
    assert rows[:4] == first  # the earlier rows are kept as they were, not regraded
    for row in rows:
        np.testing.assert_allclose(
            [float(row[f"p{c}"]) for c in range(5)],
            [float(expected[row["path"]][f"p{c}"]) for c in range(5)],
            atol=2e-5,
        )
    assert "resumed: 4 of 7 photographs" in capsys.readouterr().out
    report = (out / "report.html").read_text(encoding="utf-8")
    assert all(f">{p}</td>" in report for p in paths)  # rebuilt from the whole CSV
    assert report.count('<tr><td class="num"') == 7 and "<dd>7</dd>" in report
    assert (
        report.count('<img class="thumb"') == 7
        and not list(out.glob(".*.tmp"))
        and not list(out.glob(".*.rows"))
    )

    # Nothing left to grade: a second resume grades nothing and changes no row.
    graded.update(images=0)
    assert run_cli(predict_cli.main, [*base, "--out", str(out), "--resume"]) == 0
    assert graded["images"] == 0 and _rows(out) == rows


def test_resume_retries_missing_files_and_refuses_other_settings(
    tmp_path, checkpoint, graded, capsys
):
    photos = _photos(tmp_path / "photos", ["a.png", "b.png"])
    late = tmp_path / "late.png"
    listing = tmp_path / "list.csv"
    listing.write_text(f"path\n{late}\n{tmp_path / 'never.png'}\n")
    out = tmp_path / "out"
    argv = [
        str(tmp_path / "photos"),
        str(listing),
        "--checkpoint",
        str(checkpoint),
        "--out",
        str(out),
        *FAST,
    ]
    assert run_cli(predict_cli.main, argv) == 3
    assert [row["status"] for row in _rows(out)] == ["ok", "ok", "missing", "missing"]
    Image.fromarray(textured_fundus(90, 120, seed=9)).save(late)  # the file arrives
    graded.update(images=0)
    assert run_cli(predict_cli.main, [*argv, "--resume"]) == 3  # never.png is still missing
    assert graded["images"] == 1
    rows = _rows(out)
    assert [(row["path"], row["status"]) for row in rows] == [
        (str(photos[0]), "ok"),
        (str(photos[1]), "ok"),
        (str(late), "ok"),
        (str(tmp_path / "never.png"), "missing"),
    ]
    capsys.readouterr()
    # Another model's or other settings' grades would mix into one CSV: refused before any work.
    assert run_cli(predict_cli.main, [*argv, "--resume", "--tta"]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err.startswith("error: cannot --resume") and "tta False -> True" in err and "\n" not in err
    )
    assert _rows(out) == rows
    other = tiny_checkpoint(tmp_path / "other.pt", seed=1)
    assert run_cli(predict_cli.main, [*argv[:3], str(other), *argv[4:], "--resume"]) == 2
    assert "checkpoint_sha256" in capsys.readouterr().err
    assert json.loads((out / predictor.RUN_FILE).read_text())["tta"] is False


NASTY = [
    "<script>x<_script>.jpg",
    "=HYPERLINK(1).jpg",
    "+cmd.jpg",
    "-1+1.jpg",
    "@SUM(1).jpg",
    "'quoted.jpg",
    "\tTAB.jpg",
]


def test_file_names_are_escaped_in_the_report_and_neutralised_in_the_csv(
    tmp_path, checkpoint, graded, monkeypatch
):
    folder = tmp_path / "photos"
    _photos(folder, NASTY)
    (folder / "=bad.jpg").write_text("not an image")  # the reason cell names the file too
    monkeypatch.chdir(folder)  # relative paths: the path cells start with the names
    out = tmp_path / "out"
    assert (
        run_cli(predict_cli.main, [".", "--checkpoint", str(checkpoint), "--out", str(out), *FAST])
        == 3
    )
    text = (out / "predictions.csv").read_text(encoding="utf-8")
    with (out / "predictions.csv").open(newline="", encoding="utf-8") as file:
        cells = [cell for row in csv.reader(file) for cell in row]
    assert not [cell for cell in cells if cell.startswith(("=", "+", "-", "@", "\t", "\r"))]
    rows = _rows(out)
    by_name = {restore_cell(row["path"]): row for row in rows}
    assert set(by_name) == {*NASTY, "=bad.jpg"}
    for name in NASTY:
        row = by_name[name]
        assert row["status"] == "ok"
        assert row["path"] == ("'" + name if name[0] in "=+-@'\t" else name)
    assert (
        by_name["=bad.jpg"]["status"] == "unreadable" and by_name["=bad.jpg"]["path"] == "'=bad.jpg"
    )
    assert "'=HYPERLINK(1).jpg" in text
    report = (out / "report.html").read_text(encoding="utf-8")
    assert (
        "<script>x" not in report
        and report.count("<script>") == 1
        and f"<script>{SORT_SCRIPT}</script>" in report
    )
    assert "&lt;script&gt;x&lt;_script&gt;.jpg" in report
    # --resume reads the neutralised cells back: nothing is graded again.
    graded.update(images=0)
    assert (
        run_cli(
            predict_cli.main,
            [".", "--checkpoint", str(checkpoint), "--out", str(out), *FAST, "--resume"],
        )
        == 3
    )
    assert graded["images"] == 0 and _rows(out) == rows


def test_neutralise_and_restore_are_inverse():
    for text in ["", "plain.jpg", "=1+1", "+x", "-2", "@a", "\tx", "\rx", "'", "''x", "a=b"]:
        assert restore_cell(neutralise_cell(text)) == text
    assert neutralise_cell("-2") == "'-2" and neutralise_cell("a=b") == "a=b"
