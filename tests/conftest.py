"""Shared fixtures: a tiny CPU configuration so end-to-end runs take seconds."""

import os

import pytest
import torch

# pyproject's addopts run the suite in two pytest-xdist workers (the tests' tiny tensors keep only
# one core busy per process). Each worker then computes on one thread: OpenMP threads of two
# processes spinning against each other on two cores make a run several times slower.
THREADS = 1 if "PYTEST_XDIST_WORKER" in os.environ else 2
torch.set_num_threads(THREADS)
if "PYTEST_XDIST_WORKER" in os.environ:
    # The processes the tests start (CLIs, torchrun, the notebook's kernel) inherit it: at two
    # threads beside the other worker, the figures notebook took 31 s instead of 7.
    os.environ["OMP_NUM_THREADS"] = str(THREADS)

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
    f"run.threads={THREADS}",
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
