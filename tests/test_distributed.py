"""Distributed training (engine/distributed.py): samplers, and 2-process Gloo runs on the CPU."""

import socket

import pytest
import torch
import torch.multiprocessing as mp
from torch.utils.data import DataLoader

from engine.checkpoint import load_checkpoint
from engine.config import load_config
from engine.distributed import (
    EpochShuffleSampler,
    ShardSampler,
    World,
    interleave,
    local_batch_size,
)
from engine.evaluator import evaluate
from engine.trainer import Trainer
from tests import ddp_worker
from tests.conftest import TINY

# ISR alone (no BatchNorm, losses that are means over samples) on whole images: two processes
# with half the batch each must match one process with the whole batch.
STEPS = [
    *TINY,
    "model.use_lesions=false",
    "data.crop_size=0",
    "train.isr.batch_size=4",
    "train.max_steps_per_epoch=2",
    "run.threads=1",
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _spawn(overrides, mode, out):
    mp.start_processes(
        ddp_worker.run,
        args=(2, _free_port(), overrides, mode, str(out)),
        nprocs=2,
        start_method="spawn",
    )


def test_epoch_shuffle_sampler_keeps_the_single_process_order_and_reshuffles():
    data = list(range(23))
    for epoch in (0, 3):
        old = torch.cat(
            list(
                DataLoader(
                    data,
                    batch_size=5,
                    shuffle=True,
                    generator=torch.Generator().manual_seed(700 + epoch),
                )
            )
        ).tolist()
        sampler = EpochShuffleSampler(len(data), 700)
        sampler.set_epoch(epoch)
        assert list(sampler) == old
    sampler.set_epoch(4)
    assert list(sampler) != old


def test_epoch_shuffle_sampler_deals_one_permutation_to_the_ranks():
    shards = []
    for rank in range(3):
        sampler = EpochShuffleSampler(10, 5, World(rank, 3))
        sampler.set_epoch(2)
        shards.append(list(sampler))
    assert [len(shard) for shard in shards] == [4, 4, 4]  # 10 padded to 12 by wrapping
    single = EpochShuffleSampler(10, 5)
    single.set_epoch(2)
    assert interleave(shards)[:10] == list(single)


def test_shard_sampler_sees_every_sample_once():
    shards = [list(ShardSampler(10, World(rank, 4))) for rank in range(4)]
    assert sorted(i for shard in shards for i in shard) == list(range(10))
    assert interleave(shards) == list(range(10))


def test_global_batch_must_split_evenly():
    assert local_batch_size(8, World(1, 4), "train.isr.batch_size") == 2
    with pytest.raises(
        ValueError, match="train.isr.batch_size=6 must be divisible by the 4 processes"
    ):
        local_batch_size(6, World(0, 4), "train.isr.batch_size")


def test_two_processes_match_one_with_the_same_global_batch(tmp_path):
    overrides = [*STEPS, f"run.out_dir={tmp_path}"]
    _spawn(overrides, "steps", tmp_path)
    ranks = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=False) for rank in range(2)]

    single = Trainer(load_config(None, overrides))
    optimizers = single._prepare_stage("isr")
    single.train_one_epoch("isr", 0, optimizers)
    reference = evaluate(single.model, single.val_loader("isr"), single.device, "lr")

    for name, value in single.model.isr.state_dict().items():
        assert torch.equal(ranks[0]["isr"][name], ranks[1]["isr"][name]), name  # ranks in sync
        torch.testing.assert_close(ranks[0]["isr"][name], value, rtol=1e-5, atol=1e-6)
    # Distributed evaluation pools the shards: every validation image once, in dataset order.
    for rank in ranks:
        assert rank["ids"] == reference.ids
        assert rank["metrics"]["sr"]["sr"]["n"] == len(reference.ids) == 4
        torch.testing.assert_close(rank["probs"], reference.probs, rtol=1e-4, atol=1e-5)
        assert rank["metrics"]["sr"]["sr"]["psnr"] == pytest.approx(
            reference.metrics["sr"]["sr"]["psnr"], abs=1e-3
        )


def test_distributed_fit_writes_once_and_resumes(tmp_path):
    overrides = [
        *TINY,
        "train.stage=isr,cls",
        "run.threads=1",
        f"run.out_dir={tmp_path}",
        "run.name=ddp",
    ]
    _spawn(overrides, "fit", tmp_path)
    run = tmp_path / "ddp"
    rows = (run / "log.csv").read_text().splitlines()
    # isr and cls 1 epoch each, then the resumed run's second cls epoch: one line each (rank 0 writes).
    assert [row.split(",")[:2] for row in rows[1:]] == [["isr", "1"], ["cls", "1"], ["cls", "2"]]
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert state["stage"] == "cls"


def test_torchrun_train_py_two_processes(tmp_path):
    """The launch line of the README: torchrun runs train.py in 2 processes; rank 0 writes one run."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(_free_port()),
        str(root / "train.py"),
        "--quiet",
        "--name",
        "ddp",
        "--stage",
        "isr",
        *TINY,
        "run.threads=1",
        f"run.out_dir={tmp_path}",
    ]
    result = subprocess.run(
        command, cwd=root, capture_output=True, text=True, timeout=600, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("done: checkpoints in") == 1  # printed by rank 0 only
    assert "x 2 processes" in result.stdout
    rows = (tmp_path / "ddp" / "log.csv").read_text().splitlines()
    assert len(rows) == 2 and rows[1].startswith("isr,1,")
