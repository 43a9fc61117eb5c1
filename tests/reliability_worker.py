"""Worker of tests/test_reliability.py: one process of a 2-process Gloo run in which rank 1 alone
gets SIGTERM (spawned, CPU)."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path


def run(rank: int, world_size: int, port: int, overrides: list[str], out: str) -> None:
    """Train; rank 1 signals itself in its first step. Writes ``rank<r>.json``: preempted?, at which step."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(rank),
    )
    from engine import distributed
    from engine import trainer as trainer_module
    from engine.config import load_config
    from engine.reliability import Preempted

    trainer_module.SYNC_EVERY_STEPS = 2  # the processes agree on a stop every 2 steps
    step_isr = trainer_module.Trainer.step_isr

    def step(self, batch):
        if rank == 1 and self.global_step == 0:
            os.kill(os.getpid(), signal.SIGTERM)
        return step_isr(self, batch)

    trainer_module.Trainer.step_isr = step
    result = {"rank": rank, "preempted": False}
    try:
        trainer = trainer_module.Trainer(load_config(None, overrides))
        try:
            trainer.fit()
        except Preempted:
            result["preempted"] = True
        result["step"] = trainer.global_step
    finally:
        distributed.cleanup()
    Path(out, f"rank{rank}.json").write_text(json.dumps(result))
