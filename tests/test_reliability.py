"""Reliability (docs/RELIABILITY.md): checksummed checkpoints, recovery checkpoints inside an epoch,
SIGKILL / SIGTERM then --resume bitwise equal to an uninterrupted run, one writer per folder,
skipped non-finite steps, the keep policy, and clear resource errors."""

import errno
import hashlib
import json
import logging
import math
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import train as train_cli
from data import prepare as prepare_cli
from data.lock import FolderLock, LockError
from engine import trainer as trainer_module
from engine.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from engine.cli import run_cli
from engine.config import load_config
from engine.reliability import PREEMPTED_EXIT_CODE, NonFiniteGuard, TrainingError
from engine.trainer import Trainer
from tests.conftest import TINY

ROOT = Path(__file__).resolve().parents[1]
# Two stages with crops, flips and dropout (every generator a resume must restore), 3 steps an epoch.
# One thread: on a shared 2-core machine two threads spin against other processes.
RUN = [
    *TINY,
    "run.threads=1",
    "train.stage=isr,cls",
    "data.flip=true",
    "train.max_steps_per_epoch=3",
    *[f"train.{stage}.{key}=2" for stage in ("isr", "cls") for key in ("epochs", "batch_size")],
]


def _train(argv):
    return run_cli(train_cli.main, ["--quiet", *argv])


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The uninterrupted run every interrupted one must equal."""
    out = tmp_path_factory.mktemp("straight")
    assert _train(["--name", "straight", *RUN, f"run.out_dir={out}"]) == 0
    return load_checkpoint(out / "straight" / "checkpoints" / "last.pt")


def _assert_same_weights(reference: dict, path: Path) -> dict:
    state = load_checkpoint(path)
    assert (state["stage"], state["epoch"], state["step"]) == (
        reference["stage"],
        reference["epoch"],
        reference["step"],
    )
    for key, value in reference["model"].items():
        assert torch.equal(value, state["model"][key]), key
    return state


def _log_rows(run: Path) -> list[str]:
    """log.csv without the wall-clock column."""
    lines = (run / "log.csv").read_text().splitlines()
    column = lines[0].split(",").index("seconds")
    return [",".join(v for i, v in enumerate(line.split(",")) if i != column) for line in lines]


# ----------------------------------------------------------------------------- checkpoint file
def test_every_single_byte_flip_is_detected(tmp_path):
    state = {
        "config": {"run": {"name": "x"}},
        "model": {"w": torch.randn(32, 32), "b": torch.zeros(3)},
        "stage": "cls",
        "epoch": 2,
    }
    data = save_checkpoint(state, tmp_path / "ck.pt").read_bytes()
    header = data.index(b"\n") + 1
    rng = random.Random(0)
    flipped = tmp_path / "flipped.pt"
    for offset in [
        *range(header),
        *rng.sample(range(header, len(data)), 300),
    ]:  # every header byte, 300 payload bytes
        corrupt = bytearray(data)
        corrupt[offset] ^= rng.randrange(1, 256)
        flipped.write_bytes(corrupt)
        with pytest.raises(CheckpointError, match="flipped.pt"):
            load_checkpoint(flipped)
    for corrupt in (data[:-1], data + b"\0", data[: len(data) // 2]):
        flipped.write_bytes(corrupt)
        with pytest.raises(
            CheckpointError, match="flipped.pt is corrupt: .* bytes after its header"
        ):
            load_checkpoint(flipped)


def test_verify_false_skips_only_the_digest_and_old_files_load_unverified(tmp_path, caplog):
    path = save_checkpoint({"config": {}, "model": {"w": torch.ones(2)}}, tmp_path / "ck.pt")
    data = bytearray(path.read_bytes())
    digest = data.index(b"sha256=") + len("sha256=")
    data[digest] = ord("0") if data[digest] != ord("0") else ord("1")
    path.write_bytes(data)
    with pytest.raises(CheckpointError, match="SHA-256 does not match"):
        load_checkpoint(path)
    assert torch.equal(load_checkpoint(path, verify=False)["model"]["w"], torch.ones(2))
    old = tmp_path / "old.pt"
    torch.save({"format_version": 1, "config": {}, "model": {"w": torch.zeros(1)}}, old)
    with caplog.at_level(logging.WARNING):
        assert torch.equal(load_checkpoint(old)["model"]["w"], torch.zeros(1))
    assert (
        "old.pt is a format_version 1 checkpoint, written before checksums: loaded unverified"
        in caplog.text
    )


def test_a_failed_write_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    path = save_checkpoint({"config": {}, "model": {"w": torch.zeros(2)}}, tmp_path / "last.pt")

    def disk_full(_handle):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("engine.checkpoint.os.fsync", disk_full)
    with pytest.raises(
        CheckpointError,
        match="could not write checkpoint .*last.pt: No space left on device; the previous checkpoint there is intact",
    ):
        save_checkpoint({"config": {}, "model": {"w": torch.ones(2)}}, path)
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.zeros(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # no half-written file left


def test_torchvision_weights_must_match_the_hash_in_their_name(tmp_path):
    from models.grading import load_torchvision_state

    state = {"conv1.weight": torch.zeros(1)}
    good = tmp_path / "good.pth"
    torch.save(state, good)
    prefix = hashlib.sha256(good.read_bytes()).hexdigest()[:8]
    named = good.rename(tmp_path / f"resnet18-{prefix}.pth")
    assert "conv1.weight" in load_torchvision_state(named, "resnet18")
    wrong = named.rename(tmp_path / f"resnet18-{'0' * 8 if prefix != '0' * 8 else '1' * 8}.pth")
    with pytest.raises(ValueError, match="is corrupt: its SHA-256"):
        load_torchvision_state(wrong, "resnet18")


def test_a_resumed_epoch_starts_its_sampler_after_the_samples_it_trained_on():
    from engine.distributed import EpochShuffleSampler, World

    for world in (World(), World(1, 3)):
        sampler = EpochShuffleSampler(23, 7, world)
        sampler.set_epoch(4)
        whole = list(sampler)
        sampler.set_epoch(4, start=5)
        assert list(sampler) == whole[5:] and len(sampler) == len(whole) - 5
        sampler.set_epoch(5)  # the next epoch starts at its beginning
        assert len(list(sampler)) == len(whole)


# ----------------------------------------------------------------------------- one writer
def test_a_second_writer_is_refused_naming_the_holder_and_stale_locks_are_taken_over(
    tmp_path, tiny_overrides, capsys, caplog
):
    holder = f"PID {os.getpid()} on host {socket.gethostname()}"
    path = tmp_path / "x.lock"
    lock = FolderLock(path, "the thing").acquire()
    with pytest.raises(LockError, match=f"the thing is in use by {holder}"):
        FolderLock(path, "the thing").acquire()
    lock.release()
    assert not path.exists()
    # train.py on a run folder another process writes, data.prepare on a cache another builds
    with FolderLock(tmp_path / "runs" / "busy" / "train.lock", "run folder"):
        assert _train(["--name", "busy", *tiny_overrides]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: run folder") and holder in err and err.count("\n") == 1
    with FolderLock(tmp_path / "cache" / "prepare.lock", "cache"):
        argv = [
            "--dataset",
            "idrid",
            "--root",
            str(tmp_path / "idrid"),
            "--out",
            str(tmp_path / "cache"),
            "--quiet",
        ]
        assert prepare_cli.main(argv) == 2
    assert holder in capsys.readouterr().err
    # a lock file whose holder died (no flock on it) is stale: taken over, naming the dead holder
    path.write_text(
        json.dumps({"pid": 999999, "host": "gone", "since": "then", "command": "train.py"})
    )
    with caplog.at_level(logging.WARNING), FolderLock(path, "the thing"):
        assert json.loads(path.read_text())["pid"] == os.getpid()
    assert "took over the stale lock" in caplog.text and "PID 999999 on host gone" in caplog.text


# ----------------------------------------------------------------------------- --resume
def test_resume_starts_an_empty_run_and_refuses_another_config(
    tmp_path, tiny_overrides, capsys, caplog
):
    argv = [
        "--name",
        "requeued",
        "--stage",
        "seg",
        "train.max_steps_per_epoch=1",
        *tiny_overrides,
        "run.threads=1",
    ]
    with caplog.at_level(logging.INFO):
        assert _train(["--resume", *argv]) == 0
    assert "no checkpoint in" in caplog.text and "starting the run" in caplog.text
    assert _train(["--resume", *argv, "model.seg_width=0.5", "loss.seg_weight=2"]) == 2
    err = capsys.readouterr().err
    assert (
        "was trained with another config: loss.seg_weight (1.0 -> 2.0); model.seg_width (0.25 -> 0.5)"
        in err
    )
    caplog.clear()
    with caplog.at_level(logging.INFO):  # run-time switches and more epochs may change
        assert _train(["--resume", *argv, "run.device=cpu", "train.seg.epochs=2"]) == 0
    assert "checkpoints/last.pt: stage seg, after epoch 1" in caplog.text
    assert len((tmp_path / "runs" / "requeued" / "log.csv").read_text().splitlines()) == 3


def test_sigkill_inside_an_epoch_then_resume_is_bitwise_equal(tmp_path, straight):
    argv = ["--name", "killed", *RUN, f"run.out_dir={tmp_path}", "train.checkpoint_every_steps=1"]
    recovery = tmp_path / "killed" / "checkpoints" / "recovery.pt"
    with (tmp_path / "child.log").open("w") as output:
        child = subprocess.Popen(
            [sys.executable, "train.py", "--quiet", *argv],
            cwd=ROOT,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 300
        while not recovery.exists() and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        child.send_signal(signal.SIGKILL)
        assert child.wait() == -signal.SIGKILL, (tmp_path / "child.log").read_text()[-2000:]
    position = load_checkpoint(recovery)[
        "position"
    ]  # killed inside an epoch, after a recovery checkpoint
    assert 1 <= position["batches"] < 3
    assert _train(["--resume", *argv]) == 0
    _assert_same_weights(straight, tmp_path / "killed" / "checkpoints" / "last.pt")
    assert not recovery.exists()


def test_sigterm_saves_a_recovery_checkpoint_exits_75_and_resumes_bitwise_equal(
    tmp_path, straight, monkeypatch, capsys
):
    calls = []
    step_cls = Trainer.step_cls

    def preempted_at_the_second_cls_step(self, batch):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # as a scheduler would, in the middle of a step
        return step_cls(self, batch)

    monkeypatch.setattr(Trainer, "step_cls", preempted_at_the_second_cls_step)
    argv = [
        "--name",
        "preempted",
        *RUN,
        f"run.out_dir={tmp_path}",
    ]  # no periodic recovery checkpoints
    handler = signal.getsignal(signal.SIGTERM)
    assert _train(argv) == PREEMPTED_EXIT_CODE
    assert (
        "preempted: stopped by SIGTERM in stage cls, epoch 1, after batch 2"
        in capsys.readouterr().err
    )
    assert signal.getsignal(signal.SIGTERM) == handler  # restored
    state = load_checkpoint(tmp_path / "preempted" / "checkpoints" / "recovery.pt")
    assert (state["stage"], state["epoch"], state["position"]["batches"]) == ("cls", 0, 2)
    monkeypatch.undo()
    assert _train(["--resume", *argv]) == 0
    _assert_same_weights(straight, tmp_path / "preempted" / "checkpoints" / "last.pt")
    assert len(_log_rows(tmp_path / "preempted")) == 5  # header + 2 isr + 2 cls epochs, each once


def test_keep_policy_and_a_stop_between_stages(tmp_path, straight, monkeypatch, capsys):
    """Preempted right after the isr stage's last epoch: its last checkpoint has no optimiser state
    (a later stage follows) and still resumes; run.keep=1 keeps each stage's newest epoch too."""
    validate = Trainer.validate

    def signal_at_the_last_isr_validation(self, stage):
        if stage == "isr" and self.global_step == 6:  # the isr stage's second and last epoch
            os.kill(os.getpid(), signal.SIGTERM)
        return validate(self, stage)

    monkeypatch.setattr(Trainer, "validate", signal_at_the_last_isr_validation)
    argv = [
        "--name",
        "kept",
        *RUN,
        f"run.out_dir={tmp_path}",
        "run.keep=1",
        "train.checkpoint_every_steps=1",
    ]
    assert _train(argv) == PREEMPTED_EXIT_CODE
    assert "stopped by SIGTERM after stage isr, epoch 2" in capsys.readouterr().err
    folder = tmp_path / "kept" / "checkpoints"
    assert "optimizers" not in load_checkpoint(folder / "isr_last.pt")
    monkeypatch.undo()
    assert _train(["--resume", *argv]) == 0
    _assert_same_weights(straight, folder / "last.pt")
    assert sorted(p.name for p in folder.iterdir()) == [
        "best.pt",
        "cls_best.pt",
        "cls_epoch002.pt",
        "cls_last.pt",
        "isr_best.pt",
        "isr_epoch002.pt",
        "isr_last.pt",
        "last.pt",
    ]
    assert (folder / "last.pt").samefile(folder / "cls_last.pt") and (folder / "best.pt").samefile(
        folder / "cls_best.pt"
    )
    assert "optimizers" in load_checkpoint(
        folder / "cls_last.pt"
    )  # the run's last: training it longer needs them
    for name in ("isr_best.pt", "cls_best.pt", "isr_epoch002.pt", "cls_epoch002.pt"):
        assert "optimizers" not in load_checkpoint(folder / name), name


