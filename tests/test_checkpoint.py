"""Checkpoints: atomic write, identical outputs after a round trip, clear errors for bad files."""

import pytest
import torch

from engine.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_model_state,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from models import create_model


def _model(**kw):
    torch.manual_seed(0)
    return create_model(
        "deepmt_dr", scale=4, isr_channels=8, isr_blocks=1, seg_width=0.25, **kw
    ).eval()


def test_round_trip_restores_identical_outputs(tmp_path):
    model = _model()
    for p in model.parameters():  # make every weight differ from a fresh init
        p.data.add_(torch.randn_like(p) * 0.01)
    lr = torch.rand(2, 3, 16, 16)
    expected = model(lr)
    path = save_checkpoint(
        {"config": {"any": 1}, "model": model.state_dict()}, tmp_path / "ck" / "best.pt"
    )
    assert not list(path.parent.glob("*.tmp"))
    restored = _model()
    restored.load_state_dict(load_checkpoint(path)["model"])
    for a, b in zip(restored(lr), expected):
        assert torch.equal(a, b)


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "none.pt")


def test_corrupt_and_foreign_files(tmp_path):
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt.pt is not a readable checkpoint"):
        load_checkpoint(corrupt)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(1)}, foreign)
    with pytest.raises(CheckpointError, match="not a DeepMT-DR checkpoint"):
        load_checkpoint(foreign)
    old = tmp_path / "old.pt"
    torch.save({"format_version": 0, "config": {}, "model": {}}, old)
    with pytest.raises(CheckpointError, match="format_version 0"):
        load_checkpoint(old)


def test_unsafe_pickle_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("executed",))

    path = tmp_path / "evil.pt"
    torch.save({"format_version": 1, "config": {}, "model": Evil()}, path)
    with pytest.raises(CheckpointError, match="evil.pt"):
        load_checkpoint(path)


def test_mismatched_model_names_the_tensors(tmp_path):
    state = _model().state_dict()
    other = create_model("deepmt_dr", scale=4, isr_channels=8, isr_blocks=1, seg_width=0.5)
    with pytest.raises(CheckpointError, match="shape mismatch: .*seg"):
        load_model_state(other, state, "ck.pt")
    no_seg = create_model("deepmt_dr", scale=4, isr_channels=8, isr_blocks=1, use_lesions=False)
    with pytest.raises(CheckpointError, match="unexpected: seg"):
        load_model_state(no_seg, state, "ck.pt")


def test_rng_state_round_trip(tmp_path):
    import random

    import numpy as np

    state = rng_state()
    path = save_checkpoint({"config": {}, "model": {}, "rng": state}, tmp_path / "r.pt")
    first = (random.random(), np.random.rand(), torch.rand(1))
    set_rng_state(load_checkpoint(path)["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1)) == first


def test_link_checkpoint_is_a_snapshot(tmp_path):
    from engine.checkpoint import link_checkpoint

    first = save_checkpoint(
        {"config": {}, "model": {"w": torch.zeros(2)}}, tmp_path / "stage_last.pt"
    )
    link_checkpoint(first, tmp_path / "best.pt")
    save_checkpoint(
        {"config": {}, "model": {"w": torch.ones(2)}}, tmp_path / "stage_last.pt"
    )  # next epoch
    assert torch.equal(load_checkpoint(tmp_path / "best.pt")["model"]["w"], torch.zeros(2))
    assert torch.equal(load_checkpoint(tmp_path / "stage_last.pt")["model"]["w"], torch.ones(2))
    link_checkpoint(tmp_path / "stage_last.pt", tmp_path / "best.pt")  # replacing an existing file
    assert torch.equal(load_checkpoint(tmp_path / "best.pt")["model"]["w"], torch.ones(2))


def test_init_from_starts_a_new_run_from_another_runs_weights(tmp_path, tiny_overrides):
    from engine.checkpoint import CheckpointError
    from engine.config import load_config
    from engine.trainer import Trainer

    first = Trainer(load_config(None, [*tiny_overrides, "train.stage=isr", "run.name=pre"]))
    first.fit()
    source = tmp_path / "runs" / "pre" / "checkpoints" / "best.pt"
    second = Trainer(
        load_config(
            None, [*tiny_overrides, "train.stage=seg", "run.name=fine", f"train.init_from={source}"]
        )
    )
    second.fit()
    started = second.model.isr.state_dict()  # the seg stage does not touch the ISR net
    for name, value in first.model.isr.state_dict().items():
        assert torch.equal(started[name], value), name
    wrong = Trainer(
        load_config(
            None,
            [*tiny_overrides, "run.name=bad", "model.isr_channels=4", f"train.init_from={source}"],
        )
    )
    with pytest.raises(CheckpointError, match="pre/checkpoints/best.pt does not match"):
        wrong.fit()


def test_init_from_takes_a_run_folder_or_a_release_name(tmp_path, tiny_overrides, monkeypatch):
    """A larger model starts from a released one (issue 28: the 1024 run from the 512 release):
    train.init_from names a run folder or a release in pretrained_model/, hash-checked."""
    pytest.importorskip("safetensors")
    from engine import export, release
    from engine.checkpoint import CheckpointError
    from engine.cli import run_cli
    from engine.config import load_config
    from engine.trainer import Trainer

    first = Trainer(load_config(None, [*tiny_overrides, "train.stage=isr", "run.name=pre"]))
    first.fit()
    folder = tmp_path / "releases"
    out = folder / "tiny_release.safetensors"
    assert run_cli(export.main, [str(tmp_path / "runs" / "pre"), "--out", str(out)]) == 0
    monkeypatch.setattr(release, "RELEASE_DIR", folder)
    trained = first.model.isr.state_dict()
    for source, exact in ((tmp_path / "runs" / "pre", True), ("tiny_release", False)):
        name = f"from_{'run' if exact else 'release'}"
        second = Trainer(
            load_config(
                None,
                [
                    *tiny_overrides,
                    "train.stage=seg",
                    f"run.name={name}",
                    f"train.init_from={source}",
                ],
            )
        )
        second.fit()
        for key, value in first.model.isr.state_dict().items():
            started = second.model.isr.state_dict()[key]
            # a release stores float16 weights: the start is the trained weights, rounded
            expected = value if exact else value.half().float()
            assert torch.equal(started, expected), (source, key)
    assert set(trained) == set(second.model.isr.state_dict())
    missing = Trainer(
        load_config(None, [*tiny_overrides, "run.name=none", "train.init_from=no_such_release"])
    )
    with pytest.raises(CheckpointError) as caught:
        missing.fit()
    message = str(caught.value)
    assert message.startswith("train.init_from=no_such_release: ") and "\n" not in message
