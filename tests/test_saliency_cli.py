"""saliency/run.py, evaluate.py and sanity.py on a tiny trained checkpoint, bad input, and the figures notebook."""

import csv
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import TINY
from PIL import Image

import train as train_cli
from engine.cli import run_cli
from saliency import evaluate as evaluate_cli
from saliency import run as run_saliency
from saliency import sanity as sanity_cli
from saliency.methods import display_map

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A DeepMT-DR checkpoint of the tiny test config (64 px HR, x4), one training step."""
    runs = tmp_path_factory.mktemp("runs")
    argv = [
        "--quiet",
        "--name",
        "tiny",
        "--stage",
        "cls",
        "train.max_steps_per_epoch=1",
        *TINY,
        f"run.out_dir={runs}",
    ]
    threads = torch.get_num_threads()
    try:
        assert run_cli(train_cli.main, argv) == 0
    finally:
        torch.set_num_threads(threads)  # training applies run.threads to the whole process
    return runs / "tiny" / "checkpoints" / "best.pt"


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Two fundus-like photographs on black, not square: a pure-red disc and a textured one."""
    folder = tmp_path_factory.mktemp("photos")
    red = np.zeros((90, 120, 3), np.uint8)
    cv2.circle(red, (60, 45), 40, (0, 0, 255), -1)  # OpenCV colours are BGR: this disc is red
    cv2.imwrite(str(folder / "red.png"), red)
    textured = red.copy()
    textured[20:70, 30:90, 1] = np.random.default_rng(0).integers(0, 200, (50, 60), dtype=np.uint8)
    cv2.circle(textured, (75, 40), 6, (40, 200, 230), -1)
    cv2.imwrite(str(folder / "textured.jpg"), textured)
    return folder


def _run(argv):
    return run_cli(run_saliency.main, ["--quiet", *argv])


def test_cli_writes_overlays_raw_maps_sheet_and_summary(checkpoint, photos, tmp_path):
    out = tmp_path / "out"
    argv = [
        "--checkpoint",
        str(checkpoint),
        "--images",
        str(photos),
        "--methods",
        "gradcam,ig,occlusion",
        "--out",
        str(out),
        "--ig-steps",
        "8",
        "--ig-max-steps",
        "8",
        "--target",
        "any_dr",
        "--occlusion-window",
        "0.25",
        "--occlusion-stride",
        "0.25",
    ]
    assert _run(argv) == 0
    for name in ("red", "textured"):
        assert Image.open(out / name / "input.png").size == (64, 64)
        for method in ("gradcam", "ig", "occlusion"):
            rgb = np.asarray(Image.open(out / name / f"{method}.png"))
            assert rgb.shape == (64, 64, 3)
            raw = np.load(out / name / f"{method}.npy")
            assert raw.shape == (64, 64) and raw.dtype == np.float32 and np.isfinite(raw).all()
    assert (out / "contact_sheet.png").stat().st_size > 0
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert [row["image"] for row in rows] == ["red", "textured"]
    assert all(float(row["ig_completeness_error"]) >= 0 for row in rows)
    assert all(row["target"] in ("grade 0", "any DR") for row in rows)