def test_under_torchrun_every_process_stops_at_the_same_step(tmp_path):
    """SIGTERM reaches one process of two; both stop after the same step and rank 0 saves it."""
    import torch.multiprocessing as mp

    from tests import reliability_worker

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    overrides = [
        *TINY,
        "run.threads=1",
        "model.use_lesions=false",
        "train.stage=isr",
        "train.isr.batch_size=2",
        f"run.out_dir={tmp_path}",
        "run.name=ddp",
    ]  # 4 steps an epoch per process
    mp.start_processes(
        reliability_worker.run,
        args=(2, port, overrides, str(tmp_path)),
        nprocs=2,
        start_method="spawn",
    )
    results = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(2)]
    assert results == [{"rank": rank, "preempted": True, "step": 2} for rank in range(2)]
    assert (
        load_checkpoint(tmp_path / "ddp" / "checkpoints" / "recovery.pt")["position"]["batches"]
        == 2
    )


# ----------------------------------------------------------------------------- numerical guards
@pytest.mark.parametrize(
    "impl", ["auto", "fused"]
)  # CPU auto: the flag read on the host; fused: skipped on the device
def test_a_non_finite_gradient_skips_the_step_and_is_counted(tmp_path, tiny_overrides, impl):
    trainer = Trainer(
        load_config(
            None,
            [
                *tiny_overrides,
                "run.threads=1",
                "train.cls.batch_size=2",
                f"run.optimizer_impl={impl}",
            ],
        )
    )
    optimizers = trainer._prepare_stage("cls")
    grader = list(trainer.model.grader.parameters())
    before_each_step = []
    step_cls = trainer.step_cls

    def poisoned_second_step(batch):
        before_each_step.append([p.detach().clone() for p in grader])
        losses = step_cls(batch)
        if len(before_each_step) == 2:
            grader[-1].grad[0] = math.nan
        return losses

    trainer.step_cls = poisoned_second_step
    row = trainer.train_one_epoch("cls", 0, optimizers, trainer.train_loader("cls"))
    after = [p.detach().clone() for p in grader]
    changed = [
        any(not torch.equal(a, b) for a, b in zip(x, y))
        for x, y in zip(before_each_step, [*before_each_step[1:], after])
    ]
    assert changed == [True, False, True, True]  # the second step changed nothing
    assert row["skipped_steps"] == 1 and math.isfinite(row["train_loss"])
    assert all(int(state["step"]) == 3 for state in optimizers["grader"].state.values())


