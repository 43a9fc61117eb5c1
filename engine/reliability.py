"""What keeps a long run going, or stops it cleanly: preemption signals, the non-finite step guard,
and the errors that end a run with one clear line (docs/RELIABILITY.md)."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterable

import torch

from engine import distributed

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
