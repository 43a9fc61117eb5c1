"""Worker of tests/test_distributed.py: one process of a 2-process Gloo run (spawned, CPU)."""

from __future__ import annotations

import os

import torch


def run(rank: int, world_size: int, port: int, overrides: list[str], mode: str, out: str) -> None:
    """``mode="steps"``: two isr steps, then save the ISR weights and a validation result;
    ``mode="fit"``: train.py's path, ``Trainer.fit`` (then ``fit(resume=True)`` on more epochs)."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(rank),
    )
    from engine import distributed
    from engine.config import load_config
    from engine.evaluator import evaluate
    from engine.trainer import Trainer

    try:
        trainer = Trainer(load_config(None, overrides))
        if mode == "steps":
            optimizers = trainer._prepare_stage("isr")
            trainer.train_one_epoch("isr", 0, optimizers)
            loader = trainer.val_loader("isr")
            result = evaluate(trainer.model, loader, trainer.device, "lr")
            torch.save(
                {
                    "isr": trainer.model.isr.state_dict(),
                    "ids": result.ids,
                    "probs": result.probs,
                    "metrics": result.metrics,
                },
                os.path.join(out, f"rank{rank}.pt"),
            )
        else:
            trainer.fit()
            resumed = Trainer(load_config(None, [*overrides, "train.cls.epochs=2"]))
            resumed.fit(resume=True)
    finally:
        distributed.cleanup()