def test_the_guard_reads_nothing_on_the_host_when_the_optimiser_skips_on_the_device(
    tiny_overrides, monkeypatch
):
    """With fused Adam (run.optimizer_impl=auto on CUDA) checking, skipping and stepping are all on the device."""
    trainer = Trainer(
        load_config(None, [*tiny_overrides, "run.threads=1", "run.optimizer_impl=fused"])
    )
    optimizers = trainer._prepare_stage("cls")
    params = [
        p for opt in optimizers.values() for group in opt.param_groups for p in group["params"]
    ]
    batch = trainer._batch(next(iter(trainer.train_loader("cls"))), "cls")
    guard = NonFiniteGuard(trainer.device)
    for poison in (False, True):
        losses = trainer.step_cls(batch)
        if poison:
            params[0].grad.fill_(math.nan)
        with monkeypatch.context() as patch:
            for name in (
                "item",
                "tolist",
                "numpy",
                "cpu",
                "__bool__",
                "__int__",
                "__float__",
                "__index__",
            ):
                patch.setattr(
                    torch.Tensor,
                    name,
                    lambda *a, name=name, **k: pytest.fail(f"host read: Tensor.{name}()"),
                )
            found_inf = trainer._apply_gradients(optimizers, params, losses, guard)
        assert float(found_inf) == float(poison)
    assert guard.read() == (1, 1)