def test_cli_keeps_a_red_photograph_red(checkpoint, photos, tmp_path):
    out = tmp_path / "out"
    assert (
        _run(
            [
                "--checkpoint",
                str(checkpoint),
                "--images",
                str(photos / "red.png"),
                "--methods",
                "gradcam",
                "--input",
                "hr",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    image = np.asarray(Image.open(out / "red" / "input.png").convert("RGB")).astype(int)
    centre = image[24:40, 24:40]
    assert (centre[..., 0] > 200).all() and (centre[..., 1:] < 30).all()
    shown = display_map(torch.from_numpy(np.load(out / "red" / "gradcam.npy"))[None, None])[
        0, 0
    ].numpy()
    rgb = np.asarray(Image.open(out / "red" / "gradcam.png").convert("RGB")).astype(int)
    cold = shown == 0
    assert cold.any() and np.array_equal(
        rgb[cold], image[cold]
    )  # where the map is 0 the overlay is the image


def test_cli_pages_sheets_and_keeps_names_unique(checkpoint, photos, tmp_path):
    """Ten images in batches of 4: two contact sheets (8 per sheet); two folders holding red.png: red, red_2."""
    other = tmp_path / "other"
    other.mkdir()
    for index in range(7):
        (other / f"copy{index}.png").write_bytes((photos / "red.png").read_bytes())
    (other / "red.png").write_bytes(
        (photos / "textured.jpg").read_bytes()
    )  # a JPEG named .png: decoded anyway
    out = tmp_path / "out"
    argv = [
        "--checkpoint",
        str(checkpoint),
        "--images",
        str(photos),
        str(other),
        "--methods",
        "gradcam",
        "--batch-size",
        "4",
        "--out",
        str(out),
    ]
    assert _run(argv) == 0
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert (
        len(rows) == 10
        and len({row["image"] for row in rows}) == 10
        and "red_2" in {row["image"] for row in rows}
    )
    assert sorted(p.name for p in out.glob("contact_sheet*.png")) == [
        "contact_sheet.png",
        "contact_sheet_2.png",
    ]


@pytest.mark.parametrize(
    "case, message",
    [
        ("checkpoint", "checkpoint not found"),
        ("unreadable", "not an image"),
        ("method", "unknown saliency method 'lime'; valid: gradcam, gradcampp, guided_backprop"),
        ("layer", "unknown layer 'grader.layer9'; candidates: grader.layer1"),
        ("target", "unknown target 'worst'"),
        ("missing_image", "image not found"),
    ],
)
def test_cli_bad_input_is_one_line_exit_2(checkpoint, photos, tmp_path, capsys, case, message):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png at all")
    argv = {
        "checkpoint": ["--checkpoint", str(tmp_path / "none.pt"), "--images", str(photos)],
        "unreadable": [
            "--checkpoint",
            str(checkpoint),
            "--images",
            str(photos / "red.png"),
            str(broken),
        ],
        "method": [
            "--checkpoint",
            str(checkpoint),
            "--images",
            str(photos),
            "--methods",
            "gradcam,lime",
        ],
        "layer": [
            "--checkpoint",
            str(checkpoint),
            "--images",
            str(photos),
            "--layer",
            "grader.layer9",
        ],
        "target": ["--checkpoint", str(checkpoint), "--images", str(photos), "--target", "worst"],
        "missing_image": ["--checkpoint", str(checkpoint), "--images", str(tmp_path / "nope.jpg")],
    }[case]
    assert _run([*argv, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err
    if case == "unreadable":
        assert str(broken) in err
    assert not (tmp_path / "out").exists()


def test_cli_runs_as_a_script_from_the_repository_root(checkpoint, tmp_path):
    import subprocess
    import sys

    result = subprocess.run(
        [
            sys.executable,
            "saliency/run.py",
            "--checkpoint",
            str(tmp_path / "none.pt"),
            "--images",
            "x",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2 and result.stderr.strip().startswith("error: ")


def test_evaluate_prints_the_lesion_agreement_table(checkpoint, tmp_path, capsys):
    json_path = tmp_path / "agreement.json"
    argv = [
        "--quiet",
        "--checkpoint",
        str(checkpoint),
        "--methods",
        "gradcam,guided_backprop",
        "--n",
        "2",
        "--json",
        str(json_path),
    ]
    assert run_cli(evaluate_cli.main, argv) == 0
    out = capsys.readouterr().out
    assert "| map | saliency mass in lesions | x chance | lesion AUC | all-zero maps |" in out
    for row in ("| uniform | ", "| lesion net | ", "| Grad-CAM | ", "| guided backprop | "):
        assert row in out
    result = __import__("json").loads(json_path.read_text())
    assert result["images"] == 2 and result["methods"]["uniform"]["auc"] == 0.5


def test_sanity_cli_prints_randomisation_and_constant_input_tables(checkpoint, capsys):
    assert (
        run_cli(
            sanity_cli.main, ["--checkpoint", str(checkpoint), "--methods", "gradcam", "--n", "2"]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "| grader.head |" in out and "| grader.stem |" in out and "| black 64 px |" in out


def test_figures_notebook_executes(checkpoint, tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    notebook = nbformat.read(REPO / "saliency" / "figures.ipynb", as_version=4)
    env = {
        "SALIENCY_CHECKPOINT": str(checkpoint),
        "SALIENCY_FIGURES": str(tmp_path / "figures"),
        "SALIENCY_METHODS": "gradcam,guided_backprop",
        "SALIENCY_IMAGES": "2",
        "SALIENCY_AGREEMENT_IMAGES": "2",
    }
    old = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        nbclient.NotebookClient(
            notebook,
            timeout=300,
            kernel_name="python3",
            resources={"metadata": {"path": str(REPO)}},
        ).execute()
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    names = sorted(p.name for p in (tmp_path / "figures").iterdir())
    assert names == ["lesion_agreement.png", "saliency_sheet.png", "sanity_randomisation.png"]
