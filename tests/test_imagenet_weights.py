"""model.imagenet_weights: a local torchvision file (hash-checked by its name) or "imagenet" (torch's hub cache).

Nothing here touches the network: torch.hub's download function is replaced in every test that could reach it.
"""

import hashlib
import logging
import urllib.error
from pathlib import Path

import pytest
import torch
from torchvision.models import resnet18, resnet50
from torchvision.models._api import Weights, WeightsEnum

import train as train_cli
from engine.builders import build_model
from engine.cli import run_cli
from engine.config import ConfigError, load_config
from models import grading
from models.grading import GradingNet, ImageNetWeightsError
from tests.conftest import TINY


@pytest.fixture(scope="module")
def reference_file(tmp_path_factory) -> tuple[Path, dict]:
    """A random torchvision ResNet-18 state dict on disk (45 MB), and the state."""
    torch.manual_seed(0)
    state = resnet18(weights=None).state_dict()
    path = tmp_path_factory.mktemp("weights") / "resnet18.pth"
    torch.save(state, path)
    return path, state


def _sha_prefix(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:8]


def _named(source: Path, folder: Path, prefix: str) -> Path:
    target = folder / f"resnet18-{prefix}.pth"
    target.write_bytes(source.read_bytes())
    return target


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """An empty hub cache in tmp_path and a download that fails as it does without network; returns the calls."""
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    calls = []

    def no_network(url, dst, hash_prefix=None, progress=True):
        calls.append(url)
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return calls


def test_local_file_with_its_hash_prefix_loads_and_says_it_was_checked(
    reference_file, tmp_path, caplog
):
    source, state = reference_file
    path = _named(source, tmp_path, _sha_prefix(source))
    with caplog.at_level(logging.INFO, logger="models.grading"):
        net = GradingNet(pretrained_path=path)
    torch.testing.assert_close(net.layer4[1].conv2.weight, state["layer4.1.conv2.weight"])
    torch.testing.assert_close(net.stem.weight[:, :3], state["conv1.weight"])
    assert "hash-checked against its name" in caplog.text and "not hash-checked" not in caplog.text


def test_local_file_whose_content_does_not_match_its_hash_prefix_is_refused(
    reference_file, tmp_path
):
    source, _ = reference_file
    prefix = _sha_prefix(source)
    path = _named(source, tmp_path, "0" * 8 if prefix != "0" * 8 else "1" * 8)
    with pytest.raises(
        ImageNetWeightsError, match="is corrupt: its SHA-256 .* does not start with"
    ):
        GradingNet(pretrained_path=path)
    config = load_config(None, [*TINY, f"model.imagenet_weights={path}"])
    with pytest.raises(ConfigError, match=r"^model\.imagenet_weights: .*is corrupt") as caught:
        build_model(config)
    assert "\n" not in str(caught.value)


def test_local_file_without_a_hash_prefix_is_checked_by_keys_and_shapes(
    reference_file, tmp_path, caplog
):
    source, state = reference_file
    with caplog.at_level(logging.INFO, logger="models.grading"):
        net = GradingNet(pretrained_path=source)
    torch.testing.assert_close(net.layer1[0].bn1.running_var, state["layer1.0.bn1.running_var"])
    assert "not hash-checked" in caplog.text
    other = tmp_path / "resnet50.pth"
    torch.save(resnet50(weights=None).state_dict(), other)
    with pytest.raises(
        ImageNetWeightsError, match="not a torchvision resnet18 state dict; .*shape mismatch"
    ):
        GradingNet(pretrained_path=other)


def test_imagenet_offline_without_a_cached_file_is_one_line_naming_the_file_and_folder(
    offline_hub, tmp_path
):
    config = load_config(None, [*TINY, "model.imagenet_weights=imagenet"])
    with pytest.raises(ConfigError) as caught:
        build_model(config)
    message = str(caught.value)
    folder = tmp_path / "hub" / "checkpoints"
    assert message.startswith("model.imagenet_weights=imagenet: ") and "\n" not in message
    assert (
        f"put resnet18-f37072fd.pth in {folder}" in message
        and "model.imagenet_weights=PATH" in message
    )
    assert offline_hub == ["https://download.pytorch.org/models/resnet18-f37072fd.pth"]


def test_imagenet_offline_train_cli_prints_one_error_line(offline_hub, tmp_path, capsys):
    code = run_cli(
        train_cli.main,
        [
            "--quiet",
            *TINY,
            f"run.out_dir={tmp_path / 'runs'}",
            "model.grader_width=1",  # ImageNet weights need the published widths
            "model.imagenet_weights=imagenet",
        ],
    )
    err = capsys.readouterr().err
    assert (
        code == 2
        and err.count("\n") == 1
        and err.startswith("error: model.imagenet_weights=imagenet: ")
    )
    assert "resnet18-f37072fd.pth" in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists()


def test_imagenet_loads_a_file_in_the_hub_cache_without_downloading(
    reference_file, offline_hub, tmp_path, monkeypatch
):
    source, state = reference_file
    prefix = _sha_prefix(source)

    class Stand_in(
        WeightsEnum
    ):  # torchvision's weights API, pointing at a file named by this test's weights
        IMAGENET1K_V1 = Weights(
            url=f"https://download.pytorch.org/models/resnet18-{prefix}.pth",
            transforms=None,
            meta={},
        )

    monkeypatch.setitem(grading.IMAGENET_WEIGHTS, "resnet18", Stand_in.IMAGENET1K_V1)
    folder = tmp_path / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    _named(source, folder, prefix)
    model = build_model(load_config(None, [*TINY, "model.imagenet_weights=imagenet"]))
    torch.testing.assert_close(
        model.grader.layer2[0].downsample[0].weight, state["layer2.0.downsample.0.weight"]
    )
    assert offline_hub == []  # loaded from the cache, nothing downloaded
    (folder / f"resnet18-{prefix}.pth").write_bytes(b"damaged")
    with pytest.raises(ConfigError, match=f"resnet18-{prefix}.pth is corrupt"):
        build_model(load_config(None, [*TINY, "model.imagenet_weights=imagenet"]))


def test_imagenet_weights_config_values_are_checked():
    with pytest.raises(ConfigError, match="model.imagenet_weights: the chen_net grader"):
        load_config(None, ["model.grader=chen_net", "model.imagenet_weights=imagenet"])
    with pytest.raises(ConfigError, match="model.imagenet_weights must be"):
        load_config(None, ["model.imagenet_weights="])