def test_only_non_finite_steps_stop_the_run_and_nan_metrics_are_never_best(
    tmp_path, tiny_overrides, monkeypatch
):
    step_cls, calls = Trainer.step_cls, []

    def every_step_of_the_second_epoch_diverges(self, batch):
        calls.append(1)
        losses = step_cls(self, batch)
        return {**losses, "loss": losses["loss"] * math.nan} if len(calls) > 4 else losses

    monkeypatch.setattr(Trainer, "step_cls", every_step_of_the_second_epoch_diverges)
    monkeypatch.setattr(trainer_module, "selection_metric", lambda stage, metrics: math.nan)
    overrides = [
        *tiny_overrides,
        "run.threads=1",
        "run.name=nan",
        "train.stage=cls",
        "train.cls.batch_size=2",
        "train.cls.epochs=3",
        "train.max_bad_steps=3",
    ]
    with pytest.raises(
        TrainingError,
        match=r"epoch 2: 4 steps in a row had a non-finite loss .*train.max_bad_steps=3.*last.pt holds the run",
    ):
        Trainer(load_config(None, overrides)).fit()
    folder = tmp_path / "runs" / "nan" / "checkpoints"
    assert load_checkpoint(folder / "last.pt")["epoch"] == 1  # the last good checkpoint
    assert not (folder / "cls_best.pt").exists() and not (folder / "best.pt").exists()


def test_out_of_memory_names_the_batch_size_and_the_switches_that_cut_memory(
    tmp_path, tiny_overrides
):
    trainer = Trainer(load_config(None, [*tiny_overrides, "run.threads=1", "run.amp=false"]))
    optimizers = trainer._prepare_stage("cls")

    def out_of_memory(batch):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    trainer.step_cls = out_of_memory
    with pytest.raises(
        TrainingError,
        match=r"out of memory on cpu in the first cls step \(train.cls.batch_size=4, 4 per process, "
        r"data.hr_size=64\); to cut memory try model.seg_checkpoint=true .*, run.amp=true .*, "
        r"a smaller train.cls.batch_size",
    ):
        trainer.train_one_epoch("cls", 0, optimizers, trainer.train_loader("cls"))
