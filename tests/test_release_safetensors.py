"""Releases as safetensors + JSON sidecar (issue 27): today's release converted on a temporary copy
loads through the repository's loader with identical tensors and grades, opens with plain
``safetensors``, and a tampered sidecar or weights file is refused with one line naming it."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from photo_fixtures import textured_fundus, tiny_checkpoint
from PIL import Image

import predict as predict_cli
import test as test_cli
from data.cache import file_sha256
from engine import export, release
from engine.checkpoint import SIDECAR_FORMAT, CheckpointError, load_checkpoint
from engine.cli import run_cli
from engine.testing import load_trained

safetensors_torch = pytest.importorskip("safetensors.torch")

_ENTRY = release.read_registry(release.RELEASE_DIR).get(release.DEFAULT_RELEASE, {})
# The committed default release, in whichever format it was exported (.pt, or .safetensors + .json).
COMMITTED = release.RELEASE_DIR / _ENTRY.get("file", f"{release.DEFAULT_RELEASE}.pt")


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """Today's committed release copied to a temporary folder and exported as safetensors there
    (a .pt release converted; a safetensors one written again from its own files)."""
    if not COMMITTED.is_file():
        pytest.skip(f"{COMMITTED} is not in this checkout")
    registry = json.loads((release.RELEASE_DIR / release.REGISTRY).read_text())
    before = file_sha256(COMMITTED)
    assert before == registry[release.DEFAULT_RELEASE]["sha256"]
    root = tmp_path_factory.mktemp("release")
    source = root / "source" / COMMITTED.name
    source.parent.mkdir()
    shutil.copyfile(COMMITTED, source)
    if "sidecar" in _ENTRY:
        shutil.copyfile(release.RELEASE_DIR / _ENTRY["sidecar"], source.parent / _ENTRY["sidecar"])
    shutil.copyfile(release.RELEASE_DIR / release.REGISTRY, source.parent / release.REGISTRY)
    out = root / "out" / f"{release.DEFAULT_RELEASE}.safetensors"
    assert run_cli(export.main, [str(source), "--out", str(out)]) == 0
    # The committed files are untouched: nothing is written next to them.
    assert (
        file_sha256(COMMITTED) == before
        and json.loads((release.RELEASE_DIR / release.REGISTRY).read_text()) == registry
    )
    if COMMITTED.name != out.name:
        assert not (release.RELEASE_DIR / out.name).exists()
    return source, out


def test_converted_release_loads_with_identical_tensors_and_grades(converted):
    source, out = converted
    old_model, old_config, old_state = load_trained(release.resolve_checkpoint(source), "cpu")
    new_model, new_config, new_state = load_trained(release.resolve_checkpoint(out), "cpu")
    assert (
        set(new_state) == set(old_state)
        and new_state["config"] == old_state["config"]
        and new_config == old_config
    )
    for key in ("stage", "epoch", "step", "best_metric", "best_epoch", "format_version"):
        assert new_state[key] == old_state[key], key
    assert set(new_state["model"]) == set(old_state["model"])
    for key, tensor in old_state["model"].items():
        assert new_state["model"][key].dtype == tensor.dtype and torch.equal(
            new_state["model"][key], tensor
        ), key
    kept = new_state["release"]
    assert (
        kept["metrics"] == old_state["release"]["metrics"]
        and kept["data"] == old_state["release"]["data"]
    )
    assert kept["train_command"] == old_state["release"]["train_command"]
    assert (
        kept["converted_from"]["sha256"] == file_sha256(source)
        and kept["file_format"] == "safetensors"
    )
    torch.manual_seed(0)
    lr = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        old_p = torch.softmax(old_model(lr).grade_logits.float(), 1)
        new_p = torch.softmax(new_model(lr).grade_logits.float(), 1)
    torch.testing.assert_close(new_p, old_p, atol=1e-6, rtol=0)
    assert torch.equal(new_model.predict_grades(new_p), old_model.predict_grades(old_p))


def test_plain_safetensors_and_json_open_the_release(converted):
    _, out = converted
    state = safetensors_torch.load_file(str(out))  # the model card's snippet: no repository code
    config = json.load(open(out.with_suffix(".json")))["config"]
    assert config["data"]["hr_size"] == 512 and len(state) == len(load_checkpoint(out)["model"])
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert sidecar["format"] == SIDECAR_FORMAT and sidecar["weights"] == {
        "file": out.name,
        "sha256": file_sha256(out),
        "bytes": out.stat().st_size,
    }
    assert sidecar["grade_thresholds"] == pytest.approx(state["grade_thresholds"].tolist())
    assert (
        sidecar["release"]["export_command"].startswith("python -m engine.export")
        and sidecar["release"]["commit"]
    )
    entry = json.loads((out.parent / release.REGISTRY).read_text())[release.DEFAULT_RELEASE]
    assert entry["file"] == out.name and entry["sha256"] == file_sha256(out)
    assert entry["sidecar"] == out.with_suffix(".json").name and entry[
        "sidecar_sha256"
    ] == file_sha256(out.with_suffix(".json"))
    assert not list(out.parent.glob(".*.tmp"))


def _copy_release(converted, tmp_path):
    _, out = converted
    folder = tmp_path / "pretrained_model"
    folder.mkdir()
    for name in (out.name, out.with_suffix(".json").name, release.REGISTRY):
        shutil.copyfile(out.parent / name, folder / name)
    return folder / out.name


def _one_line_error(call) -> str:
    with pytest.raises(CheckpointError) as caught:
        call()
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_tampered_sidecar_or_weights_are_refused(converted, tmp_path):
    weights = _copy_release(converted, tmp_path)
    sidecar = weights.with_suffix(".json")
    good_sidecar, good_weights = sidecar.read_bytes(), weights.read_bytes()
    name = release.DEFAULT_RELEASE

    facts = json.loads(good_sidecar)
    facts["config"]["model"]["grade_decoding"] = "argmax"  # a plausible edit, still valid JSON
    sidecar.write_text(json.dumps(facts, indent=2))
    for given in (name, weights, sidecar):
        message = _one_line_error(
            lambda given=given: release.resolve_checkpoint(given, weights.parent)
        )
        assert f"{sidecar} has SHA-256" in message and "releases it with" in message
    sidecar.write_bytes(good_sidecar)

    flipped = bytearray(good_weights)
    flipped[-100] ^= 0x01  # one bit of one tensor
    weights.write_bytes(bytes(flipped))
    message = _one_line_error(lambda: release.resolve_checkpoint(name, weights.parent))
    assert f"{weights} has SHA-256" in message
    # Without the registry, the sidecar's own record of the weights catches it too.
    (weights.parent / release.REGISTRY).unlink()
    message = _one_line_error(lambda: load_checkpoint(weights))
    assert f"{weights} is corrupt or not the weights {sidecar.name} describes" in message
    weights.write_bytes(good_weights)
    assert torch.equal(
        load_checkpoint(weights)["model"]["grade_thresholds"],
        load_checkpoint(sidecar)["model"]["grade_thresholds"],
    )

    sidecar.unlink()
    assert f"release sidecar not found: {sidecar}" in _one_line_error(
        lambda: load_checkpoint(weights)
    )
    sidecar.write_text("{not json")
    assert f"{sidecar} is not a readable release sidecar" in _one_line_error(
        lambda: load_checkpoint(weights)
    )


def test_predict_and_test_py_take_a_safetensors_release(tmp_path, capsys, monkeypatch):
    """The CLIs on a tiny safetensors release: by name, by path, and a tampered file stops them with exit 2."""
    run = tmp_path / "runs" / "tiny"
    tiny_checkpoint(run / "checkpoints" / "best.pt")
    folder = tmp_path / "pretrained_model"
    out = folder / "tiny_release.safetensors"
    assert run_cli(export.main, [str(run), "--out", str(out), "--format", "safetensors"]) == 0
    assert "sidecar SHA-256" in capsys.readouterr().out
    pt = export.export_release(run, tmp_path / "pt" / "tiny_release.pt").path
    monkeypatch.setattr(release, "RELEASE_DIR", folder)
    photo = tmp_path / "photo.png"
    Image.fromarray(textured_fundus(120, 160, seed=3)).save(photo)
    rows = []
    for checkpoint in ("tiny_release", str(pt)):
        target = tmp_path / f"pred_{len(rows)}"
        argv = [
            str(photo),
            "--checkpoint",
            checkpoint,
            "--out",
            str(target),
            "--quiet",
            "--workers",
            "0",
            "--amp",
            "off",
            "--no-panels",
        ]
        assert run_cli(predict_cli.main, argv) == 0
        rows.append((target / "predictions.csv").read_text().splitlines()[1].split(",")[:8])
    assert rows[0] == rows[1]  # the same weights graded the same, whichever format holds them
    argv = [
        "--quiet",
        "--checkpoint",
        "tiny_release",
        "--figures",
        str(tmp_path / "fig"),
        "--samples",
        "0",
        "--split",
        "val",
    ]
    with monkeypatch.context() as inside:  # a release writes runs/<release> in the working folder
        inside.chdir(tmp_path)
        assert run_cli(test_cli.main, argv) == 0
    assert (tmp_path / "runs" / "tiny_release" / "metrics_val_lr_tiny_release.json").is_file()
    facts = json.loads(out.with_suffix(".json").read_text())
    facts["release"]["metrics"] = {"made": "up"}
    out.with_suffix(".json").write_text(json.dumps(facts))
    capsys.readouterr()
    assert (
        run_cli(
            predict_cli.main,
            [str(photo), "--checkpoint", "tiny_release", "--out", str(tmp_path / "x"), "--quiet"],
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and str(out.with_suffix(".json")) in err and "\n" not in err
    with pytest.raises(
        CheckpointError, match=r"must end in \.safetensors for --format safetensors"
    ):
        export.export_release(run, folder / "x.pt", format="safetensors")
    with pytest.raises(CheckpointError, match=r"must be a \.pt or \.safetensors file"):
        export.export_release(run, folder / "x.bin")
