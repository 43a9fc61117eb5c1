"""predict.py end to end on a tiny checkpoint: CSV schema and order, bad input, quality flags,
exit codes, --demo, TTA / HR input / --save-sr, batching, and Grad-CAM from the grading pass."""

from __future__ import annotations

import csv
import json
import time

import numpy as np
import pytest
import torch
from photo_fixtures import bomb_png, textured_fundus, tiny_checkpoint
from PIL import Image

import predict as predict_cli
from engine import release
from engine.cli import run_cli
from engine.predictor import STATUSES, csv_columns
from engine.testing import GraderOnImage, load_trained
from models.cam import gradcam, gradcam_in_forward
from models.ordinal import decode_grades, default_thresholds

FAST = ["--quiet", "--workers", "0", "--amp", "off"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Three gradable photographs in three formats and aspect ratios."""
    folder = tmp_path_factory.mktemp("photos")
    paths = []
    for index, (name, height, width) in enumerate(
        (("a.jpg", 150, 200), ("b.png", 200, 200), ("c.tif", 180, 320))
    ):
        paths.append(folder / name)
        Image.fromarray(textured_fundus(height, width, seed=index)).save(paths[-1])
    return paths


def _rows(out):
    with (out / "predictions.csv").open(newline="") as file:
        return list(csv.DictReader(file))


def _predict(argv, capsys=None):
    code = run_cli(predict_cli.main, argv)
    return code


def test_csv_schema_order_and_probabilities(tmp_path, checkpoint, photos, capsys):
    listing = tmp_path / "list.csv"
    listing.write_text(f"path,grade\n{photos[2]},3\n{photos[0]},\n")
    out = tmp_path / "out"
    code = _predict(
        [
            str(photos[1]),
            str(listing),
            str(photos[0].parent),
            "--checkpoint",
            str(checkpoint),
            "--out",
            str(out),
            "--batch-size",
            "2",
            *FAST,
        ]
    )
    assert code == 0
    rows = _rows(out)
    header = (out / "predictions.csv").read_text().splitlines()[0].split(",")
    assert header == csv_columns(5) and header[:9] == [
        "path",
        "status",
        "grade",
        "p0",
        "p1",
        "p2",
        "p3",
        "p4",
        "p_referable",
    ]
    expected = [photos[1], photos[2], photos[0], *sorted(photos)]
    assert [row["path"] for row in rows] == [str(p) for p in expected]
    assert [row["reference_grade"] for row in rows] == ["", "3", "", "", "", ""]
    for row in rows:
        probabilities = [float(row[f"p{c}"]) for c in range(5)]
        assert row["status"] == "ok" and row["flags"] == "" and row["reason"] == ""
        assert sum(probabilities) == pytest.approx(1, abs=5e-5)
        # The preset decodes by thresholds (configs/demo.yaml); an untrained model has the default ones.
        decoded = decode_grades(torch.tensor([probabilities]), default_thresholds(5))
        assert int(row["grade"]) == int(decoded.item())
        assert float(row["p_referable"]) == pytest.approx(sum(probabilities[2:]), abs=5e-5)
        assert all(0 <= float(row[f"area_{name}"]) <= 1 for name in ("MA", "HE", "EX", "SE"))
        assert (out / row["panel"]).is_file() and float(row["seconds"]) > 0
    # The same photograph listed twice gets the same prediction.
    assert rows[0]["p0"] == rows[4]["p0"] and rows[2]["p_referable"] == rows[3]["p_referable"]
    assert (out / "report.html").is_file() and len(list((out / "thumbs").glob("*.jpg"))) == 6
    printed = capsys.readouterr().out
    assert "graded 6 of 6" in printed and f"report: {out / 'report.html'}" in printed


def test_bad_input_is_listed_and_the_rest_graded(tmp_path, checkpoint, photos, capsys):
    folder = tmp_path / "mixed"
    folder.mkdir()
    Image.fromarray(textured_fundus(150, 200)).save(folder / "01_good.jpg")
    (folder / "02_text.jpg").write_text("this is not an image")
    good = (folder / "01_good.jpg").read_bytes()
    (folder / "03_truncated.jpg").write_bytes(good[: len(good) // 2])
    (folder / "04_zero.png").write_bytes(b"")
    bomb_png(folder / "05_bomb.png")
    Image.fromarray(np.zeros((100, 100, 3), np.uint8)).save(
        folder / "06_black.png"
    )  # no field of view
    blurred = np.asarray(
        Image.fromarray(textured_fundus(300, 300))
        .resize((40, 40))
        .resize((300, 300), Image.Resampling.BICUBIC)
    )
    Image.fromarray(blurred).save(folder / "07_blurred.png")
    listing = tmp_path / "list.csv"
    listing.write_text("path\nmixed/01_good.jpg\nmixed/does_not_exist.jpg\n")
    out = tmp_path / "out"
    assert (
        _predict(
            [str(folder), str(listing), "--checkpoint", str(checkpoint), "--out", str(out), *FAST]
        )
        == 3
    )
    rows = _rows(out)
    assert [(row["path"].split("/")[-1], row["status"]) for row in rows] == [
        ("01_good.jpg", "ok"),
        ("02_text.jpg", "unreadable"),
        ("03_truncated.jpg", "unreadable"),
        ("04_zero.png", "empty"),
        ("05_bomb.png", "too_large"),
        ("06_black.png", "ungradable"),
        ("07_blurred.png", "ungradable"),
        ("01_good.jpg", "ok"),
        ("does_not_exist.jpg", "missing"),
    ]
    assert {row["status"] for row in rows} <= set(STATUSES)
    for row in rows[1:7] + rows[8:]:
        assert row["grade"] == "" and row["p0"] == "" and row["p_referable"] == "", (
            row
        )  # never graded as healthy
        assert row["reason"] and "\n" not in row["reason"]
    assert (
        "not an image" in rows[1]["reason"]
        and "truncated" in rows[2]["reason"]
        and "30000x30000" in rows[4]["reason"]
    )
    assert (
        rows[5]["flags"] == "no_fov"
        and rows[6]["flags"] == "blurred"
        and "quality flags: blurred" in rows[6]["reason"]
    )
    assert "graded 2 of 9 photographs (2 ungradable, 5 not read)" in capsys.readouterr().out
    # --ignore-quality grades the flagged photograph, keeping its flag.
    out2 = tmp_path / "out2"
    assert (
        _predict(
            [
                str(folder / "07_blurred.png"),
                "--checkpoint",
                str(checkpoint),
                "--out",
                str(out2),
                "--ignore-quality",
                *FAST,
            ]
        )
        == 0
    )
    (row,) = _rows(out2)
    assert row["status"] == "ok" and row["flags"] == "blurred" and row["grade"] != ""


def test_usage_errors_exit_2_before_any_work(tmp_path, checkpoint, photos, capsys, monkeypatch):
    out = tmp_path / "out"
    cases = [
        (["--checkpoint", str(tmp_path / "none.pt")], "checkpoint not found"),
        (["--checkpoint", "no_such_release"], "unknown checkpoint 'no_such_release'"),
        (
            ["--checkpoint", str(checkpoint), "--out", str(photos[0] / "sub")],
            "is not a writable folder",
        ),
        (["--checkpoint", str(checkpoint), str(tmp_path / "nowhere.jpg")], "input not found"),
    ]
    for extra, message in cases:
        argv = (
            [str(photos[0]), "--out", str(out), *FAST, *extra]
            if "--out" not in extra
            else [str(photos[0]), *FAST, *extra]
        )
        assert _predict(argv) == 2, extra
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and message in err and "\n" not in err, err
    assert not (out / "predictions.csv").exists()
    with pytest.raises(SystemExit) as stop:
        predict_cli.main(["--quiet"])  # neither PATHS nor --demo
    assert stop.value.code == 2


def test_default_release_missing_says_how_to_make_it(tmp_path, photos, capsys, monkeypatch):
    monkeypatch.setattr(release, "RELEASE_DIR", tmp_path / "pretrained_model")
    assert _predict([str(photos[0]), "--out", str(tmp_path / "out"), *FAST]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        "deepmt_dr_idrid_small.safetensors is absent" in err
        and "python -m engine.export runs/idrid_small --out" in err
    )
    assert "--checkpoint FILE" in err and "\n" not in err


def test_demo_end_to_end_with_a_tiny_checkpoint(tmp_path, checkpoint, capsys):
    out = tmp_path / "demo"
    started = time.perf_counter()
    assert _predict(["--demo", "--checkpoint", str(checkpoint), "--out", str(out), "--quiet"]) == 0
    assert (
        time.perf_counter() - started < 30
    )  # decoding threads (the default): no fork of this busy process
    rows = _rows(out)
    assert [row["path"].split("/")[-1] for row in rows] == [
        "skimage_retina.jpg",
        "embedded_test_00002_grade0.jpg",
        "embedded_test_00000_grade2.jpg",
        "embedded_test_00004_grade4.jpg",
    ]
    assert [row["reference_grade"] for row in rows] == ["", "0", "2", "4"]
    assert all(row["status"] == "ok" and (out / row["panel"]).is_file() for row in rows)
    printed = capsys.readouterr().out
    assert f"report: {out / 'report.html'}" in printed


def test_tta_hr_input_and_save_sr(tmp_path, checkpoint, photos):
    out = tmp_path / "sr"
    assert (
        _predict(
            [
                str(photos[0]),
                "--checkpoint",
                str(checkpoint),
                "--out",
                str(out),
                "--save-sr",
                "--tta",
                *FAST,
            ]
        )
        == 0
    )
    (row,) = _rows(out)
    with Image.open(out / row["sr"]) as sr:
        assert sr.size == (64, 64)  # the model's HR size
    plain = tmp_path / "plain"
    assert (
        _predict(
            [
                str(photos[0]),
                "--checkpoint",
                str(checkpoint),
                "--out",
                str(plain),
                "--no-panels",
                *FAST,
            ]
        )
        == 0
    )
    (plain_row,) = _rows(plain)
    assert plain_row["panel"] == "" and not (plain / "panels").exists()
    assert plain_row["p0"] != row["p0"]  # four flips averaged
    hr = tmp_path / "hr"
    assert (
        _predict(
            [
                str(photos[0]),
                "--checkpoint",
                str(checkpoint),
                "--out",
                str(hr),
                "--input",
                "hr",
                *FAST,
            ]
        )
        == 0
    )
    (hr_row,) = _rows(hr)
    assert hr_row["status"] == "ok" and hr_row["p0"] != plain_row["p0"]


def test_batching_and_decoding_threads_do_not_change_predictions(tmp_path, checkpoint, photos):
    outputs = []
    for name, extra in (
        ("one", ["--batch-size", "1"]),
        ("all", ["--batch-size", "2", "--workers", "3"]),
    ):
        out = tmp_path / name
        assert (
            _predict(
                [
                    *map(str, photos),
                    "--checkpoint",
                    str(checkpoint),
                    "--out",
                    str(out),
                    *FAST,
                    *extra,
                ]
            )
            == 0
        )
        outputs.append([[float(row[f"p{c}"]) for c in range(5)] for row in _rows(out)])
    np.testing.assert_allclose(outputs[0], outputs[1], atol=2e-5)


def test_gradcam_from_the_grading_pass_equals_gradcam(checkpoint):
    model, _, _ = load_trained(checkpoint, "cpu")
    model.requires_grad_(False)
    image = torch.rand(3, 3, 64, 64)
    lesion_logits = model.segment(image).detach()
    layer = model.grader.stages()[-1]
    logits, cam = gradcam_in_forward(
        lambda: model.grade_with_lesions(image, lesion_logits).grade_logits, layer, (64, 64)
    )
    expected = gradcam(
        GraderOnImage(model), layer, image
    )  # segments again inside the graph: same lesion maps
    torch.testing.assert_close(cam, expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(logits, model.grade_image(image).grade_logits)
    assert not any(parameter.requires_grad for parameter in model.parameters())


def test_a_compared_method_without_segmentation_grades_too(tmp_path, photos):
    checkpoint = tiny_checkpoint(
        tmp_path / "noseg.pt", ["model.use_lesions=false", "model.isr=bicubic"]
    )
    out = tmp_path / "out"
    assert (
        _predict([str(photos[0]), "--checkpoint", str(checkpoint), "--out", str(out), *FAST]) == 0
    )
    (row,) = _rows(out)
    assert row["status"] == "ok" and row["area_MA"] == "" and (out / row["panel"]).is_file()


def test_reference_grades_get_the_evaluation_blocks(tmp_path, checkpoint, photos, capsys):
    """A CSV list with reference grades: summary.json with the grading metrics, calibration,
    intervals and both operating points, a reliability diagram, and the lines in the report."""
    listing = tmp_path / "list.csv"
    listing.write_text(
        "path,grade\n" + "".join(f"{path},{grade}\n" for path, grade in zip(photos, (0, 2, 4)))
    )
    out = tmp_path / "out"
    assert _predict([str(listing), "--checkpoint", str(checkpoint), "--out", str(out), *FAST]) == 0
    summary = json.loads((out / "summary.json").read_text())
    rows = _rows(out)
    assert summary["n"] == 3 and summary["grading"]["n"] == 3
    predicted = [int(row["grade"]) for row in rows]
    assert summary["grading"]["accuracy"] == pytest.approx(
        sum(p == g for p, g in zip(predicted, (0, 2, 4))) / 3
    )
    assert {"ece", "reliability"} <= set(summary["calibration"])
    assert {"qwk", "accuracy", "referable_auc"} <= set(summary["intervals"])
    assert [point["threshold"] for point in summary["operating_points"]][-1] == 0.5
    assert (out / "reliability.png").stat().st_size > 0
    assert "against reference grades" in (out / "report.html").read_text()
    assert "against reference grades (3 photographs)" in capsys.readouterr().out
    # Without reference grades there is no summary.
    plain = tmp_path / "plain"
    assert (
        _predict([str(photos[0]), "--checkpoint", str(checkpoint), "--out", str(plain), *FAST]) == 0
    )
    assert not (plain / "summary.json").exists()
