"""A trained model rebuilt from a checkpoint (a run's ``.pt`` or a release): the config saved
inside it decides the architecture. Reading and verifying the file is ``engine/checkpoint.py``'s."""

from __future__ import annotations

from pathlib import Path

from engine.builders import build_model, select_device
from engine.checkpoint import load_checkpoint, load_model_state
from engine.config import Config, config_from_dict
from models import DeepMTDR


def checkpoint_config(checkpoint: str | Path, state: dict | None = None) -> Config:
    """The config a checkpoint was trained with, checked (``state``: the checkpoint, already read)."""
    state = load_checkpoint(checkpoint) if state is None else state
    return config_from_dict(state["config"])


def load_trained(checkpoint: str | Path, device: str = "auto") -> tuple[DeepMTDR, Config, dict]:
    """Model and config rebuilt from a checkpoint (the config inside it decides the architecture)."""
    state = load_checkpoint(checkpoint)
    config = checkpoint_config(checkpoint, state)
    config.model.imagenet_weights = None  # the checkpoint already holds the trained weights
    model = build_model(config)
    load_model_state(model, state["model"], checkpoint)
    return model.to(select_device(device)).eval(), config, state
