"""Deployment export (engine/deploy_export.py) and the exported file's inferer (engine/onnx_inferer.py):
the ONNX and pt2 files compute PyTorch's outputs, OnnxInferer grades like engine.inference.Inferer
(with and without TTA), predict.py grades an .onnx like its checkpoint without importing a network
class, and the errors are one line."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from photo_fixtures import textured_fundus, tiny_checkpoint
from PIL import Image

import predict as predict_cli
from data.cache import file_sha256
from engine import deploy_export, export
from engine.checkpoint import load_checkpoint, save_checkpoint
from engine.cli import run_cli
from engine.inference import Inferer
from engine.onnx_inferer import DEPLOY_FORMAT, OnnxInferer, load_deployed
from engine.testing import load_trained
from models.ordinal import decode_grades

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--quiet", "--workers", "0", "--amp", "off"]
# Blur and noise in the degradation, and fitted-looking grade thresholds, so that the metadata
# carries every part of the policy; the calibration of a release.
OVERRIDES = ["data.blur_kernel=3", "data.noise_var=0.001", "model.grade_decoding=thresholds"]
THRESHOLDS = [0.7, 1.9, 2.05, 3.3]
CALIBRATION = {"calibration": {"temperature": 1.6}, "referable_threshold": 0.45}
# Modules an exported file must grade without: the network classes and the training code.
NETWORK_MODULES = (
    "models.deepmt_dr",
    "models.isr",
    "models.lesion_seg",
    "models.grading",
    "models.registry",
    "chen_net",
    "torchvision",
    "engine.config",
    "engine.inference",
    "engine.testing",
    "engine.builders",
)


def _tolerance(reference: torch.Tensor) -> float:
    """1e-4 of the tensor's magnitude (at least 1e-4): float32 reassociation, not a bug."""
    return 1e-4 * max(1.0, float(reference.abs().max())) if reference.numel() else 0.0


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", OVERRIDES)
    state = load_checkpoint(path)
    state["model"]["grade_thresholds"] = torch.tensor(THRESHOLDS)
    state["release"] = CALIBRATION
    return save_checkpoint(state, path)


