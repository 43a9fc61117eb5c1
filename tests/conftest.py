"""Shared fixtures: a tiny CPU configuration so end-to-end runs take seconds."""

import pytest

TINY = [
    "data.hr_size=64",
    "data.n_train=8",
    "data.n_val=4",
    "data.n_test=4",
    "data.crop_size=32",
    "data.backgrounds=retina",
    "model.isr_channels=8",
    "model.isr_blocks=1",
    "model.seg_width=0.25",
    "model.grader_hidden=32",
    "run.threads=2",
    # The plain fp32 path on every CPU kind (run.amp=auto would pick bf16 only on some).
    "run.amp=false",
    "run.channels_last=false",
    *[
        f"train.{stage}.{key}={value}"
        for stage in ("isr", "seg", "cls", "joint")
        for key, value in (("epochs", 1), ("batch_size", 4), ("schedule", "constant"))
    ],
]


@pytest.fixture
def tiny_overrides(tmp_path):
    """Overrides for a seconds-long run whose outputs land in tmp_path."""
    return [*TINY, f"run.out_dir={tmp_path / 'runs'}"]
