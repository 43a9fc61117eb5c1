"""What keeps a long run going, or stops it cleanly: preemption signals, the non-finite step guard,
and the errors that end a run with one clear line (docs/RELIABILITY.md)."""

from __future__ import annotations

import logging
import math
import signal
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch

from engine import distributed
from engine.config import Config, TrainConfig

log = logging.getLogger(__name__)

# train.py's exit code after SIGTERM / SIGINT saved the run: EX_TEMPFAIL of sysexits.h, "temporary
# failure, try again". Rerunning the same command line with --resume continues the run.
PREEMPTED_EXIT_CODE = 75
# Every this many steps the trainer reads the guard's counters and, under torchrun, agrees on a
# stop: each is one device-to-host read (and one small all-reduce), never one per step.
SYNC_EVERY_STEPS = 10


class Preempted(Exception):
    """SIGTERM or SIGINT stopped the run at a step boundary, after it saved where it was."""


class TrainingError(RuntimeError):
    """A run that cannot go on (out of memory, only non-finite steps); the message says what to change."""


class StopSignals:
    """Turn SIGTERM and SIGINT into a request to stop at the next step boundary (``received``).

    The first signal only sets ``received``; the handlers then go back to what they were, so a
    second signal has its usual effect at once (Ctrl-C twice raises KeyboardInterrupt). A no-op
    outside the main thread, where Python cannot install handlers.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            self._previous = {
                signum: signal.signal(signum, self._handle) for signum in self.SIGNALS
            }
        return self

    def _handle(self, signum: int, _frame) -> None:
        self.received = signum
        self._restore()
        log.warning(
            "%s: saving at the next step boundary, then stopping (send it again to stop at once)",
            self.name,
        )

    @property
    def name(self) -> str:
        return signal.Signals(self.received).name if self.received is not None else ""

    def _restore(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous = {}

    def __exit__(self, *exc) -> None:
        self._restore()


class NonFiniteGuard:
    """Finds the steps whose losses or gradients are not finite, on the device, and counts them.

    :meth:`check` returns a 0/1 float flag without reading it (GradScaler's found-inf kernel; under
    torchrun summed over the processes, which each see their own losses), so the trainer can skip
    the update on the device; :meth:`read`, every few steps, brings the counts to the host.
    ``in_a_row`` survives epoch boundaries; ``skipped`` counts one epoch.
    """

    def __init__(self, device: torch.device) -> None:
        self.one = torch.ones((), device=device)
        self.skipped = torch.zeros((), device=device)
        self.in_a_row = torch.zeros((), device=device)
        self.longest = torch.zeros((), device=device)

    def new_epoch(self) -> None:
        self.skipped = torch.zeros_like(self.skipped)

    def check(self, losses: Iterable[torch.Tensor], grads: Iterable[torch.Tensor]) -> torch.Tensor:
        found = torch.zeros_like(self.one)
        groups: dict[tuple, list[torch.Tensor]] = {}
        for grad in grads:
            groups.setdefault((grad.device, grad.dtype), []).append(grad)
        for group in (
            groups.values()
        ):  # sets ``found`` to 1 on any inf or NaN; multiplying by 1 changes nothing
            torch._amp_foreach_non_finite_check_and_unscale_(group, found, self.one)
        losses = torch.stack([loss.detach().float().reshape(()) for loss in losses])
        found = torch.maximum(found, (~torch.isfinite(losses)).any().float())
        found = (
            distributed.all_reduce_sum(found) > 0
        ).float()  # every process skips the same steps
        self.skipped += found
        self.in_a_row = (self.in_a_row + 1) * found
        self.longest = torch.maximum(self.longest, self.in_a_row)
        return found

    def read(self) -> tuple[int, int]:
        """(steps skipped this epoch, the longest run of bad steps in a row so far): one host read."""
        skipped, longest = torch.stack([self.skipped, self.longest]).tolist()
        return int(skipped), int(longest)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"skipped": self.skipped.cpu(), "in_a_row": self.in_a_row.cpu()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.skipped = state["skipped"].to(self.one.device)
        self.in_a_row = state["in_a_row"].to(self.one.device)
        self.longest = self.in_a_row.clone()


@dataclass
class EpochTally:
    """What an epoch has done so far, on the device (no host read per step): batches, loss sums and
    applied steps, and the non-finite guard; a recovery checkpoint's ``position`` holds it."""

    guard: NonFiniteGuard
    good: torch.Tensor  # steps applied: a skipped step's losses stay out of the epoch's means
    done: int = 0
    since_save: int = 0  # steps since the last recovery checkpoint
    sums: dict[str, torch.Tensor] = field(default_factory=dict)

    def add(self, losses: dict[str, torch.Tensor], found_inf: torch.Tensor) -> None:
        for key, value in losses.items():
            self.sums[key] = self.sums.get(key, 0) + torch.where(
                found_inf > 0, 0.0, value.detach().float()
            )
        self.good = self.good + (1 - found_inf)
        self.done, self.since_save = self.done + 1, self.since_save + 1

    def position(self, crop_generator: torch.Generator) -> dict:
        """What the epoch's remaining steps depend on beyond the stage's state."""
        return {
            "batches": self.done,
            "crop_generator": crop_generator.get_state(),
            "sums": {key: value.cpu() for key, value in self.sums.items()},
            "good_steps": self.good.cpu(),
            "guard": self.guard.state_dict(),
        }

    def load(self, position: dict, device: torch.device) -> None:
        self.done = position["batches"]
        self.sums = {key: value.to(device) for key, value in position["sums"].items()}
        self.good = position["good_steps"].to(device)
        self.guard.load_state_dict(position["guard"])

    def means(self) -> dict[str, float]:
        """Mean losses over every process's applied steps (one all-reduce per epoch, not per step)."""
        totals = distributed.all_reduce_sum(
            torch.stack([self.sums[key] for key in self.sums] + [self.good])
        )
        steps_all = float(totals[-1])
        return {
            f"train_{key}": float(value) / steps_all if steps_all else math.nan
            for key, value in zip(self.sums, totals[:-1])
        }