@pytest.fixture(scope="module")
def onnx_file(checkpoint, tmp_path_factory):
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    out = tmp_path_factory.mktemp("deploy") / "tiny.onnx"
    assert run_cli(export.main, [str(checkpoint), "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    for index, (height, width) in enumerate(((150, 200), (200, 200), (180, 320))):
        Image.fromarray(textured_fundus(height, width, seed=index)).save(folder / f"{index}.png")
    return folder


def _hr(count: int = 3) -> torch.Tensor:
    images = [
        torch.from_numpy(textured_fundus(64, 64, seed=s)).permute(2, 0, 1) for s in range(count)
    ]
    return torch.stack(images)


def _assert_matches_pytorch(path: Path, checkpoint: Path) -> None:
    model, config, _ = load_trained(checkpoint, "cpu")
    network = deploy_export.InferencePath(model).eval()
    lr = torch.rand(
        3, 3, 16, 16, generator=torch.Generator().manual_seed(1)
    )  # not the traced batch
    with torch.no_grad():
        expected = network(lr)
    got = load_deployed(path).run(lr)
    for name, a, b in zip(("sr", "lesions", "grade_logits"), got, expected):
        assert a.shape == b.shape, name
        torch.testing.assert_close(a, b, atol=_tolerance(b), rtol=0, msg=name)
    probabilities = torch.softmax(got[2], 1)
    torch.testing.assert_close(probabilities, torch.softmax(expected[2], 1), atol=1e-4, rtol=0)


def test_onnx_file_computes_pytorchs_outputs_and_holds_the_metadata(onnx_file, checkpoint):
    _assert_matches_pytorch(onnx_file, checkpoint)
    meta = load_deployed(onnx_file).metadata
    assert meta["format"] == DEPLOY_FORMAT and meta["precision"] == "fp32"
    assert (meta["lr_size"], meta["hr_size"], meta["scale"], meta["num_classes"]) == (16, 64, 4, 5)
    assert (meta["blur_kernel"], meta["noise_var"], meta["seed"]) == (3, 0.001, 0)
    assert meta["grade_decoding"] == "thresholds"
    assert meta["grade_thresholds"] == torch.tensor(THRESHOLDS).tolist()  # float32 values, exactly
    assert (meta["temperature"], meta["referable_threshold"]) == (1.6, 0.45)
    assert meta["source_sha256"] == file_sha256(checkpoint)
    assert meta["export_command"].startswith("python -m engine.export") and meta["commit"]
    registry = onnx_file.parent / "RELEASES.json"
    assert not registry.exists()  # a deployment file is not a release


@pytest.mark.parametrize("tta", [False, True])
def test_onnx_inferer_grades_like_the_inferer(onnx_file, checkpoint, tta):
    model, config, _ = load_trained(checkpoint, "cpu")
    hr = _hr()
    expected = Inferer(model, config, "lr", tta=tta, amp=False, temperature=1.6)(hr)
    got = OnnxInferer(load_deployed(onnx_file), "lr", tta=tta)(hr)  # temperature: the file's
    torch.testing.assert_close(got.lr, expected.lr, atol=0, rtol=0)  # same degradation and noise
    assert torch.equal(got.grades, expected.grades)
    for name in ("probabilities", "p_referable", "view_logits", "lesions", "image"):
        reference = getattr(expected, name)
        torch.testing.assert_close(
            getattr(got, name), reference, atol=_tolerance(reference), rtol=0, msg=name
        )
    assert got.view_logits.shape[0] == (4 if tta else 1) and got.cam is None
    # The decoding is the model's: the same grades on probabilities spread over all grades.
    probabilities = torch.softmax(torch.randn(200, 5) * 3, 1)
    inferer = OnnxInferer(load_deployed(onnx_file))
    assert torch.equal(inferer.decode(probabilities), model.predict_grades(probabilities))
    assert not torch.equal(inferer.decode(probabilities), decode_grades(probabilities))


def test_predict_grades_an_onnx_file_like_its_checkpoint_without_network_classes(
    onnx_file, checkpoint, photos, tmp_path
):
    """The .onnx run is a subprocess that then lists the network modules it imported (none)."""
    onnx_out, pt_out = tmp_path / "onnx", tmp_path / "pt"
    argv = [str(photos), "--checkpoint", str(onnx_file), "--out", str(onnx_out), "--tta", *FAST]
    script = (
        "import sys; import predict; from engine.cli import run_cli; "
        f"code = run_cli(predict.main, {argv!r}); "
        f"print('imported:', [m for m in {NETWORK_MODULES!r} if m in sys.modules]); sys.exit(code)"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert "imported: []" in done.stdout, done.stdout
    pt_argv = [str(photos), "--checkpoint", str(checkpoint), "--out", str(pt_out), "--tta", *FAST]
    assert run_cli(predict_cli.main, pt_argv) == 0
    rows = {}
    for out in (onnx_out, pt_out):
        with (out / "predictions.csv").open(newline="") as file:
            rows[out] = list(csv.DictReader(file))
    assert len(rows[onnx_out]) == 3
    for onnx_row, pt_row in zip(rows[onnx_out], rows[pt_out]):
        assert onnx_row["status"] == pt_row["status"] == "ok"
        assert onnx_row["grade"] == pt_row["grade"] and onnx_row["referable"] == pt_row["referable"]
        for key in ("p0", "p1", "p2", "p3", "p4", "p_referable"):
            assert abs(float(onnx_row[key]) - float(pt_row[key])) <= 2e-5, key  # 5-decimal CSV
        assert (onnx_out / onnx_row["panel"]).is_file()
    report = (onnx_out / "report.html").read_text()
    assert "ONNX Runtime" in report and "temperature 1.600" in report
    run = json.loads((onnx_out / "predict_run.json").read_text())
    assert run["checkpoint_sha256"] == file_sha256(onnx_file) and run["referable_threshold"] == 0.45


def test_pt2_round_trip_matches_pytorch(checkpoint, tmp_path, capsys):
    out = tmp_path / "tiny.pt2"
    assert run_cli(export.main, [str(checkpoint), "--out", str(out), "--format", "pt2"]) == 0
    printed = capsys.readouterr().out
    assert f"SHA-256 {file_sha256(out)}" in printed and "largest difference from PyTorch" in printed
    _assert_matches_pytorch(out, checkpoint)
    model, config, _ = load_trained(checkpoint, "cpu")
    expected = Inferer(model, config, "lr", tta=True, amp=False, temperature=1.6)(_hr(2))
    got = OnnxInferer(load_deployed(out), tta=True)(_hr(2))
    assert torch.equal(got.grades, expected.grades)
    torch.testing.assert_close(got.probabilities, expected.probabilities, atol=1e-4, rtol=0)


def _one_line_error(capsys, code: int) -> str:
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


def test_errors_are_one_line(checkpoint, tmp_path, capsys, monkeypatch):
    export_to = lambda *extra: run_cli(export.main, [str(checkpoint), *extra])  # noqa: E731
    err = _one_line_error(capsys, export_to("--out", str(tmp_path / "a.pt"), "--format", "onnx"))
    assert "must end in .onnx for --format onnx" in err
    err = _one_line_error(capsys, export_to("--out", str(tmp_path / "a.onnx"), "--format", "pt"))
    assert "must end in .pt for --format pt" in err
    err = _one_line_error(capsys, export_to("--out", str(tmp_path / "a.onnx"), "--tta"))
    assert "make a release" in err
    err = _one_line_error(capsys, export_to("--out", str(tmp_path / "a.bin")))
    assert ".onnx or .pt2" in err
    with pytest.raises(SystemExit) as stop:
        export.main([str(checkpoint), "--out", str(tmp_path / "a.onnx"), "--format", "tflite"])
    assert stop.value.code == 2 and "invalid choice: 'tflite'" in capsys.readouterr().err
    # Not an export of this repository: no metadata.
    foreign = tmp_path / "foreign.onnx"
    foreign.write_bytes(b"not an onnx model")
    photo = tmp_path / "p.png"
    Image.fromarray(textured_fundus(seed=3)).save(photo)
    err = _one_line_error(
        capsys,
        run_cli(
            predict_cli.main,
            [str(photo), "--checkpoint", str(foreign), "--out", str(tmp_path / "o"), *FAST],
        ),
    )
    assert "ONNX Runtime cannot load" in err and "foreign.onnx" in err
    onnx = pytest.importorskip("onnx")
    identity = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["lr"], ["sr"])],
        "identity",
        [onnx.helper.make_tensor_value_info("lr", onnx.TensorProto.FLOAT, [1, 3, 16, 16])],
        [onnx.helper.make_tensor_value_info("sr", onnx.TensorProto.FLOAT, [1, 3, 16, 16])],
    )
    onnx.save(onnx.helper.make_model(identity), foreign)
    err = _one_line_error(
        capsys,
        run_cli(
            predict_cli.main,
            [str(photo), "--checkpoint", str(foreign), "--out", str(tmp_path / "o"), *FAST],
        ),
    )
    assert "is not a DeepMT-DR deployment file" in err
    # ONNX Runtime missing (None in sys.modules makes the import fail).
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    err = _one_line_error(
        capsys,
        run_cli(
            predict_cli.main,
            [str(photo), "--checkpoint", str(foreign), "--out", str(tmp_path / "o"), *FAST],
        ),
    )
    assert "needs ONNX Runtime: pip install onnxruntime" in err
    find_spec = deploy_export.importlib.util.find_spec
    monkeypatch.setattr(
        deploy_export.importlib.util,
        "find_spec",
        lambda name, *args: None if name in ("onnx", "onnxscript") else find_spec(name, *args),
    )
    err = _one_line_error(capsys, export_to("--out", str(tmp_path / "b.onnx")))
    assert "ONNX export needs onnx and onnxscript: pip install" in err
    assert not (tmp_path / "b.onnx").exists()


def test_hr_input_needs_the_checkpoint(onnx_file, photos, tmp_path, capsys):
    argv = [
        str(photos),
        "--checkpoint",
        str(onnx_file),
        "--out",
        str(tmp_path / "o"),
        "--input",
        "hr",
        *FAST,
    ]
    err = _one_line_error(capsys, run_cli(predict_cli.main, argv))
    assert "--input hr needs the checkpoint" in err
