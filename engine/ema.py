"""Exponential moving average of the trained sub-nets' weights (``train.ema_decay``).

Not ``torch.optim.swa_utils.AveragedModel``: its update reads its step count on the host at every
call (``bool(n_averaged == 0)``), and it cannot leave out a step the non-finite guard skipped without
reading that flag on the host too. Here an update is three multi-tensor ops on the device, weighted
by the guard's flag.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import nn


class WeightEMA:
    """EMA of the parameters and buffers of ``model``'s sub-nets named ``prefixes`` (a stage's
    trained ones; the frozen ones do not change), keyed by their ``model.state_dict()`` names.

    Starts at the model's current weights. :meth:`update` after each optimiser step:
    ``ema += (1 - decay) * (1 - found_inf) * (w - ema)`` for floating-point tensors (BatchNorm's
    running statistics included), integer buffers (``num_batches_tracked``) copied.
    """

    def __init__(self, model: nn.Module, prefixes: Iterable[str], decay: float) -> None:
        starts = tuple(f"{prefix}." for prefix in prefixes)
        live = {
            name: tensor.detach()
            for name, tensor in model.state_dict(keep_vars=True).items()
            if name.startswith(starts)
        }
        self.decay = decay
        self.names = list(live)
        self.live = list(live.values())  # views of the model's own tensors
        self.shadow = {name: tensor.clone() for name, tensor in live.items()}
        pairs = list(zip(self.live, self.shadow.values()))
        self._float_live = [live for live, _ in pairs if live.is_floating_point()]
        self._float_shadow = [shadow for live, shadow in pairs if live.is_floating_point()]
        self._other_live = [live for live, _ in pairs if not live.is_floating_point()]
        self._other_shadow = [shadow for live, shadow in pairs if not live.is_floating_point()]

    @torch.no_grad()
    def update(self, found_inf: torch.Tensor) -> None:
        """Move the average towards the current weights; a step with ``found_inf`` 1 (skipped) moves
        nothing. On the device, no host read."""
        if self._float_live:
            weight = (1 - found_inf.float()) * (1 - self.decay)
            delta = torch._foreach_sub(self._float_live, self._float_shadow)
            torch._foreach_mul_(delta, weight)
            torch._foreach_add_(self._float_shadow, delta)
        if self._other_live:
            torch._foreach_copy_(self._other_shadow, self._other_live)

    def weights(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``state`` (the model's ``state_dict()``) with the averaged tensors in place of the raw ones."""
        return {**state, **self.shadow}

    @contextmanager
    def swapped_in(self) -> Iterator[None]:
        """The averaged weights in the model's own tensors for the block (validation), the raw ones back after."""
        with torch.no_grad():
            raw = [tensor.clone() for tensor in self.live]
            torch._foreach_copy_(self.live, list(self.shadow.values()))
        try:
            yield
        finally:
            with torch.no_grad():
                torch._foreach_copy_(self.live, raw)