def check_guard(guard: NonFiniteGuard, stage: str, epoch: int, limit: int, where_saved: str) -> int:
    """Read the guard (a host read, every few steps); stop after more than ``limit``
    (train.max_bad_steps) bad steps in a row. Returns the steps skipped this epoch."""
    skipped, longest = guard.read()
    if longest > limit:
        raise TrainingError(
            f"stopped in stage {stage}, epoch {epoch + 1}: {longest} steps in a row had a non-finite loss or gradient "
            f"(train.max_bad_steps={limit}); none was applied, so {where_saved} with the last good weights; "
            "lower the learning rates or check the data"
        )
    return skipped


def recovery_due(train: TrainConfig, steps_since_save: int, saved_at: float) -> bool:
    """Whether train.checkpoint_every_steps / checkpoint_every_minutes asks for a recovery checkpoint."""
    if train.checkpoint_every_steps and steps_since_save >= train.checkpoint_every_steps:
        return True
    return (
        train.checkpoint_every_minutes > 0
        and time.monotonic() - saved_at >= 60 * train.checkpoint_every_minutes
    )


def out_of_memory_message(
    config: Config, stage: str, device: torch.device, processes: int, amp: bool, first: bool
) -> str:
    """What ran out, and the switches that cut memory which are not on yet."""
    batch = getattr(config.train, stage).batch_size
    switches = (
        []
        if config.model.seg_checkpoint
        else ["model.seg_checkpoint=true (recomputes the segmentation net's activations)"]
    )
    if not amp:
        switches.append("run.amp=true (bf16 autocast)")
    switches.append(f"a smaller train.{stage}.batch_size")
    return (
        f"out of memory on {device} in {'the first' if first else 'a'} {stage} step (train.{stage}.batch_size={batch}, "
        f"{batch // processes} per process, data.hr_size={config.data.hr_size}); to cut memory try "
        + ", ".join(switches)
    )


def stop_requested(
    signals: StopSignals | None,
    world: distributed.World,
    device: torch.device,
    step: int | None,
    every: int,
) -> bool:
    """Whether SIGTERM/SIGINT asked to stop. Under torchrun every process must stop at the same
    step: they agree by an all-reduce every ``every`` steps (``step``) or when asked (None)."""
    received = signals is not None and signals.received is not None
    if not world.distributed:
        return received
    if step is not None and step % every:
        return False
    return distributed.any_rank(received, device)
